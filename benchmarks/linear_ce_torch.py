"""Benchmark of linear_cross_entropy on PyTorch CPU tensors: NumPy views, torch ops, PyTorch's own.

Run from the repository root::

    python benchmarks/linear_ce_torch.py                       # hidden (2048, 1024), weight (32000, 1024)
    python benchmarks/linear_ce_torch.py --shape 1024 512 16000 --repeats 5
    python benchmarks/linear_ce_torch.py --forward              # the forward alone
    python benchmarks/linear_ce_torch.py --dtype bfloat16       # 16-bit tensors

float32 unless ``--dtype`` says otherwise, one thread. Each method runs forward and backward (``loss.backward()``
to hidden and weight); the methods are timed in interleaved rounds so that load
on a shared machine hits them alike, and a ratio is the median over rounds of
the ratio to the bare matmul within each round. Peak memory is the growth of the
process's resident set (sampled every millisecond) during one forward+backward,
each method in a fresh interpreter after its inputs exist, next to what the task needs anyway:
the gradients of hidden and weight plus one chunk of float32 logits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "STABLESOFTMAX_NUM_THREADS",
):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import stablesoftmax as ss  # noqa: E402
from stablesoftmax._backends import torch as adapter  # noqa: E402

HOST_DTYPES = adapter._LINEAR_HOST_DTYPES


DTYPE = torch.float32  # set by --dtype


def inputs(n: int, h: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, made in place: a temporary as large as ``weight`` would hide the peak it is measured against."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn((n, h), generator=gen, dtype=DTYPE).mul_(0.5).requires_grad_()
    weight = torch.randn((v, h), generator=gen, dtype=DTYPE).mul_(0.03).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,), generator=gen)


METHODS = {
    "bare matmul (forward only)": lambda h, w, y: (h.detach() @ w.detach().T)[0, 0],
    "materialised F.cross_entropy": lambda h, w, y: F.cross_entropy(h @ w.T, y),
    "torch F.linear_cross_entropy": lambda h, w, y: F.linear_cross_entropy(h, w, y),
    "torch F.linear_cross_entropy, chunked": lambda h, w, y: F.linear_cross_entropy(
        h, w, y, options=torch.nn.LinearCrossEntropyOptions()
    ),
    "ours, NumPy views": lambda h, w, y: ss.linear_cross_entropy(h, w, y),
    "ours, torch ops": lambda h, w, y: ss.linear_cross_entropy(h, w, y),
}


def step(
    name: str, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, backward: bool = True
) -> torch.Tensor:
    hidden.grad = weight.grad = None
    adapter._LINEAR_HOST_DTYPES = () if name == "ours, torch ops" else HOST_DTYPES  # both passes alike
    try:
        loss = METHODS[name](hidden, weight, target)
        if loss.requires_grad and backward:
            loss.backward()
    finally:
        adapter._LINEAR_HOST_DTYPES = HOST_DTYPES
    return loss.detach()


def peak(name: str, shape: list[int]) -> int:
    """Growth of the max RSS over one forward+backward of ``name``, in a fresh interpreter (bytes)."""
    done = subprocess.run(
        [sys.executable, __file__, "--peak-of", name, "--shape", *map(str, shape), "--dtype", str(DTYPE)[6:]],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_here(name: str, shape: list[int]) -> int:
    """The resident set sampled every millisecond (the max RSS of a process is its import's, far above)."""
    small = inputs(8, 4, 64)
    step(name, *small)  # load what the method loads before the baseline
    args = inputs(*shape)
    before, top, done = _rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            top[0] = max(top[0], _rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    step(name, *args)
    done.set()
    watcher.join()
    return max(top[0], _rss()) - before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[2048, 1024, 32000], metavar=("N", "H", "V"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forward", action="store_true", help="time the forward alone (no peaks)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global DTYPE
    DTYPE = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    if args.peak_of:
        print(_peak_here(args.peak_of, args.shape))
        return 0
    n, h, v = args.shape
    hidden, weight, target = inputs(n, h, v)
    times: dict[str, list[float]] = {k: [] for k in METHODS}
    losses = {}
    for _ in range(args.repeats):
        for name in METHODS:
            t = time.perf_counter()
            losses[name] = step(name, hidden, weight, target, backward=not args.forward)
            times[name].append(time.perf_counter() - t)
    ref = _float64_loss(hidden, weight, target)
    logits_bytes = n * v * DTYPE.itemsize
    needed = (n * h + v * h) * DTYPE.itemsize + n * -(-v // 32) * 4  # the chunk is float32 on every path
    print(f"command: python {' '.join(sys.argv)}  ({args.repeats} interleaved rounds, 1 thread, wall clock)")
    passes = "forward only" if args.forward else "forward + backward"
    print(f"hidden ({n}, {h}), weight ({v}, {h}), {args.dtype}, {passes}; logits {logits_bytes / 2**20:.0f} MiB;")
    print(f"gradients + one chunk of logits (the default chunk, V/32 classes): {needed / 2**20:.0f} MiB\n")
    print("| method | median s | / bare matmul [quartiles] | loss rel. error vs float64 | peak RSS growth MiB |")
    print("|---|---|---|---|---|")
    base = np.asarray(times["bare matmul (forward only)"])
    for name in METHODS:
        q1, med, q3 = np.percentile(np.asarray(times[name]) / base, [25, 50, 75])
        err = "" if name.startswith("bare") else f"{abs(float(losses[name]) - ref) / abs(ref):.1e}"
        mib = "" if args.forward else f"{peak(name, args.shape) / 2**20:.0f}"
        print(f"| {name} | {np.median(times[name]):.3f} | {med:.2f}x [{q1:.2f} - {q3:.2f}] | {err} | {mib} |")
    return 0


def _float64_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> float:
    logits = hidden.detach().double() @ weight.detach().double().T
    return float(F.cross_entropy(logits, target))


if __name__ == "__main__":
    sys.exit(main())
