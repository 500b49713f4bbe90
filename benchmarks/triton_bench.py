"""Benchmark of the Triton kernels: memory traffic and launches, and on a GPU, time and bandwidth.

Run from the repository root::

    python benchmarks/triton_bench.py --device cpu --small   # under Triton's interpreter: bytes and launches
    python benchmarks/triton_bench.py --device cuda          # (16384, 131072) bfloat16 against F.cross_entropy

``--device cpu`` runs the kernels through the interpreter (``TRITON_INTERPRET=1``,
set before triton is imported) at (16, 4096) bfloat16, counts the bytes each
load and store moves and the launches, and prints them as multiples of the
logits' bytes. ``--device cuda`` times each call with CUDA events (median of
``--repeats`` after two warm-up calls), next to PyTorch's ``F.cross_entropy``
forward and forward+backward, and reports the bandwidth each reaches: the
bytes it must move (the logits read once per pass, outputs written once)
over its time, as a fraction of the device's copy bandwidth measured here
(``clone`` of the logits) and of its datasheet peak where the device is known.
"""

from __future__ import annotations

import argparse
import os
import sys

# Datasheet HBM bandwidth, bytes/s, by a word of the device name.
PEAK = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "A100": 2.0e12}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--small", action="store_true", help="(16, 4096) instead of (16384, 131072)")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    shape = (16, 4096) if args.small or args.device == "cpu" else (16384, 131072)
    if args.device == "cpu":
        return traffic(shape)
    return timing(shape, args.repeats)


def calls(torch, tk, x, y):
    """The calls measured: name -> (function, bytes it must move at the least)."""
    import stablesoftmax as ss

    size, n = x.numel() * x.element_size(), x.shape[0]
    out, grad, g = torch.empty_like(x), torch.empty_like(x), torch.ones(n, dtype=torch.float64, device=x.device)

    def public() -> None:  # the public function and autograd: the forward op, then the backward op
        leaf = x.detach().requires_grad_()
        with ss.triton_path():
            ss.cross_entropy(leaf, y).backward()

    return {
        "logsumexp (state_rows)": (lambda: tk.state_rows(x), size),
        "softmax (state_rows, out)": (lambda: tk.state_rows(x, out=out), 2 * size),
        "log_softmax (state_rows, out, log)": (lambda: tk.state_rows(x, out=out, log=True), 2 * size),
        "cross_entropy forward": (lambda: tk.cross_entropy_rows(x, y), size),
        "cross_entropy forward+grad": (lambda: tk.cross_entropy_rows(x, y, grad=grad, g=g), 3 * size),
        "ss.cross_entropy(...).backward()": (public, 3 * size),
    }


def traffic(shape: tuple[int, int]) -> int:
    import numpy as np
    import torch
    from triton.runtime import interpreter

    from stablesoftmax._kernels import triton as tk

    count = {"loaded": 0, "stored": 0, "launches": 0}
    builder = interpreter.interpreter_builder
    load, store, call = builder.create_masked_load, builder.create_masked_store, interpreter.GridExecutor.__call__

    def nbytes(ptrs, mask):
        lanes = int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape)))
        return lanes * max(1, ptrs.get_element_ty().primitive_bitwidth // 8)

    def counted_load(ptrs, mask, *rest):
        count["loaded"] += nbytes(ptrs, mask)
        return load(ptrs, mask, *rest)

    def counted_store(ptrs, value, mask, *rest):
        count["stored"] += nbytes(ptrs, mask)
        return store(ptrs, value, mask, *rest)

    def counted_call(executor, *a, **k):
        count["launches"] += 1
        return call(executor, *a, **k)

    builder.create_masked_load, builder.create_masked_store = counted_load, counted_store
    interpreter.GridExecutor.__call__ = counted_call
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(torch.bfloat16)
    y = torch.randint(0, shape[1], (shape[0],), generator=gen)
    size = x.numel() * x.element_size()
    print(f"{shape} bfloat16 under the interpreter; logits {size} bytes")
    print(f"{'call':38} {'loaded':>8} {'stored':>8} {'x logits':>9} {'launches':>8}")
    for name, (fn, _) in calls(torch, tk, x, y).items():
        count.update(loaded=0, stored=0, launches=0)
        fn()
        total = (count["loaded"] + count["stored"]) / size
        print(f"{name:38} {count['loaded']:8} {count['stored']:8} {total:9.3f} {count['launches']:8}")
    return 0


def timing(shape: tuple[int, int], repeats: int) -> int:
    import torch
    import torch.nn.functional as F

    from stablesoftmax._kernels import triton as tk

    if not (torch.cuda.is_available() and tk.available()):
        print("no CUDA device for Triton", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    y = torch.randint(0, shape[1], (shape[0],), device="cuda", generator=gen)
    size = x.numel() * x.element_size()
    name = torch.cuda.get_device_name()
    copy = 2 * size / seconds(lambda: x.clone(), repeats)
    peak = next((v for k, v in PEAK.items() if k in name), None)
    print(f"{name}: {shape} bfloat16, logits {size / 2**30:.2f} GiB; copy bandwidth {copy / 1e12:.2f} TB/s")
    xg = x.detach().requires_grad_()
    rows = dict(calls(torch, tk, x, y))
    rows["F.cross_entropy forward"] = (lambda: F.cross_entropy(x, y), size)
    rows["F.cross_entropy forward+backward"] = (lambda: F.cross_entropy(xg, y).backward(), 3 * size)
    print(f"{'call':38} {'ms':>8} {'TB/s':>6} {'of copy':>8} {'of peak':>8}")
    for label, (fn, moved) in rows.items():
        t = seconds(fn, repeats)
        rate = moved / t
        of_peak = f"{rate / peak:8.2f}" if peak else f"{'-':>8}"
        print(f"{label:38} {t * 1e3:8.2f} {rate / 1e12:6.2f} {rate / copy:8.2f} {of_peak}")
    return 0


def seconds(fn, repeats: int) -> float:
    """Median time of ``fn`` on the current stream, by CUDA events, after two warm-up calls."""
    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    sys.exit(main())
