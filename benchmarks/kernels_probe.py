"""Probes of the compiled kernels: the vector width they compile to, and where a row's time goes.

Run from the repository root::

    python benchmarks/kernels_probe.py asm      # registers in the term loop, this CPU and cross-compiled targets
    python benchmarks/kernels_probe.py sweep    # (1024, 32000) float32: the pieces of a logsumexp, ns per entry
    python benchmarks/kernels_probe.py terms    # the float32 term loop as its polynomial varies
    python benchmarks/kernels_probe.py fma      # this core's FMA latency and throughput, for scale
    python benchmarks/kernels_probe.py threads  # one thread against every core, by input size: the threshold
    python benchmarks/kernels_probe.py short    # (2048, 32000) float32: the short sweeps against the accurate ones
    python benchmarks/kernels_probe.py terms --llvm-option=-force-vector-interleave=4
                                                # the same loops, LLVM's loop vectoriser told otherwise

``asm`` compiles the term loop (``_block``) for float32 and float64 rows
and counts the xmm/ymm/zmm registers in its machine code. The other
targets are compiled in subprocesses with ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES`` (and a scratch cache), so they need no such CPU:
nothing is run, only compiled. ``sweep`` and ``fma`` time on this machine,
one thread, best and median of interleaved samples of CPU time.
``--llvm-option`` passes an LLVM command-line option (``llvmlite.binding.set_option``)
before anything compiles; run it with a scratch ``NUMBA_CACHE_DIR`` so that no cached
kernel compiled without it is reused.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

TARGETS = [  # (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES); None: this host
    (None, None),
    ("skylake-avx512", "+avx512f"),
    ("skylake-avx512", "+avx512f,-prefer-256-bit"),
    ("icelake-server", "+avx512f"),
    ("sapphirerapids", "+avx512f"),
    ("sapphirerapids", "+avx512f,-prefer-256-bit"),
    ("znver4", "+avx512f"),
    ("znver5", "+avx512f"),
]


def registers() -> str:
    """Register counts in ``_block``'s machine code for float32 and float64 rows, compiled here.

    The float32 row is compiled twice: with the accurate degree-9 term and with
    the short degree-7 term of the rounding-test sweep (``fast``, a counter).
    """
    from numba import types

    from stablesoftmax._kernels import cpu as k

    none, out = types.none, []
    counter = types.Array(types.int64, 1, "C")
    for dt, fast in ((types.float32, none), (types.float32, counter), (types.float64, none)):
        arr = types.Array(dt, 1, "C")
        sig = (arr, arr, none, none, types.float64, dt, none, none, none, none, types.float64, fast)
        k._block.compile(sig)
        asm = k._block.inspect_asm(sig)
        n = {r: len(re.findall(r"%" + r + r"\d+", asm)) for r in ("xmm", "ymm", "zmm")}
        fma = len(re.findall(r"\bvfn?m(?:add|sub)", asm))
        label = f"{dt}{' short' if fast is not none else ''}"
        out.append(f"{label}: zmm {n['zmm']}, ymm {n['ymm']}, xmm {n['xmm']}, FMA instructions {fma}")
    return "; ".join(out)


def asm() -> None:
    import llvmlite.binding as ll

    print(
        f"host: {ll.get_host_cpu_name()}, avx2 {ll.get_host_cpu_features().get('avx2', False)}, "
        f"avx512f {ll.get_host_cpu_features().get('avx512f', False)}\n"
    )
    print("| target (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES) | registers in the term loop |\n|---|---|")
    for name, feats in TARGETS:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as cache:
            env["NUMBA_CACHE_DIR"] = cache  # never reuse code compiled for another CPU
            if name:
                env["NUMBA_CPU_NAME"], env["NUMBA_CPU_FEATURES"] = name, feats
            code = "import sys; sys.path.insert(0, 'benchmarks'); import kernels_probe as p; print(p.registers())"
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        label = f"{name}, {feats}" if name else "this host"
        print(f"| {label} | {res.stdout.strip() or res.stderr.strip().splitlines()[-1]} |")


def _compare(fns: dict, n_elems: int, samples: int = 9) -> None:
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(samples):
        for k, f in fns.items():
            t0 = time.thread_time()
            f()
            times[k].append((time.thread_time() - t0) / n_elems * 1e9)
    for k, v in times.items():
        print(f"| {k} | {min(v):.3f} | {np.median(v):.3f} |")


def sweep() -> None:
    """The pieces of a float32 logsumexp over (1024, 32000), each timed on its own."""
    import numba

    from stablesoftmax._kernels import cpu as k

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1024, 32000)) * 3).astype(np.float32)
    mask = rng.random(x.shape) > 0.3
    m = x.max(-1).astype(np.float64)
    row = x[0].copy()

    @numba.njit(nogil=True)
    def max_only(x):
        t = 0.0
        for i in range(x.shape[0]):
            t += k._copy_max(x[i], None, None)
        return t

    @numba.njit(nogil=True)
    def terms_dram(x, m):  # the term loop over rows streamed from memory, max known
        t = 0.0
        for i in range(x.shape[0]):
            s, _, _ = k._block(x[i], x[i], None, None, m[i], np.float32(-np.inf), None, None, None, None, 0.0, None)
            t += s
        return t

    @numba.njit(nogil=True)
    def terms_cached(row, m, reps):  # the same loop on one row that stays in L2
        t = 0.0
        for _ in range(reps):
            s, _, _ = k._block(row, row, None, None, m, np.float32(-np.inf), None, None, None, None, 0.0, None)
            t += s
        return t

    print("| piece, (1024, 32000) float32 | best ns/entry | median ns/entry |\n|---|---|---|")
    _compare(
        {
            "row max only (memory read)": lambda: max_only(x),
            "term loop, rows from memory": lambda: terms_dram(x, m),
            "term loop, one row in L2 (x1024)": lambda: terms_cached(row, float(m[0]), 1024),
            "whole kernel: lse_rows": lambda: k.lse_rows(x),
            "whole kernel, 30% masked": lambda: k.lse_rows(x, where=mask),
            "softmax_rows (float32 out)": lambda: k.softmax_rows(x, np.empty_like(x)),
        },
        x.size,
    )


def _term_variants() -> dict:
    """The float32 term ``exp(x - m)`` with its polynomial varied, each in the kernels' summing loop.

    Only for timing: the reduction-only and degree-5 variants are not accurate. ``kernel``
    is the kernels' own term; ``even/odd`` and ``Estrin`` evaluate the same
    degree-9 polynomial with shorter dependency chains; ``2 streams`` sums
    two halves of the row in one loop (more independent work per iteration).
    """
    import numba

    from stablesoftmax._kernels import cpu as k

    f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 = k.EXP_NARROW
    log2e, shifter, ln2 = k._LOG2E, k._SHIFTER, k._LN2
    fb, bf = k._f64_from_bits, k._bits_from_f64
    jit = numba.njit(fastmath={"contract"})

    @jit
    def reduced(d):
        d = -709.0 if d < -709.0 else d
        z = d * log2e + shifter
        return z, d - (z - shifter) * ln2

    @jit
    def scaled(p, z):
        return p * fb((bf(z) + 1023) << 52)

    def reduction_only(d):
        z, r = reduced(d)
        return scaled(r, z)

    def degree5(d):
        z, r = reduced(d)
        return scaled(((((f5 * r + f4) * r + f3) * r + f2) * r + f1) * r + f0, z)

    def even_odd(d):
        z, r = reduced(d)
        r2 = r * r
        e = (((f8 * r2 + f6) * r2 + f4) * r2 + f2) * r2 + f0
        o = (((f9 * r2 + f7) * r2 + f5) * r2 + f3) * r2 + f1
        return scaled(e + r * o, z)

    def estrin(d):
        z, r = reduced(d)
        r2 = r * r
        r4 = r2 * r2
        lo = (f0 + f1 * r) + r2 * (f2 + f3 * r)
        hi = (f4 + f5 * r) + r2 * (f6 + f7 * r) + r4 * (f8 + f9 * r)
        return scaled(lo + r4 * hi, z)

    terms = {"kernel (degree 9, Horner)": k._exp_narrow}
    terms["reduction and scale only (timing only)"] = jit(reduction_only)
    terms["degree 5 (timing only)"] = jit(degree5)
    terms["degree 9, even/odd"] = jit(even_odd)
    terms["degree 9, Estrin"] = jit(estrin)

    def summing(term):
        @numba.njit(nogil=True)
        def run(row, m, reps):
            t = 0.0
            for _ in range(reps):
                for i in range(row.size):
                    t = k._lane_add(t, term(np.float64(row[i]) - m))
            return t

        return run

    @numba.njit(nogil=True)
    def two_streams(row, m, reps):
        t, u, h = 0.0, 0.0, row.size // 2
        for _ in range(reps):
            for i in range(h):
                t = k._lane_add(t, k._exp_narrow(np.float64(row[i]) - m))
                u = k._lane_add(u, k._exp_narrow(np.float64(row[i + h]) - m))
        return t + u

    out = {name: summing(term) for name, term in terms.items()}
    out["kernel term, 2 streams"] = two_streams
    return out


def terms() -> None:
    """ns per entry of the float32 term loop, one 32000-entry row in L2, as the polynomial varies."""
    rng = np.random.default_rng(0)
    row = (rng.standard_normal(32000) * 3).astype(np.float32)
    m, reps = float(row.max()), 64
    print("| float32 term loop, 32000 entries x 64 | best ns/entry | median ns/entry |\n|---|---|---|")
    _compare({k: (lambda f=f: f(row, m, reps)) for k, f in _term_variants().items()}, row.size * reps, samples=11)


def _fma_loop(chains: int):
    """A compiled loop of ``chains`` independent dependent chains of 4-wide float64 FMAs (LLVM IR, no memory)."""
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    vd = ir.VectorType(ir.DoubleType(), 4)

    @intrinsic
    def run(typingctx, n, a):
        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vd, [vd] * 3), "llvm.fma.v4f64")
            va = builder.insert_element(ir.Constant(vd, ir.Undefined), args[1], ir.Constant(ir.IntType(32), 0))
            va = builder.shuffle_vector(va, va, ir.Constant(ir.VectorType(ir.IntType(32), 4), [0] * 4))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vd, [1.0 + j / 64] * 4)) for j in range(chains)]
            with cgutils.for_range(builder, args[0]):
                for acc in accs:
                    builder.store(builder.call(fn, [builder.load(acc), va, ir.Constant(vd, [1e-9] * 4)]), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.fadd(total, builder.load(acc))
            return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

        return types.float64(types.int64, types.float64), codegen

    return numba.njit(lambda n, a: run(n, a))


def fma() -> None:
    """Latency (one chain) and throughput (8 and 12 chains) of 4-wide float64 FMAs: the ceiling of the term loop.

    Eight chains of a 4-cycle FMA already fill two pipes; twelve show whether
    more independent work goes any faster (it does not when two per cycle is the peak).
    """
    for chains in (1, 8, 12):
        f = _fma_loop(chains)
        f(10, 0.9999999)
        n = 10_000_000
        best = min((lambda t0: (f(n, 0.9999999), time.thread_time() - t0)[1])(time.thread_time()) for _ in range(5))
        print(f"{chains} chain(s): {best / (n * chains) * 1e9:.3f} ns per ymm FMA")


def threads() -> None:
    """Wall time of ``lse_rows`` and a softmax on one thread and on every usable core, rows of 1000, by size.

    The threshold the library splits rows from (``_compute.THREADS_FROM``)
    is the size where the ratio falls below 1. One and all threads alternate
    within each sample, so load from other processes hits both alike; the
    load average is printed, since a busy core makes bands wait.
    """
    from stablesoftmax import _compute
    from stablesoftmax._kernels import cpu

    cores = _compute._usable_cores()
    rng = np.random.default_rng(0)
    print(f"{cores} usable cores; load average {os.getloadavg()[0]:.2f}; library threshold {_compute.THREADS_FROM}")
    print("entries   dtype    what      1 thread   all cores  all/1")
    for dtype in (np.float32, np.float64):
        for size in (1 << 15, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 23):
            x = (rng.standard_normal((size // 1000, 1000)) * 3).astype(dtype)
            out = np.empty_like(x)
            reps = max(1, (1 << 22) // size)
            runs = {
                "lse": lambda t, x=x: cpu.lse_rows(x, threads=t),
                "softmax": lambda t, x=x, out=out: cpu.state_rows(x, out=out, threads=t),
            }
            for what, run in runs.items():
                one, every = _alternate(lambda run=run: run(1), lambda run=run: run(cores), reps)
                row = f"{x.size:9d} {x.dtype.name:8s} {what:8s} {one * 1e6:9.0f}us {every * 1e6:9.0f}us"
                print(f"{row} {every / one:6.2f}", flush=True)


def short() -> None:
    """The rounding-tested sweeps against the accurate ones, and PyTorch beside them: (2048, 32000) float32.

    15 interleaved rounds of thread CPU time, one thread; the ratio is the
    median of each round's short / accurate.
    """
    from stablesoftmax._kernels import cpu

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2048, 32000)) * 3).astype(np.float32)
    y = rng.integers(0, x.shape[1], x.shape[0])
    runs = {
        "cross_entropy_rows, accurate": lambda: cpu.cross_entropy_rows(x, y),
        "cross_entropy_rows, short": lambda: cpu.cross_entropy_rows(x, y, short=True),
        "state_rows (accurate logsumexp)": lambda: cpu.state_rows(x),
        "lse_rows (short, tested)": lambda: cpu.lse_rows(x),
    }
    try:
        import torch

        torch.set_num_threads(1)
        t, ty = torch.from_numpy(x), torch.from_numpy(y)
        runs["F.cross_entropy"] = lambda: torch.nn.functional.cross_entropy(t, ty)
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run()
    for _ in range(15):
        for name, run in runs.items():
            t0 = time.thread_time()
            run()
            times[name].append(time.thread_time() - t0)
    for name, ts in times.items():
        q = np.percentile(ts, [25, 50, 75]) * 1e3
        print(f"{name:34s} {q[1]:7.1f} ms  [{q[0]:.1f} - {q[2]:.1f}]")
    for a, b in (
        ("cross_entropy_rows, short", "cross_entropy_rows, accurate"),
        ("lse_rows (short, tested)", "state_rows (accurate logsumexp)"),
    ):
        ratio = np.median(np.array(times[a]) / np.array(times[b]))
        print(f"{a} / {b}: {ratio:.3f}")


def _alternate(f, g, reps: int, samples: int = 9) -> tuple[float, float]:
    """Median wall time per call of ``f`` and of ``g``, sampled in turn."""
    f(), g()
    tf, tg = [], []
    for _ in range(samples):
        for fn, acc in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            acc.append((time.perf_counter() - t0) / reps)
    return sorted(tf)[samples // 2], sorted(tg)[samples // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["asm", "sweep", "terms", "fma", "threads", "short"])
    p.add_argument("--llvm-option", action="append", default=[], help="an LLVM option, set before compiling")
    args = p.parse_args(argv)
    if args.llvm_option:
        import llvmlite.binding as ll

        for option in args.llvm_option:
            ll.set_option("", option)
    {"asm": asm, "sweep": sweep, "terms": terms, "fma": fma, "threads": threads, "short": short}[args.probe]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
