"""Benchmark of linear_cross_entropy against the bare matmul and the materialised route.

Run from the repository root::

    python benchmarks/linear_ce.py              # hidden (2048, 1024), weight (32000, 1024), float32
    python benchmarks/linear_ce.py --quick      # (512, 256) x (8000, 256)

One thread for BLAS. Methods are timed in interleaved rounds so load on a
shared machine hits them alike; a ratio is the median over rounds of the
ratio within each round, with the quartiles of those per-round ratios.
Memory is the peak traced by tracemalloc above what the inputs hold, as a
fraction of the (N, V) float32 logits. Accuracy is against the float64
materialised cross_entropy and its gradient.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "STABLESOFTMAX_NUM_THREADS",
):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import stablesoftmax as ss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args(argv)
    n, h, v = (512, 256, 8000) if args.quick else (2048, 1024, 32000)
    rng = np.random.default_rng(0)
    hidden = (rng.standard_normal((n, h)) * 0.5).astype(np.float32)
    weight = (rng.standard_normal((v, h)) * 0.03).astype(np.float32)
    target = rng.integers(0, v, n)
    methods = {
        "bare matmul": lambda: hidden @ weight.T,
        "matmul + cross_entropy": lambda: ss.cross_entropy(hidden @ weight.T, target),
        "linear_cross_entropy": lambda: ss.linear_cross_entropy(hidden, weight, target),
        "linear_cross_entropy_with_grad": lambda: ss.linear_cross_entropy_with_grad(hidden, weight, target),
        "matmul + with_grad + 2 matmuls": lambda: _materialised_with_grad(hidden, weight, target),
    }
    times = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = times["bare matmul"]
    print(
        f"command: python {' '.join(sys.argv)}  ({args.repeats} interleaved rounds, 1 BLAS thread, wall clock; "
        f"load average {os.getloadavg()[0]:.2f})"
    )
    print(f"hidden ({n}, {h}), weight ({v}, {h}), float32; logits would be {n * v * 4 / 2**20:.0f} MiB\n")
    print("| method | median s | / bare matmul, median [quartiles] of per-round ratios | peak extra memory / logits |")
    print("|---|---|---|---|")
    for name, fn in methods.items():
        per_round = np.asarray(times[name]) / np.asarray(base)
        q1, med, q3 = np.percentile(per_round, [25, 50, 75])
        print(
            f"| {name} | {np.median(times[name]):.3f} | {med:.3f}x [{q1:.3f} - {q3:.3f}] "
            f"| {_peak(fn) / (n * v * 4):.4f} |"
        )
    loss, (d_h, d_w, _) = ss.linear_cross_entropy_with_grad(hidden, weight, target)
    logits = hidden.astype(np.float64) @ weight.T.astype(np.float64)
    ref, g = ss.cross_entropy_with_grad(logits, target)
    print(f"\nloss relative error vs float64: {abs(float(loss) - ref) / abs(ref):.2e} (goal 1e-6)")
    exact_grads = (("d_hidden", d_h, g @ weight.astype(np.float64)), ("d_weight", d_w, g.T @ hidden.astype(np.float64)))
    for name, got, exact in exact_grads:
        print(f"{name} max error / max |grad|: {np.abs(got - exact).max() / np.abs(exact).max():.2e} (goal 1e-5)")
    return 0


def _materialised_with_grad(hidden, weight, target):
    loss, g = ss.cross_entropy_with_grad(hidden @ weight.T, target)
    return loss, g @ weight, g.T @ hidden


def _peak(fn) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


if __name__ == "__main__":
    sys.exit(main())
