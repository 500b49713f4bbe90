"""Benchmark of issue 6: the compiled kernels against NumPy, PyTorch and SciPy.

Run from the repository root::

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/perf.py            # full shapes
    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/perf.py --quick    # smaller shapes

Everything runs on one thread (numba, PyTorch, BLAS). The methods of a case
are timed in interleaved rounds (each round runs every method in turn; calls
shorter than 2 ms are repeated within a sample and averaged), so load from
other processes on a shared machine hits them alike; the table gives the
median over the rounds and ratios of medians against naive NumPy.
``read x1`` is the kernel's time over the time of one read of the input at
this machine's single-thread read bandwidth, measured first.

Columns: ``naive`` is ``log(sum(exp(x)))`` / ``exp(x) / sum(exp(x))``;
``textbook`` the max-shifted NumPy formula; ``numpy path`` stablesoftmax's
public function as it is now (float64 inside, TwoSum, log1p); ``kernel``
``stablesoftmax._kernels`` called directly, including the rounding to the
input dtype; ``torch`` and ``scipy`` their functions on the same data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import stablesoftmax as ss  # noqa: E402
from stablesoftmax import _kernels  # noqa: E402
from stablesoftmax._arrays import BFLOAT16, round_to  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes (1024 x 8000 instead of 4096 x 32000)")
    p.add_argument("--repeats", type=int, default=31, help="interleaved rounds per case (default 31)")
    p.add_argument("--only", default="", help="run only the cases whose name contains this text")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="wall clock (default) or this thread's CPU time, steadier on a shared machine "
                        "(drops the 2-thread column, whose work the main thread does not do)")
    args = p.parse_args(argv)
    if not _kernels.available():
        print("numba kernels unavailable (numba missing or STABLESOFTMAX_DISABLE_KERNELS=1)", file=sys.stderr)
        return 2
    libs = _load_baselines()
    big = (1024, 8000) if args.quick else (4096, 32000)
    print(f"command: {' '.join(['python'] + sys.argv)}  (timer: {args.timer}, {args.repeats} interleaved rounds)")
    print(f"machine: {os.cpu_count()} CPUs seen, 1 thread used; numpy {np.__version__}, "
          f"{', '.join(f'{k} {v.__version__}' for k, v in libs.items())}")
    bw = read_bandwidth(args.quick)
    print(f"single-thread read bandwidth: {bw / 1e9:.1f} GB/s (best of 7 sums of a {512 >> (2 * args.quick)} MB array)\n")
    rows = []
    for case in _cases(big):
        if args.only and args.only not in _name(*case):
            continue
        rows.append(run_case(*case, libs=libs, repeats=args.repeats, bw=bw, cpu=args.timer == "cpu"))
    print(_table(rows))
    return 0


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


def _cases(big):
    out = []
    for fn in ("logsumexp", "softmax"):
        out.append((fn, big, np.float32))
    out.append(("log_softmax", big, np.float32))
    out.append(("logsumexp", big, np.float16))
    out.append(("logsumexp", big, BFLOAT16))
    for fn in ("logsumexp", "softmax", "log_softmax"):
        out.append((fn, (64, 600), np.float64))
    out.append(("logsumexp", (64, 600), np.float32))
    for fn in ("logsumexp", "softmax"):
        out.append((fn, (600,), np.float64))
    return out


def _methods(fn: str, dtype, libs) -> dict[str, Callable]:
    """Every contender for ``fn`` on a 1-D or 2-D array, reducing the last axis."""
    narrow16 = np.dtype(dtype).itemsize == 2
    m: dict[str, Callable] = {
        "naive": {"logsumexp": _naive_lse, "softmax": _naive_softmax, "log_softmax": _naive_log_softmax}[fn],
        "textbook": {"logsumexp": _textbook_lse, "softmax": _textbook_softmax, "log_softmax": _textbook_log_softmax}[fn],
        "numpy path": getattr(ss, fn),
        "kernel": {"logsumexp": _kernel_lse, "softmax": _kernel_softmax, "log_softmax": _kernel_log_softmax}[fn],
    }
    if fn == "logsumexp" and dtype == np.float32:  # information only: the goals are for one thread
        m["kernel 2 threads"] = lambda a: _kernels.lse_rows(_kernel_input(a), threads=2).astype(a.dtype)
    if "torch" in libs:
        torch = libs["torch"]
        tf = {"logsumexp": torch.logsumexp, "softmax": torch.softmax, "log_softmax": torch.log_softmax}[fn]
        m["torch"] = lambda t: tf(t, -1)
    if narrow16:  # NumPy's float16 exp is emulated: textbook and SciPy take ~10 s a call here
        del m["textbook"]
        return m
    if "scipy" in libs:
        special = libs["scipy"].special
        sf = {"logsumexp": special.logsumexp, "softmax": special.softmax, "log_softmax": special.log_softmax}[fn]
        m["scipy"] = lambda a: sf(a, axis=-1)
    return m


def run_case(fn: str, shape, dtype, *, libs, repeats: int, bw: float, cpu: bool = False) -> dict:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    methods = _methods(fn, dtype, libs)
    clock = time.thread_time if cpu else time.perf_counter
    if cpu:
        methods.pop("kernel 2 threads", None)
    inputs = {k: (_to_torch(x, libs["torch"]) if k == "torch" else x) for k in methods}
    inner = {}
    for k, f in methods.items():  # warm-up: compiles the kernel, faults pages in
        _quiet(f, inputs[k])
        t0 = time.perf_counter()
        _quiet(f, inputs[k])
        inner[k] = max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-7)))  # a sample lasts >= ~2 ms
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, f in methods.items():
            a, n = inputs[k], inner[k]
            t0 = clock()
            for _ in range(n):
                _quiet(f, a)
            times[k].append((clock() - t0) / n)
    med = {k: float(np.median(v)) for k, v in times.items()}
    name = _name(fn, shape, dtype)
    print(f"{name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in med.items()), flush=True)
    return {"name": name, "med": med, "read": med["kernel"] / (x.nbytes / bw)}


def _name(fn: str, shape, dtype) -> str:
    return f"{fn} {'x'.join(map(str, shape))} {np.dtype(dtype).name}"


def _quiet(f, a):
    with np.errstate(all="ignore"):  # the naive formulas overflow on purpose at some scales
        return f(a)


# --------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------


def _naive_lse(x):
    return np.log(np.exp(x).sum(-1))


def _naive_softmax(x):
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _naive_log_softmax(x):
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _textbook_lse(x):
    m = x.max(-1, keepdims=True)
    return np.log(np.exp(x - m).sum(-1)) + m[..., 0]


def _textbook_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _textbook_log_softmax(x):
    d = x - x.max(-1, keepdims=True)
    return d - np.log(np.exp(d).sum(-1, keepdims=True))


def _kernel_input(x):
    """The array the kernels get: 2-D, and 16-bit widened (exactly) to float32."""
    a = x.reshape(-1, x.shape[-1])
    return a.astype(np.float32) if a.dtype.itemsize == 2 else a


def _kernel_lse(x):
    return round_to(_kernels.lse_rows(_kernel_input(x)), x.dtype).reshape(x.shape[:-1])


def _kernel_softmax(x):
    a = _kernel_input(x)
    out = np.empty(a.shape, a.dtype if a.dtype == x.dtype else np.float64)
    _kernels.softmax_rows(a, out)
    return round_to(out, x.dtype).reshape(x.shape) if out.dtype != x.dtype else out.reshape(x.shape)


def _kernel_log_softmax(x):
    a = _kernel_input(x)
    out = np.empty(a.shape, a.dtype if a.dtype == x.dtype else np.float64)
    _kernels.log_softmax_rows(a, out)
    return round_to(out, x.dtype).reshape(x.shape) if out.dtype != x.dtype else out.reshape(x.shape)


def _load_baselines() -> dict:
    libs = {}
    try:
        import torch

        torch.set_num_threads(1)
        libs["torch"] = torch
    except ImportError:
        pass
    try:
        import scipy.special

        libs["scipy"] = sys.modules["scipy"]
    except ImportError:
        pass
    return libs


def _to_torch(x, torch):
    if x.dtype == BFLOAT16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


# --------------------------------------------------------------------------
# Read bandwidth
# --------------------------------------------------------------------------


def read_bandwidth(quick: bool) -> float:
    """Bytes per second one thread reads: best of 7 vectorised sums over a 512 MB array."""
    import numba

    @numba.njit(fastmath=True, nogil=True)
    def _sum(a):
        s = np.float32(0.0)
        for i in range(a.size):
            s += a[i]
        return s

    a = np.ones((512 << 20 >> (2 * quick)) // 4, dtype=np.float32)
    _sum(a)
    best = min(_timed(_sum, a) for _ in range(7))
    best_np = min(_timed(np.sum, a) for _ in range(7))
    return a.nbytes / min(best, best_np)


def _timed(f, a) -> float:
    t0 = time.perf_counter()
    f(a)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def _table(rows: list[dict]) -> str:
    cols = ["naive", "textbook", "numpy path", "kernel", "kernel 2 threads", "torch", "scipy"]
    head = "| case | " + " | ".join(cols) + " | kernel/naive | torch/kernel | scipy/kernel | kernel/read |"
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    for r in rows:
        med = r["med"]
        cells = [_fmt(med[c]) if c in med else "-" for c in cols]
        k = med["kernel"]
        ratio = lambda c: f"{med[c] / k:.1f}x" if c in med else "-"  # noqa: E731
        lines.append(
            f"| {r['name']} | " + " | ".join(cells)
            + f" | {k / med['naive']:.2f} | {ratio('torch')} | {ratio('scipy')} | {r['read']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
