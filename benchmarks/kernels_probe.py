"""Probes of the compiled kernels: the vector width they compile to, and where a row's time goes.

Run from the repository root::

    python benchmarks/kernels_probe.py asm      # registers in the term loop, this CPU and cross-compiled targets
    python benchmarks/kernels_probe.py sweep    # (1024, 32000) float32: the pieces of a logsumexp, ns per entry
    python benchmarks/kernels_probe.py fma      # this core's FMA latency and throughput, for scale

``asm`` compiles the term loop (``_block``) for float32 and float64 rows
and counts the xmm/ymm/zmm registers in its machine code. The other
targets are compiled in subprocesses with ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES`` (and a scratch cache), so they need no such CPU:
nothing is run, only compiled. ``sweep`` and ``fma`` time on this machine,
one thread, best and median of interleaved samples of CPU time.
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
]


def registers() -> str:
    """Register counts in ``_block``'s machine code for float32 and float64 rows, compiled here."""
    from numba import types

    from stablesoftmax import _kernels as k

    none, out = types.none, []
    for dt in (types.float32, types.float64):
        arr = types.Array(dt, 1, "C")
        sig = (arr, arr, none, none, types.float64, dt, none, none, none, none, types.float64)
        k._block.compile(sig)
        asm = k._block.inspect_asm(sig)
        n = {r: len(re.findall(r"%" + r + r"\d+", asm)) for r in ("xmm", "ymm", "zmm")}
        fma = len(re.findall(r"\bvfn?m(?:add|sub)", asm))
        out.append(f"{dt}: zmm {n['zmm']}, ymm {n['ymm']}, xmm {n['xmm']}, FMA instructions {fma}")
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

    from stablesoftmax import _kernels as k

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
            s, _, _ = k._block(x[i], x[i], None, None, m[i], np.float32(-np.inf), None, None, None, None, 0.0)
            t += s
        return t

    @numba.njit(nogil=True)
    def terms_cached(row, m, reps):  # the same loop on one row that stays in L2
        t = 0.0
        for _ in range(reps):
            s, _, _ = k._block(row, row, None, None, m, np.float32(-np.inf), None, None, None, None, 0.0)
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
    """Latency (one chain) and throughput (8 chains) of 4-wide float64 FMAs: the ceiling of the term loop."""
    for chains in (1, 8):
        f = _fma_loop(chains)
        f(10, 0.9999999)
        n = 10_000_000
        best = min((lambda t0: (f(n, 0.9999999), time.thread_time() - t0)[1])(time.thread_time()) for _ in range(5))
        print(f"{chains} chain(s): {best / (n * chains) * 1e9:.3f} ns per ymm FMA")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["asm", "sweep", "fma"])
    args = p.parse_args(argv)
    {"asm": asm, "sweep": sweep, "fma": fma}[args.probe]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
