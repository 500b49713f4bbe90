"""Benchmark of the performance issue's goals: the library and its kernels against naive NumPy, SciPy, PyTorch.

Run from the repository root::

    python benchmarks/perf.py                        # every case, full shapes
    python benchmarks/perf.py --only masked          # the cases whose name holds "masked"
    python benchmarks/perf.py --quick                # (1024, 8000) instead of (4096, 32000)
    python benchmarks/perf.py --out benchmarks/results/perf.md --csv benchmarks/results/perf.csv

By default everything runs on one thread (stablesoftmax through
``set_num_threads(1)``; numba, PyTorch, BLAS: ``*_NUM_THREADS=1`` is set before
they import), except the rows named "threads", so that the ratios are
single-threaded. ``--threads default`` measures the library as it ships
instead: from ``2**20`` entries its kernels use every core the process may
use (``stablesoftmax.get_num_threads()``), PyTorch gets as many threads, and
the cases that large are timed by the wall clock. Its CSV rows are filed under the CPU
class followed by ", default threads". Each case runs
its methods in interleaved rounds: one round calls every method once (calls
shorter than 2 ms are repeated inside a sample), so load from other
processes on a shared machine hits them alike. A ratio is the median over
the rounds of the ratio measured within each round, and its spread is the
interquartile range of those per-round ratios. Times are this thread's CPU
time (user + system, so page faults of fresh outputs count), steadier than
the wall clock when other processes compete for the cores; the rows on
several threads use the wall clock. ``read x1`` is a method's time over the time of one
read of its input at the single-thread read bandwidth measured first.

Methods: ``naive`` is the textbook formula (``log(sum(exp(x)))``, ...;
masked and smoothed cases use the naive masked or smoothed formula);
``stablesoftmax`` the public function; ``kernel`` the compiled kernel called
directly (``stablesoftmax._kernels``), with the small NumPy finish a caller
needs and the output allocated per call; ``torch``/``scipy`` their functions.

``--csv`` writes one row per method and case: the CPU class the run was made
on (``cpu_class``, e.g. "AMD EPYC Zen 3 (AVX2)": vendor and brand, LLVM's
micro-architecture, widest vector unit), the library and version each method
belongs to, its median time and its ratios to the case's baseline and to
stablesoftmax. A run replaces the file's rows of its own CPU class and keeps
the other classes', and the documentation draws a chart panel per class.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import stablesoftmax as ss  # noqa: E402
from stablesoftmax._kernels import cpu as _kernels  # noqa: E402

MIN_SAMPLE_S = 2e-3


@dataclass
class Case:
    """A shape and dtype, the methods timed on it, and the goals its ratios are held to."""

    name: str
    methods: dict[str, Callable[[], Any]]
    nbytes: int
    goals: list[tuple[str, str, str, float]] = field(default_factory=list)  # (method, over, "<=" or ">=", value)
    wall: bool = False  # time by the wall clock (threads)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


def cases(big: tuple[int, int], libs: dict[str, Any]) -> list[Case]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(big) * 3).astype(np.float32)
    y = rng.integers(0, big[1], big[0])
    mask = rng.random(big) > 0.3
    out = [
        _lse_case(x, libs),
        _elementwise_case("softmax", x, libs, goal=0.6),
        _elementwise_case("log_softmax", x, libs, goal=None),
        _ce_case(x, y, libs),
        _ce_grad_case(x, y, libs),
        _masked_lse_case(x, mask, libs),
        _masked_ce_case(x, y, mask, libs),
        _smoothed_ce_case(x, y, libs),
        _threads_case(x),
    ]
    for shape in ((64, 600), (600,)):
        out.append(_small_f64_case((rng.standard_normal(shape) * 3), libs))
    if "torch" in libs:
        out.append(_torch_ce_case(x[: big[0] // 4], y[: big[0] // 4], libs["torch"]))
    return out


def _name(what: str, a: np.ndarray) -> str:
    return f"{what} {'x'.join(map(str, a.shape))} {a.dtype.name}"


def _lse_case(x, libs) -> Case:
    m = {
        "naive": lambda: np.log(np.exp(x).sum(-1)),
        "stablesoftmax": lambda: ss.logsumexp(x, axis=-1),
        "kernel": lambda: _kernels.lse_rows(x).astype(x.dtype),
    }
    if "torch" in libs:
        t = libs["torch"].from_numpy(x)
        m["torch"] = lambda: libs["torch"].logsumexp(t, -1)
    if "scipy" in libs:
        m["scipy"] = lambda: libs["scipy"].special.logsumexp(x, axis=-1)
    goals = [
        ("stablesoftmax", "naive", "<=", 0.35),
        ("torch", "stablesoftmax", ">=", 5.0),
        ("kernel", "naive", "<=", 0.35),
        ("torch", "kernel", ">=", 5.0),
        ("kernel", "read", "<=", 2.5),
    ]
    return Case(_name("logsumexp", x), m, x.nbytes, goals)


def _elementwise_case(fn: str, x, libs, goal) -> Case:
    def naive():
        e = np.exp(x)
        s = e.sum(-1, keepdims=True)
        return e / s if fn == "softmax" else np.log(e / s)

    def kernel():
        out = np.empty_like(x)
        getattr(_kernels, f"{fn}_rows")(x, out)
        return out

    m = {"naive": naive, "stablesoftmax": lambda: getattr(ss, fn)(x, axis=-1), "kernel": kernel}
    if "torch" in libs:
        t = libs["torch"].from_numpy(x)
        tf = getattr(libs["torch"], fn)
        m["torch"] = lambda: tf(t, -1)
    if "scipy" in libs:
        sf = getattr(libs["scipy"].special, fn)
        m["scipy"] = lambda: sf(x, axis=-1)
    goals = [("stablesoftmax", "naive", "<=", goal), ("kernel", "naive", "<=", goal)] if goal else []
    return Case(_name(fn, x), m, x.nbytes, goals)


def _kernel_ce_loss(x, y, **options) -> float:
    """The mean loss from :func:`cross_entropy_rows`' parts, finished as the library would.

    float32 rows take the short sweep, as the library's forward does (its rounding test, on the
    reduced loss, costs a few passes over ``N`` values and is left out here).
    """
    a = options.get("label_smoothing", 0.0)
    p = _kernels.cross_entropy_rows(x, y, short=x.dtype == np.float32, **options)
    lr = np.log1p(p.s)
    loss = (1 - a) * (lr - (p.x_target - p.m))
    if a:
        loss += (a / p.allowed) * (lr * p.weight_sum - p.shift_sum)
    return float(loss.mean())


def _ce_case(x, y, libs) -> Case:
    from stablesoftmax import naive

    m = {
        "naive": lambda: naive.cross_entropy(x, y).mean(),
        "stablesoftmax": lambda: ss.cross_entropy(x, y),
        "kernel": lambda: _kernel_ce_loss(x, y),
    }
    if "torch" in libs:
        torch = libs["torch"]
        t, ty = torch.from_numpy(x), torch.from_numpy(y)
        m["torch"] = lambda: torch.nn.functional.cross_entropy(t, ty)
    goals = [
        ("stablesoftmax", "naive", "<=", 0.35),
        ("torch", "stablesoftmax", ">=", 4.0),
        ("kernel", "naive", "<=", 0.35),
        ("torch", "kernel", ">=", 4.0),
    ]
    return Case(_name("cross_entropy", x), m, x.nbytes, goals)


def _ce_grad_case(x, y, libs) -> Case:
    n = len(y)

    def naive():
        from stablesoftmax import naive as nv

        p = nv.softmax(x)
        rows = np.arange(n)
        loss = -np.log(p[rows, y]).mean()
        p[rows, y] -= 1
        p /= n
        return loss, p

    def kernel_grad(grad=None):
        grad = np.empty_like(x) if grad is None else grad
        p = _kernels.cross_entropy_rows(x, y, grad=grad, g=np.full(n, 1.0 / n))
        return float(np.mean(np.log1p(p.s) - (p.x_target - p.m))), grad

    reused = np.empty_like(x)

    m = {
        "naive": naive,
        "stablesoftmax forward": lambda: ss.cross_entropy(x, y),
        "stablesoftmax": lambda: ss.cross_entropy_with_grad(x, y),
        "kernel forward": lambda: _kernel_ce_loss(x, y),
        "kernel": kernel_grad,
        "kernel, reused grad buffer": lambda: kernel_grad(reused),
    }
    if "torch" in libs:
        torch = libs["torch"]

        def step():
            t = torch.from_numpy(x).requires_grad_()
            loss = torch.nn.functional.cross_entropy(t, torch.from_numpy(y))
            loss.backward()
            return loss, t.grad

        m["torch"] = step
    goals = [
        ("stablesoftmax", "stablesoftmax forward", "<=", 1.5),
        ("kernel", "kernel forward", "<=", 1.5),
        ("kernel, reused grad buffer", "kernel forward", "<=", 1.5),
    ]
    return Case(_name("cross_entropy_with_grad", x), m, x.nbytes, goals)


def _masked_lse_case(x, mask, libs) -> Case:
    m = {
        "naive masked": lambda: np.log(np.exp(np.where(mask, x, -np.inf)).sum(-1)),
        "stablesoftmax": lambda: ss.logsumexp(x, axis=-1, where=mask),
        "kernel": lambda: _kernels.lse_rows(x, where=mask).astype(x.dtype),
        "kernel unmasked": lambda: _kernels.lse_rows(x).astype(x.dtype),
    }
    if "torch" in libs:
        torch = libs["torch"]
        t, tm = torch.from_numpy(x), torch.from_numpy(~mask)
        m["torch"] = lambda: torch.logsumexp(t.masked_fill(tm, -float("inf")), -1)
    goals = [("stablesoftmax", "naive masked", "<=", 0.5), ("kernel", "naive masked", "<=", 0.5)]
    return Case(_name("logsumexp 30% masked", x), m, x.nbytes + mask.nbytes, goals)


def _masked_ce_case(x, y, mask, libs) -> Case:
    mask = mask.copy()
    mask[np.arange(len(y)), y] = True  # the target is allowed

    def naive():
        e = np.exp(np.where(mask, x, -np.inf))
        p = e[np.arange(len(y)), y] / e.sum(-1)
        return -np.log(p).mean()

    m = {
        "naive masked": naive,
        "stablesoftmax": lambda: ss.cross_entropy(x, y, where=mask),
        "kernel": lambda: _kernel_ce_loss(x, y, where=mask),
    }
    if "torch" in libs:
        torch = libs["torch"]
        t, tm, ty = torch.from_numpy(x), torch.from_numpy(~mask), torch.from_numpy(y)
        m["torch"] = lambda: torch.nn.functional.cross_entropy(t.masked_fill(tm, -float("inf")), ty)
    goals = [("stablesoftmax", "naive masked", "<=", 0.5), ("kernel", "naive masked", "<=", 0.5)]
    return Case(_name("cross_entropy 30% masked", x), m, x.nbytes + mask.nbytes, goals)


def _smoothed_ce_case(x, y, libs) -> Case:
    def naive():
        lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        return -(0.9 * lp[np.arange(len(y)), y] + 0.1 * lp.mean(-1)).mean()

    m = {
        "naive smoothed": naive,
        "stablesoftmax": lambda: ss.cross_entropy(x, y, label_smoothing=0.1),
        "kernel": lambda: _kernel_ce_loss(x, y, label_smoothing=0.1),
    }
    if "torch" in libs:
        torch = libs["torch"]
        t, ty = torch.from_numpy(x), torch.from_numpy(y)
        m["torch"] = lambda: torch.nn.functional.cross_entropy(t, ty, label_smoothing=0.1)
    goals = [("stablesoftmax", "naive smoothed", "<=", 0.5), ("kernel", "naive smoothed", "<=", 0.5)]
    return Case(_name("cross_entropy label_smoothing=0.1", x), m, x.nbytes, goals)


def _threads_case(x) -> Case:
    n = _usable_cores()
    m = {
        "kernel 1 thread": lambda: _kernels.lse_rows(x),
        f"kernel {n} threads": lambda: _kernels.lse_rows(x, threads=n),
    }
    return Case(_name("logsumexp threads", x), m, x.nbytes, wall=True)  # no goal: for information


def _threshold() -> int:
    from stablesoftmax import _compute

    return _compute.THREADS_FROM


def _usable_cores() -> int:
    from stablesoftmax import _compute

    return _compute._usable_cores()


def _small_f64_case(x, libs) -> Case:
    m = {
        "naive": lambda: np.log(np.exp(x).sum(-1)),
        "stablesoftmax": lambda: ss.logsumexp(x, axis=-1),
        "kernel": (lambda: _kernels.lse_vector(x)) if x.ndim == 1 else (lambda: _kernels.lse_rows(x)),
    }
    if "scipy" in libs:
        m["scipy"] = lambda: libs["scipy"].special.logsumexp(x, axis=-1)
    if "torch" in libs:
        t = libs["torch"].from_numpy(x)
        m["torch"] = lambda: libs["torch"].logsumexp(t, -1)
    if x.ndim == 1:
        goals = [("stablesoftmax", "naive", "<=", 1.2), ("kernel", "naive", "<=", 1.2)]
    else:
        goals = [
            ("stablesoftmax", "naive", "<=", 0.85),
            ("scipy", "stablesoftmax", ">=", 6.0),
            ("kernel", "naive", "<=", 0.85),
            ("scipy", "kernel", ">=", 6.0),
        ]
    return Case(_name("logsumexp", x), m, x.nbytes, goals)


def _torch_ce_case(x, y, torch) -> Case:
    def step(fn):
        t = torch.from_numpy(x).requires_grad_()
        loss = fn(t, torch.from_numpy(y))
        loss.backward()
        return t.grad

    m = {
        "F.cross_entropy fwd+bwd": lambda: step(torch.nn.functional.cross_entropy),
        "stablesoftmax fwd+bwd": lambda: step(ss.cross_entropy),
    }
    return Case(
        _name("torch tensor cross_entropy fwd+bwd", x),
        m,
        x.nbytes,
        [("stablesoftmax fwd+bwd", "F.cross_entropy fwd+bwd", "<=", 0.5)],
    )


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def run_case(case: Case, rounds: int, bandwidth: float, slow_s: float) -> dict[str, Any]:
    """Per-method sample lists (seconds per call); a method that raises is reported, not timed.

    A method slower than ``slow_s`` a call keeps its two warm-up samples only
    (it is outside the interleaved rounds, and its ratios are of medians).
    """
    clock = time.perf_counter if case.wall else time.thread_time
    inner, errors, slow, order = {}, {}, {}, list(case.methods)
    for k, f in list(case.methods.items()):
        try:
            t0 = clock()
            _quiet(f)  # warm-up: compiles kernels, faults pages in
            t1 = clock()
            _quiet(f)
            t2 = clock()
            inner[k] = max(1, int(MIN_SAMPLE_S / max(t2 - t1, 1e-7)))
            if t2 - t1 > slow_s:
                slow[k] = [t1 - t0, t2 - t1]
                del case.methods[k]
        except Exception as exc:  # the public API may be mid-rewrite: say so in the table
            errors[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            del case.methods[k]
    samples: dict[str, list[float]] = {k: [] for k in case.methods}
    for _ in range(rounds):
        for k, f in case.methods.items():
            n = inner[k]
            t0 = clock()
            for _ in range(n):
                _quiet(f)
            samples[k].append((clock() - t0) / n)
    return {
        "case": case,
        "samples": samples,
        "errors": errors,
        "slow": slow,
        "order": order,
        "read": case.nbytes / bandwidth,
    }


def _quiet(f: Callable[[], Any]) -> Any:
    with np.errstate(all="ignore"):  # the naive formulas overflow on purpose at some scales
        return f()


def ratio(res: dict[str, Any], a: str, b: str) -> tuple[float, float, float] | None:
    """Median and quartiles over rounds of ``time(a) / time(b)`` (``b = "read"``: one read of the input)."""
    s, slow = res["samples"], res["slow"]
    if (a in slow or b in slow) and (a in s or a in slow) and (b in s or b in slow or b == "read"):
        num = statistics.median(s.get(a) or slow[a])
        den = res["read"] if b == "read" else statistics.median(s.get(b) or slow[b])
        return num / den, num / den, num / den
    if a not in s or (b != "read" and b not in s):
        return None
    den = [res["read"]] * len(s[a]) if b == "read" else s[b]
    r = sorted(x / y for x, y in zip(s[a], den, strict=True))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return q[1], q[0], q[2]


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def case_table(res: dict[str, Any]) -> str:
    case, s = res["case"], res["samples"]
    base = res["order"][0]
    lines = [
        f"#### {case.name}  ({'wall' if case.wall else 'thread CPU'} time, ratios to `{base}`)",
        "",
        f"| method | median | quartiles | / {base} [quartiles] | / one read |",
        "|---|---|---|---|---|",
    ]
    for k, v in s.items():
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        r = ratio(res, k, base) or (math.nan,) * 3
        rr = ratio(res, k, "read")
        lines.append(
            f"| {k} | {_fmt(q[1])} | {_fmt(q[0])} - {_fmt(q[2])} | {r[0]:.3f} [{r[1]:.3f} - {r[2]:.3f}] | {rr[0]:.2f} |"
        )
    for k, v in res["slow"].items():
        r = ratio(res, k, base) or (math.nan,) * 3
        lines.append(f"| {k} | {_fmt(v[1])} (over the slow limit: 2 samples, not in the rounds) | | {r[0]:.3f} | |")
    for k, e in res["errors"].items():
        lines.append(f"| {k} | failed: {e} | | | |")
    return "\n".join(lines)


def goal_rows(res: dict[str, Any]) -> list[str]:
    out = []
    for a, b, op, value in res["case"].goals:
        r = ratio(res, a, b)
        label = f"{a} / {'one read' if b == 'read' else b}"
        if r is None:
            out.append(f"| {res['case'].name} | {label} {op} {value} | not measured | - |")
            continue
        met = r[0] <= value if op == "<=" else r[0] >= value
        out.append(
            f"| {res['case'].name} | {label} {op} {value} | {r[0]:.3f} [{r[1]:.3f} - {r[2]:.3f}] "
            f"| {'met' if met else 'NOT met'} |"
        )
    return out


# LLVM's names of micro-architectures, as people call them; any other is shown as LLVM spells it.
MICROARCH = {
    "znver2": "Zen 2",
    "znver3": "Zen 3",
    "znver4": "Zen 4",
    "znver5": "Zen 5",
    "skylake-avx512": "Skylake-SP",
    "cascadelake": "Cascade Lake",
    "icelake-server": "Ice Lake-SP",
    "sapphirerapids": "Sapphire Rapids",
    "emeraldrapids": "Emerald Rapids",
    "graniterapids": "Granite Rapids",
    "neoverse-n1": "Neoverse N1",
    "neoverse-v2": "Neoverse V2",
}


def cpu_class(model: str, llvm_cpu: str, features: dict[str, bool]) -> str:
    """The class a run is filed under: brand, micro-architecture and widest vector unit.

    ``("AMD EPYC 7B13 64-Core Processor", "znver3", {"avx2": True})`` gives "AMD EPYC Zen 3 (AVX2)".
    The model number is left out: the kernels' speed follows the micro-architecture and the vector
    width, which parts of one class share.
    """
    words = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|@.*", " ", model, flags=re.I).split()
    brand = []
    for word in words:
        if any(c.isdigit() for c in word):
            break
        brand.append(word)
    isa = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "no AVX2"
    return f"{' '.join(brand) or 'unknown CPU'} {MICROARCH.get(llvm_cpu, llvm_cpu)} ({isa})"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def host_cpu() -> tuple[str, dict[str, bool]]:
    """LLVM's (numba's) name for this CPU and the vector features the kernels can use."""
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    return ll.get_host_cpu_name(), {k: bool(host.get(k, False)) for k in ("avx2", "avx512f")}


def cpu_identity() -> str:
    """Vendor, model name, family/model, and the SIMD extensions the kernel and NumPy report."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor describes them all
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if f in flags) or "none"
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return (
        f"CPU: {info.get('vendor_id', platform.processor() or '?')}, {info.get('model name', cpu_model())}, "
        f"family {info.get('cpu family', '?')} model {info.get('model', '?')}; cpuinfo flags: {isa}; "
        f"NumPy SIMD baseline {' '.join(__cpu_baseline__) or 'none'}, found {' '.join(found) or 'none'}"
    )


def machine() -> str:
    """CPU model, its vector features as NumPy and LLVM (numba) see them, and library versions."""
    model = cpu_model()
    from numpy._core._multiarray_umath import __cpu_features__ as feats

    numpy_simd = ", ".join(k for k in ("AVX2", "AVX512F", "AVX512_SKX") if feats.get(k))
    import numba

    llvm_cpu, host = host_cpu()
    llvm = ", ".join(k for k, on in host.items() if on)
    libs = [f"numpy {np.__version__}", f"numba {numba.__version__}", f"stablesoftmax {ss.__version__}"]
    libs += [f"{name} {version}" for name, version in versions().items() if name in ("torch", "scipy")]
    return (
        f"CPU: {model}, {os.cpu_count()} cores seen; NumPy SIMD: {numpy_simd or 'none'}; "
        f"LLVM host {llvm_cpu} ({llvm or 'no avx2'}); {'; '.join(libs)}"
    )


def versions() -> dict[str, str]:
    """The version of each library a method can belong to, of those imported."""
    out = {"stablesoftmax": ss.__version__, "numpy": np.__version__}
    for name in ("torch", "scipy"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = mod.__version__
    return out


# --------------------------------------------------------------------------
# The CSV the documentation's charts are drawn from
# --------------------------------------------------------------------------

CSV_FIELDS = [
    "cpu_class",
    "cpu",
    "function",
    "variant",
    "shape",
    "dtype",
    "method",
    "library",
    "version",
    "clock",
    "samples",
    "median_s",
    "q1_s",
    "q3_s",
    "baseline",
    "ratio_to_baseline",
    "ratio_to_baseline_q1",
    "ratio_to_baseline_q3",
    "ratio_to_stablesoftmax",
    "ratio_to_stablesoftmax_q1",
    "ratio_to_stablesoftmax_q3",
    "ratio_to_one_read",
]


def library_of(method: str) -> str:
    """Which library a method's time belongs to: the naive formulas are NumPy's."""
    if method.startswith(("torch", "F.")):
        return "torch"
    if method.startswith("scipy"):
        return "scipy"
    return "numpy" if method.startswith("naive") else "stablesoftmax"


def csv_rows(res: dict[str, Any], cls: str, cpu: str, libs: dict[str, str]) -> list[dict[str, Any]]:
    """One row per method timed; ratios are medians [quartiles] over rounds of per-round ratios."""
    case, order = res["case"], res["order"]
    words = case.name.split()
    ours = next((k for k in order if k in ("stablesoftmax", "stablesoftmax fwd+bwd")), None)
    rows = []
    for k in order:
        times = res["samples"].get(k) or res["slow"].get(k)
        if not times:  # the method failed; the markdown report says how
            continue
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        to_base = ratio(res, k, order[0]) or ("",) * 3
        to_ours = (ratio(res, k, ours) if ours else None) or ("",) * 3
        read = ratio(res, k, "read")
        lib = library_of(k)
        rows.append(
            dict(
                zip(
                    CSV_FIELDS,
                    [
                        cls,
                        cpu,
                        words[0],
                        " ".join(words[1:-2]),
                        words[-2],
                        words[-1],
                        k,
                        lib,
                        libs.get(lib, ""),
                        "wall" if case.wall else "thread CPU",
                        len(times),
                        q[1],
                        q[0],
                        q[2],
                        order[0],
                        *to_base,
                        *to_ours,
                        read[0] if read else "",
                    ],
                    strict=True,
                )
            )
        )
    return rows


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path``, keeping the rows an earlier file holds for other CPU classes.

    A run replaces its own CPU class's figures and leaves the others', so one file
    gathers every class measured, and the documentation draws a panel for each.
    """
    classes = {row["cpu_class"] for row in rows}
    kept = []
    if os.path.isfile(path):
        with open(path, newline="") as fh:
            kept = [row for row in csv.DictReader(fh) if row.get("cpu_class") not in classes]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def read_bandwidth(megabytes: int) -> float:
    """Bytes per second one thread reads: best of 7 vectorised sums of a large float32 array."""
    import numba

    @numba.njit(fastmath=True, nogil=True)
    def _sum(a):
        s = np.float32(0.0)
        for i in range(a.size):
            s += a[i]
        return s

    a = np.ones((megabytes << 20) // 4, dtype=np.float32)
    _sum(a)
    best = min(min(_timed(_sum, a), _timed(np.sum, a)) for _ in range(7))
    return a.nbytes / best


def _timed(f, a) -> float:
    t0 = time.perf_counter()
    f(a)
    return time.perf_counter() - t0


def import_time(repeats: int = 7) -> tuple[float, float, float]:
    """Median and quartiles of ``python -c "import stablesoftmax"`` minus a bare interpreter start."""

    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    diffs = sorted(run("import stablesoftmax") - run("pass") for _ in range(repeats))
    q = statistics.quantiles(diffs, n=4)
    return q[1], q[0], q[2]


def _load_baselines() -> dict[str, Any]:
    libs: dict[str, Any] = {}
    try:
        import torch

        torch.set_num_threads(1)
        libs["torch"] = torch
    except ImportError:
        pass
    try:
        import scipy.special  # noqa: F401

        libs["scipy"] = sys.modules["scipy"]
    except ImportError:
        pass
    return libs


def _set_threads(choice: str, libs: dict[str, Any]) -> str:
    """Set the library's thread limit (and PyTorch's) for ``--threads``; say what is in force."""
    if choice == "1":
        os.environ["STABLESOFTMAX_NUM_THREADS"] = "1"  # it takes precedence over set_num_threads: set both
        ss.set_num_threads(1)
        return "threads: stablesoftmax limited to 1 (set_num_threads(1)); PyTorch, BLAS and numba 1"
    from stablesoftmax import _compute

    n = ss.get_num_threads()
    if "torch" in libs:
        libs["torch"].set_num_threads(n)
    return (
        f"threads: stablesoftmax's default, {n} from {_compute.THREADS_FROM} entries (1 below); PyTorch {n}; wall clock"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="(1024, 8000) instead of (4096, 32000)")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds per case (default 11)")
    p.add_argument("--only", default="", help="run only the cases whose name contains this text")
    p.add_argument("--out", default="", help="also write the report (markdown) to this file")
    p.add_argument(
        "--csv",
        default="",
        help="also write every method's figures here (CSV, for the docs' charts; other CPU classes' rows stay)",
    )
    p.add_argument(
        "--cpu-class",
        default="",
        help='the class the CSV files this run under (default: from the CPU, e.g. "AMD EPYC Zen 3 (AVX2)")',
    )
    p.add_argument(
        "--threads",
        choices=["1", "default"],
        default="1",
        help="1: the library on one thread, ratios single-threaded (default); "
        "default: the library's own choice, every usable core from 2**20 entries (those cases by the wall clock)",
    )
    p.add_argument(
        "--slow",
        type=float,
        default=3.0,
        help="seconds a call beyond which a method is timed twice only, outside the rounds (default 3)",
    )
    args = p.parse_args(argv)
    if not _kernels.available():
        print("numba kernels unavailable (numba missing or STABLESOFTMAX_DISABLE_KERNELS=1)", file=sys.stderr)
        return 2
    libs = _load_baselines()
    threads = _set_threads(args.threads, libs)
    big = (1024, 8000) if args.quick else (4096, 32000)
    model, (llvm_cpu, features) = cpu_model(), host_cpu()
    cls = args.cpu_class or cpu_class(model, llvm_cpu, features)
    if args.threads != "1" and not args.cpu_class:
        cls += ", default threads"
    head = [
        f"CPU class: {cls}",
        cpu_identity(),
        f"command: {' '.join(['python'] + sys.argv)}  ({args.rounds} interleaved rounds; load average "
        f"{os.getloadavg()[0]:.2f} at the start)",
        machine(),
        threads,
    ]
    print("\n".join(head), flush=True)
    bw = read_bandwidth(128 if args.quick else 512)
    head.append(f"single-thread read bandwidth: {bw / 1e9:.1f} GB/s")
    print(head[-1], flush=True)
    results, report, rows = [], [], []
    for case in cases(big, libs):
        if args.only and args.only not in case.name:
            continue
        if args.threads != "1" and case.nbytes >= 4 * _threshold():  # bands run: other threads' time is not ours
            case.wall = True
        res = run_case(case, args.rounds, bw, args.slow)
        results.append(res)
        report.append(case_table(res))
        rows += csv_rows(res, cls, model, versions())
        print("\n" + report[-1], flush=True)
    goals = ["| case | goal | median [quartiles] | verdict |", "|---|---|---|---|"]
    for res in results:
        goals += goal_rows(res)
    if not args.only or "import" in args.only:
        med, lo, hi = import_time()
        goals.append(
            f"| import stablesoftmax | seconds <= 0.15 | {med:.3f} [{lo:.3f} - {hi:.3f}] "
            f"| {'met' if med <= 0.15 else 'NOT met'} |"
        )
    print("\n" + "\n".join(goals))
    if args.csv:
        write_csv(args.csv, rows)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(head) + "\n\n" + "\n\n".join(report) + "\n\n### Goals\n\n" + "\n".join(goals) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
