"""CPU bfloat16 and float16 tensors on one thread: stablesoftmax against PyTorch, time and memory.

At (1024, 32000) logits by default, each of

* ``ss.cross_entropy`` forward + backward against ``F.cross_entropy`` forward + backward,
* ``ss.logsumexp`` against ``torch.logsumexp``,
* ``ss.softmax`` and ``ss.log_softmax`` against ``torch.softmax`` and ``torch.log_softmax``

is timed in interleaved rounds (ours, then theirs, in each round), and the report gives the
median, the spread (min to max) and our median over theirs. With ``--memory`` it also measures
the peak extra memory of a bfloat16 cross-entropy forward + backward, as a multiple of the
logits' bytes: each library in a fresh child process, by the resident set's high-water mark
(reset through ``/proc/self/clear_refs``, Linux), since torch's CPU allocations are not seen by
tracemalloc.

Run::

    python benchmarks/torch16.py --rounds 7 --memory
    python benchmarks/torch16.py --shape 256 32000 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import stablesoftmax as ss

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _cases(x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Name -> (ours, theirs), each a call of the whole operation."""

    def ce(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            leaf = x.detach().requires_grad_(True)
            fn(leaf, y).backward()
            return leaf.grad

        return run

    return {
        "cross_entropy fwd+bwd": (ce(ss.cross_entropy), ce(F.cross_entropy)),
        "logsumexp": (lambda: ss.logsumexp(x, axis=-1), lambda: torch.logsumexp(x, dim=-1)),
        "softmax": (lambda: ss.softmax(x), lambda: torch.softmax(x, dim=-1)),
        "log_softmax": (lambda: ss.log_softmax(x), lambda: torch.log_softmax(x, dim=-1)),
    }


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _spread(ts: list[float]) -> str:
    return f"{1e3 * statistics.median(ts):8.1f} ms ({1e3 * min(ts):.1f}-{1e3 * max(ts):.1f})"


def timings(shape: tuple[int, int], dtype: str, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 4).to(DTYPES[dtype])
    y = torch.randint(0, shape[1], (shape[0],), generator=gen)
    print(f"\n{dtype} {shape[0]}x{shape[1]}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'case':24s} {'stablesoftmax':>30s} {'torch':>30s}   ratio")
    for name, (ours, theirs) in _cases(x, y).items():
        ours(), theirs()  # compiled, allocator warm
        t_ours, t_theirs = [], []
        for _ in range(rounds):
            t_ours.append(_time(ours))
            t_theirs.append(_time(theirs))
        ratio = statistics.median(t_ours) / statistics.median(t_theirs)
        print(f"{name:24s} {_spread(t_ours):>30s} {_spread(t_theirs):>30s}   {ratio:.2f}x")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(library: str, shape: tuple[int, int], dtype: str) -> None:
    """In a fresh process: the peak resident memory of one CE forward + backward beyond the logits'."""
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4).to(DTYPES[dtype])
    y = torch.randint(0, shape[1], (shape[0],))
    fn = ss.cross_entropy if library == "stablesoftmax" else F.cross_entropy
    small = x[:4].clone().requires_grad_(True)
    fn(small, y[:4]).backward()  # compiled and imported before measuring
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
    before = _rss_kib("VmRSS")
    leaf = x.requires_grad_(True)
    fn(leaf, y).backward()
    extra = (_rss_kib("VmHWM") - before) * 1024
    print(f"{extra / (x.numel() * x.element_size()):.2f}")


def memory(shape: tuple[int, int], dtype: str) -> None:
    print(f"\npeak extra memory of {dtype} cross_entropy fwd+bwd, in multiples of the logits' bytes (RSS)")
    for library in ("stablesoftmax", "torch"):
        argv = [sys.executable, __file__, "--_peak", library, "--shape", *map(str, shape), "--dtypes", dtype]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()[-1]
        print(f"  {library:14s} {out}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 32000))
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--memory", action="store_true", help="also the peak memory of bfloat16 CE fwd+bwd")
    parser.add_argument("--_peak", choices=["stablesoftmax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ss.set_num_threads(1)  # one thread on both sides
    shape = tuple(args.shape)
    if args._peak:
        peak_child(args._peak, shape, args.dtypes[0])
        return
    for dtype in args.dtypes:
        timings(shape, dtype, args.rounds)
    if args.memory:
        memory(shape, "bfloat16")


if __name__ == "__main__":
    main()
