"""``stablesoftmax bench``: time the library against naive NumPy, SciPy and PyTorch.

Lab 02 task 6: ``logsumexp`` on a (64, 600) batch. Each (case, implementation)
pair is timed ``--repeats`` times; one repeat runs the call enough times to
last at least a millisecond and records the time per call. ``timings.csv``
gives the median, min and max of those repeats and the ratio of the median to
the naive median of the same case, measured in the same run. Medians, because
the machine is shared and noisy. Every implementation runs on one thread
(PyTorch is set to one), so the ratios compare algorithms, not core counts.

To extend (more shapes, dtypes, functions): add a :class:`BenchCase` to
``CASES``; an implementation is a binder in ``BINDERS`` that returns a
zero-argument call, or None when its library is not installed.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ArgumentError

__all__ = ["add_parser", "run", "BenchCase", "CASES", "BINDERS", "COLUMNS", "measure"]

FILES = ("timings.csv", "timings.png", "manifest.json")
COLUMNS = ("function", "shape", "dtype", "implementation", "version", "repeats", "calls_per_repeat",
           "median_s", "min_s", "max_s", "ratio_to_naive")
MIN_REPEAT_S = 1e-3  # one repeat lasts at least this long, so the timer's resolution does not matter


@dataclass(frozen=True)
class BenchCase:
    """One thing to time: a function of the softmax family on random logits of a shape and dtype."""

    function: str
    shape: tuple[int, ...]
    dtype: str = "float64"


CASES: tuple[BenchCase, ...] = (BenchCase("logsumexp", (64, 600)),)  # lab 02 task 6

Thunk = Callable[[], Any]


def _bind_stable(function: str, x: np.ndarray) -> Thunk:
    import stablesoftmax

    f = getattr(stablesoftmax, function)
    return lambda: f(x, axis=-1)


def _bind_naive(function: str, x: np.ndarray) -> Thunk:
    from .. import naive

    f = getattr(naive, function)
    return lambda: f(x, axis=-1)


def _bind_scipy(function: str, x: np.ndarray) -> Thunk | None:
    try:
        from scipy import special
    except ImportError:
        return None
    f = getattr(special, function)
    return lambda: f(x, axis=-1)


def _bind_torch(function: str, x: np.ndarray) -> Thunk | None:
    try:
        import torch
    except ImportError:
        return None
    # One thread, like NumPy and SciPy: on a shared machine torch's thread
    # pool contends with everything else and its median becomes noise.
    torch.set_num_threads(1)
    t, f = torch.from_numpy(x), getattr(torch, function)
    return lambda: f(t, dim=-1)


# Order matters only for the table; "naive" must be present: every ratio is to it.
BINDERS: dict[str, Callable[[str, np.ndarray], Thunk | None]] = {
    "stable": _bind_stable,
    "naive": _bind_naive,
    "scipy": _bind_scipy,
    "torch": _bind_torch,
}
VERSION_OF = {"stable": "stablesoftmax", "naive": "numpy", "scipy": "scipy", "torch": "torch"}

EXAMPLES = """\
examples:
  stablesoftmax bench --out /tmp/bench
      logsumexp on (64, 600): stable, naive, SciPy and PyTorch (when installed)
  stablesoftmax bench --out /tmp/bench --repeats 1000 --force
      more repeats for steadier medians; overwrite an earlier run
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="time logsumexp against naive NumPy, SciPy and PyTorch; write timings.csv",
        description="Time the stable functions against the naive formulas, SciPy and PyTorch;\n"
        "write timings.csv, timings.png and manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write")
    p.add_argument("--repeats", default="200", metavar="N", help="timed repeats per implementation (default: 200)")
    p.add_argument("--seed", default="42", metavar="N", help="seed of the random logits (default: 42)")
    p.add_argument("--force", action="store_true", help="overwrite files an earlier run left in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from . import _outdir

    repeats = _positive_int("--repeats", args.repeats, minimum=3)
    seed = _positive_int("--seed", args.seed, minimum=0)
    _outdir.prepare(args.out, list(FILES), force=args.force)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = []
    for case in CASES:
        rows += time_case(case, repeats=repeats, seed=seed, say=say)
    files = _write(args.out, rows)
    _write_manifest(args, repeats, seed, files)
    print(summary(rows, args.out))
    return 0


def _positive_int(option: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ArgumentError(f"{option} {text!r} is not allowed; give an integer >= {minimum}")
    return value


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def measure(thunk: Thunk, repeats: int) -> tuple[int, list[float]]:
    """Seconds per call over ``repeats`` repeats, and how many calls each repeat made."""
    thunk()  # warm-up: first-call costs (imports, caches) are not what we measure
    number = 1
    while _timed(thunk, number) < MIN_REPEAT_S:
        number *= 2
    return number, [_timed(thunk, number) / number for _ in range(repeats)]


def _timed(thunk: Thunk, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        thunk()
    return time.perf_counter() - start


def time_case(case: BenchCase, *, repeats: int, seed: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per installed implementation, each with its ratio to naive."""
    from ._cases import parse_dtype

    x = np.random.default_rng(seed).normal(0.0, 3.0, size=case.shape).astype(parse_dtype(case.dtype))
    rows = []
    for impl, bind in BINDERS.items():
        thunk = bind(case.function, x)
        if thunk is None:
            say(f"  {impl}: not installed, skipped")
            continue
        say(f"timing {impl} {case.function} {case.shape} {case.dtype} ({repeats} repeats) ...")
        number, samples = measure(thunk, repeats)
        rows.append(_row(case, impl, repeats, number, samples))
    naive_median = next(r["median_s"] for r in rows if r["implementation"] == "naive")
    for r in rows:
        r["ratio_to_naive"] = r["median_s"] / naive_median
    return rows


def _row(case: BenchCase, impl: str, repeats: int, number: int, samples: list[float]) -> dict[str, Any]:
    from ._manifest import dist_version

    return {
        "function": case.function,
        "shape": "x".join(map(str, case.shape)),
        "dtype": case.dtype,
        "implementation": impl,
        "version": dist_version(VERSION_OF[impl]) or "",
        "repeats": repeats,
        "calls_per_repeat": number,
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, **{k: f"{r[k]:.6e}" for k in ("median_s", "min_s", "max_s")},
                    "ratio_to_naive": f"{r['ratio_to_naive']:.4f}"})
    return buf.getvalue()


def _write(out: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    from . import _outdir, _plot

    title = "Time per call, lower is better (" + ", ".join(f"{c.function} {c.shape} {c.dtype}" for c in CASES) + ")"
    return {
        "timings.csv": _outdir.write(out / "timings.csv", to_csv(rows).encode()),
        "timings.png": _outdir.write(out / "timings.png", _plot.timings_chart(rows, title)),
    }


def _write_manifest(args: argparse.Namespace, repeats: int, seed: int, files: dict[str, str]) -> None:
    from . import _manifest, _outdir

    parts = ["stablesoftmax", "bench", "--out", str(args.out), "--repeats", str(repeats), "--seed", str(seed)]
    if args.force:
        parts.append("--force")
    settings = {"seed": seed, "repeats": repeats, "min_repeat_s": MIN_REPEAT_S,
                "cases": [{"function": c.function, "shape": list(c.shape), "dtype": c.dtype} for c in CASES]}
    manifest = _manifest.build(command=shlex.join(parts), settings=settings, files=files, inputs={})
    _outdir.write(args.out / "manifest.json", _manifest.dumps(manifest))


def summary(rows: list[dict[str, Any]], out: Path) -> str:
    head = f"{'function':<11}{'shape':<9}{'dtype':<9}{'impl':<8}{'median us':>11}{'min us':>10}{'max us':>10}{'vs naive':>10}"
    lines = [head] + [
        f"{r['function']:<11}{r['shape']:<9}{r['dtype']:<9}{r['implementation']:<8}{r['median_s'] * 1e6:>11.1f}"
        f"{r['min_s'] * 1e6:>10.1f}{r['max_s'] * 1e6:>10.1f}{r['ratio_to_naive']:>9.2f}x"
        for r in rows
    ]
    return "\n".join(lines + [f"wrote {out}/: {' '.join(FILES)}"])
