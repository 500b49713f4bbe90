"""``stablesoftmax bench``: time the library against naive NumPy, SciPy and PyTorch.

Two suites. ``lab`` (the default) is lab 02 task 6: ``logsumexp`` on a
(64, 600) batch. ``perf`` is the performance issue's table: ``logsumexp``,
``softmax``, ``cross_entropy`` and ``cross_entropy_with_grad`` on (4096, 32000)
float32, the other dtypes on (1024, 32000), the small (64, 600) and (600,)
float64 shapes, and a
sweep of widths for ``scaling.png``, time against bytes on log-log axes with
the machine's single-thread read bandwidth drawn as a line. Each (case, implementation)
pair is timed ``--repeats`` times; one repeat runs the call enough times to
last at least a millisecond and records the time per call. The repeats are
interleaved: each round times every implementation of a case once, in a
rotating order, so that a burst of load on a shared machine falls on all of
them alike. ``timings.csv`` gives the median, min and max of the repeats, the
ratio of the median to the naive median of the same case, and the quartiles
(``ratio_q1``, ``ratio_q3``) of the ratio taken round by round, its spread.
Medians, because the machine is shared and noisy. Every implementation runs on one thread
(PyTorch is set to one), so the ratios compare algorithms, not core counts.

With no ``--out`` the lab suite writes into ``out/<date>-phase-05-logsumexp/``
(lab 02's name, under ``/out/``, which git ignores). Every table, printed or
drawn, carries the CPU's model and vector features (AVX2, AVX-512, from
``/proc/cpuinfo`` or else NumPy's own detection), NumPy's SIMD targets and the
versions of the libraries timed, since NumPy's ``exp`` and ``log`` and so every
ratio depend on them.

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

from .. import ArgumentError

__all__ = ["add_parser", "run", "BenchCase", "CASES", "BINDERS", "COLUMNS", "measure", "measure_interleaved"]

FILES = ("timings.csv", "timings.png", "manifest.json")
COLUMNS = (
    "function",
    "shape",
    "dtype",
    "implementation",
    "version",
    "repeats",
    "calls_per_repeat",
    "median_s",
    "min_s",
    "max_s",
    "ratio_to_naive",
    "ratio_q1",
    "ratio_q3",
    "ratio_to_one_read",
)
MIN_REPEAT_S = 1e-3  # one repeat lasts at least this long, so the timer's resolution does not matter
MIN_REPEATS, MAX_REPEATS = 3, 10_000  # a median needs three; ten thousand repeats of the lab case take minutes
LAB02_DIR = "phase-05-logsumexp"  # lab 02: experiments/<date>-phase-05-logsumexp/timings.csv


@dataclass(frozen=True)
class BenchCase:
    """One thing to time: a function of the softmax family on random logits of a shape and dtype."""

    function: str
    shape: tuple[int, ...]
    dtype: str = "float64"

    @property
    def nbytes(self) -> int:
        from ._cases import parse_dtype

        return int(np.prod(self.shape)) * parse_dtype(self.dtype).itemsize


BIG = (4096, 32000)
MID = (1024, 32000)
SCALING = tuple(BenchCase("logsumexp", (1024, k), "float32") for k in (250, 1000, 4000, 16000, 64000))
SUITES: dict[str, tuple[BenchCase, ...]] = {
    "lab": (BenchCase("logsumexp", (64, 600)),),  # lab 02 task 6
    "perf": (
        BenchCase("logsumexp", BIG, "float32"),
        BenchCase("softmax", BIG, "float32"),
        BenchCase("cross_entropy", BIG, "float32"),
        BenchCase("cross_entropy_with_grad", BIG, "float32"),
        # Other dtypes on a quarter of the rows: NumPy has no SIMD exp for 16 bits, and the
        # naive and SciPy baselines would take minutes per case at the full size.
        BenchCase("logsumexp", MID, "float16"),
        BenchCase("logsumexp", MID, "bfloat16"),
        BenchCase("logsumexp", MID, "float64"),
        BenchCase("logsumexp", (64, 600), "float64"),
        BenchCase("logsumexp", (600,), "float64"),
    )
    + SCALING,
}
CASES = SUITES["lab"]

Thunk = Callable[[], Any]


def _bind_stable(function: str, x: np.ndarray, y: np.ndarray) -> Thunk:
    import stablesoftmax

    f = getattr(stablesoftmax, function)
    if function.startswith("cross_entropy"):
        return lambda: f(x, y)
    return lambda: f(x, axis=-1)


def _bind_naive(function: str, x: np.ndarray, y: np.ndarray) -> Thunk:
    from .. import naive

    if function == "cross_entropy":
        return lambda: naive.cross_entropy(x, y).mean()
    if function == "cross_entropy_with_grad":
        return lambda: _naive_ce_with_grad(x, y)
    f = getattr(naive, function)
    return lambda: f(x, axis=-1)


def _naive_ce_with_grad(x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
    """The textbook training step: softmax, -log p[y], and (p - onehot) / N."""
    from .. import naive

    p = naive.softmax(x)
    rows = np.arange(len(y))
    loss = -np.log(p[rows, y]).mean()
    p[rows, y] -= 1
    p /= len(y)
    return loss, p


def _bind_textbook(function: str, x: np.ndarray, y: np.ndarray) -> Thunk | None:
    """The max-shifted NumPy formula every tutorial writes."""
    if function == "logsumexp":

        def lse() -> Any:
            m = x.max(axis=-1, keepdims=True)
            return np.log(np.exp(x - m).sum(axis=-1)) + m[..., 0]

        return lse
    if function == "softmax":

        def sm() -> Any:
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        return sm
    return None


def _bind_scipy(function: str, x: np.ndarray, y: np.ndarray) -> Thunk | None:
    try:
        from scipy import special
    except ImportError:
        return None
    f = getattr(special, function, None)
    return None if f is None else (lambda: f(x, axis=-1))


def _bind_torch(function: str, x: np.ndarray, y: np.ndarray) -> Thunk | None:
    try:
        import torch
    except ImportError:
        return None
    # One thread, like NumPy and SciPy: on a shared machine torch's thread
    # pool contends with everything else and its median becomes noise.
    torch.set_num_threads(1)
    import ml_dtypes

    bf16 = x.dtype == np.dtype(ml_dtypes.bfloat16)
    t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if bf16 else torch.from_numpy(x)
    ty = torch.from_numpy(y)
    if function == "cross_entropy":
        return lambda: torch.nn.functional.cross_entropy(t, ty)
    if function == "cross_entropy_with_grad":

        def step() -> tuple[Any, Any]:
            leaf = t.detach().requires_grad_()
            loss = torch.nn.functional.cross_entropy(leaf, ty)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach(), leaf.grad

        return step
    f = getattr(torch, function)
    return lambda: f(t, dim=-1)


# Order matters only for the table; "naive" must be present: every ratio is to it.
BINDERS: dict[str, Callable[[str, np.ndarray, np.ndarray], Thunk | None]] = {
    "stable": _bind_stable,
    "naive": _bind_naive,
    "textbook": _bind_textbook,
    "scipy": _bind_scipy,
    "torch": _bind_torch,
}
VERSION_OF = {"stable": "stablesoftmax", "naive": "numpy", "textbook": "numpy", "scipy": "scipy", "torch": "torch"}

EXAMPLES = f"""\
examples:
  stablesoftmax bench
      lab 02 task 6: logsumexp on (64, 600), stable, naive, the max-shifted NumPy
      formula, SciPy and PyTorch (when installed), into out/<date>-{LAB02_DIR}/
  stablesoftmax bench --out /tmp/bench --repeats 1000 --force
      more repeats for steadier medians; overwrite an earlier run
  stablesoftmax bench --out /tmp/perf --suite perf --repeats 31
      the performance table: (4096, 32000) in every dtype, cross-entropy and its
      gradient, and scaling.png (takes several minutes: SciPy alone is ~9 s a call)

Each table is printed under the CPU's vector features (AVX2, AVX-512) and the
versions of the libraries timed: NumPy's exp and log, and so every ratio, depend on both.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time logsumexp against naive NumPy, SciPy and PyTorch; write timings.csv",
        description="Time the stable functions against the naive formulas, SciPy and PyTorch;\n"
        "write timings.csv, timings.png and manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"directory to write (default: out/<date>-{LAB02_DIR}/, or out/<date>-perf/ for --suite perf)",
    )
    p.add_argument(
        "--repeats",
        default="200",
        metavar="N",
        help=f"timed repeats per implementation, {MIN_REPEATS} to {MAX_REPEATS} (default: 200)",
    )
    p.add_argument("--seed", default="42", metavar="N", help="seed of the random logits (default: 42)")
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="lab",
        help="lab: logsumexp on (64, 600) (default); perf: the performance table and scaling.png",
    )
    p.add_argument("--only", default="", metavar="TEXT", help="time only the cases whose description contains TEXT")
    p.add_argument("--force", action="store_true", help="overwrite files an earlier run left in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from . import _manifest, _outdir

    out = _outdir.parse_out(args.out) if args.out is not None else default_out(args.suite)
    repeats = _bounded_int("--repeats", args.repeats, minimum=MIN_REPEATS, maximum=MAX_REPEATS)
    seed = _bounded_int("--seed", args.seed, minimum=0)
    cases = [c for c in SUITES[args.suite] if args.only in describe(c)]
    if not cases:
        raise ArgumentError(
            f"--only {args.only!r} matches no case of suite {args.suite!r}; cases: "
            + "; ".join(describe(c) for c in SUITES[args.suite])
        )
    files = _files(cases)
    _outdir.prepare(out, files, force=args.force, elsewhere=str(default_out(args.suite)))
    say = progress(args.quiet)
    say("measuring single-thread read bandwidth ...")
    bandwidth = read_bandwidth()
    rows = []
    for case in cases:
        rows += time_case(case, repeats=repeats, seed=seed, say=say, bandwidth=bandwidth)
    machine = [_manifest.cpu_line(), _manifest.versions_line()]
    written = _write(out, rows, cases, bandwidth, machine)
    _write_manifest(args, out, repeats, seed, cases, bandwidth, written)
    print(summary(rows, out, bandwidth, files, machine))
    return 0


def progress(quiet: bool) -> Callable[[str], None]:
    """Where progress lines go: stderr, or nowhere with -q."""

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return say


def default_out(suite: str) -> Path:
    """out/<today>-phase-05-logsumexp (lab 02's name), under /out/, which git ignores."""
    import datetime as _dt

    today = _dt.date.today().isoformat()
    return Path("out") / (f"{today}-{LAB02_DIR}" if suite == "lab" else f"{today}-{suite}")


def describe(case: BenchCase) -> str:
    return f"{case.function} {case.shape} {case.dtype}"


def _files(cases: list[BenchCase]) -> list[str]:
    extra = ["scaling.png"] if _scaling_rows_possible(cases) else []
    return ["timings.csv", "timings.png", *extra, "manifest.json"]


def _scaling_rows_possible(cases: list[BenchCase]) -> bool:
    return sum(c in SCALING for c in cases) >= 2


def read_bandwidth(megabytes: int = 256, tries: int = 5) -> float:
    """Bytes per second one thread reads: the best of a few sums of a large float32 array."""
    x = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    best = min(_timed(x.sum, 1) for _ in range(tries))
    return x.nbytes / best


def _bounded_int(option: str, text: str, *, minimum: int, maximum: int | None = None) -> int:
    """An integer option within its bounds, or an ArgumentError naming them (10**26 repeats would run forever)."""
    try:
        value = int(text)
    except ValueError:  # also a number too long for int(), which Python refuses past 4300 digits
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ArgumentError(f"{option} {text[:40]!r}{'...' if len(text) > 40 else ''} is not allowed; give {allowed}")
    return value


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def measure(thunk: Thunk, repeats: int) -> tuple[int, list[float]]:
    """Seconds per call over ``repeats`` repeats, and how many calls each repeat made."""
    numbers, samples = measure_interleaved({"": thunk}, repeats)
    return numbers[""], samples[""]


def measure_interleaved(thunks: dict[str, Thunk], repeats: int) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Seconds per call of each thunk over ``repeats`` rounds, and the calls per repeat of each.

    Every round times each thunk once, in an order that rotates from round to
    round, so that a burst of load on a shared machine falls on all of them
    alike: a ratio taken within a round compares like with like.
    """
    numbers = {}
    for name, thunk in thunks.items():
        thunk()  # warm-up: first-call costs (imports, caches) are not what we measure
        number = 1
        while _timed(thunk, number) < MIN_REPEAT_S:
            number *= 2
        numbers[name] = number
    names = list(thunks)
    samples: dict[str, list[float]] = {name: [] for name in thunks}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_timed(thunks[name], numbers[name]) / numbers[name])
    return numbers, samples


def _timed(thunk: Thunk, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        thunk()
    return time.perf_counter() - start


def time_case(
    case: BenchCase, *, repeats: int, seed: int, say: Callable[[str], None], bandwidth: float | None = None
) -> list[dict[str, Any]]:
    """One row per installed implementation, each with its ratio to naive (and to one read of the input)."""
    from ._cases import parse_dtype

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 3.0, size=case.shape).astype(parse_dtype(case.dtype))
    y = rng.integers(0, case.shape[-1], size=case.shape[:-1])
    thunks = {}
    for impl, bind in BINDERS.items():
        thunk = bind(case.function, x, y)
        if thunk is None:
            say(f"  {impl}: not installed or no such function, skipped")
        else:
            thunks[impl] = thunk
    say(f"timing {', '.join(thunks)} on {describe(case)} ({repeats} interleaved rounds) ...")
    numbers, samples = _quiet(measure_interleaved, thunks, repeats)
    rows = [_row(case, impl, repeats, numbers[impl], samples[impl]) for impl in thunks]
    naive = samples["naive"]
    for r in rows:
        per_round = [t / n for t, n in zip(samples[r["implementation"]], naive, strict=True)]
        q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
        r["ratio_to_naive"] = r["median_s"] / statistics.median(naive)
        r["ratio_q1"], r["ratio_q3"] = q1, q3  # the spread of the ratio within a round
        r["ratio_to_one_read"] = r["median_s"] / (case.nbytes / bandwidth) if bandwidth else float("nan")
        r["sweep"] = case in SCALING  # drawn in scaling.png rather than the bar chart
    return rows


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a timing with NumPy's floating-point warnings off: naive formulas overflow on purpose."""
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


def _row(case: BenchCase, impl: str, repeats: int, number: int, samples: list[float]) -> dict[str, Any]:
    return {
        "function": case.function,
        "shape": "x".join(map(str, case.shape)),
        "nbytes": case.nbytes,
        "dtype": case.dtype,
        "implementation": impl,
        "version": _version(impl),
        "repeats": repeats,
        "calls_per_repeat": number,
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }


def _version(impl: str) -> str:
    """The version timed: stablesoftmax's from the code imported (installed metadata can be stale), others'."""
    from .. import __version__
    from ._manifest import dist_version

    return __version__ if impl == "stable" else dist_version(VERSION_OF[impl]) or ""


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                **r,
                **{k: f"{r[k]:.6e}" for k in ("median_s", "min_s", "max_s")},
                "ratio_to_naive": f"{r['ratio_to_naive']:.4f}",
                "ratio_q1": f"{r['ratio_q1']:.4f}",
                "ratio_q3": f"{r['ratio_q3']:.4f}",
                "ratio_to_one_read": f"{r['ratio_to_one_read']:.3f}",
            }
        )
    return buf.getvalue()


def _write(
    out: Path, rows: list[dict[str, Any]], cases: list[BenchCase], bandwidth: float, machine: list[str]
) -> dict[str, str]:
    from . import _outdir, _plot

    table = [r for r in rows if not r["sweep"]] or rows
    title = (
        "Time per call, lower is better ("
        + ", ".join(sorted({describe(c) for c in cases if c not in SCALING}) or [describe(cases[0])])
        + ")"
    )
    written = {
        "timings.csv": _outdir.write(out / "timings.csv", to_csv(rows).encode()),
        "timings.png": _outdir.write(out / "timings.png", _plot.timings_chart(table, title, machine)),
    }
    if _scaling_rows_possible(cases):
        sweep = [r for r in rows if r["sweep"]]
        written["scaling.png"] = _outdir.write(out / "scaling.png", _plot.scaling_chart(sweep, bandwidth, machine))
    return written


def _write_manifest(
    args: argparse.Namespace,
    out: Path,
    repeats: int,
    seed: int,
    cases: list[BenchCase],
    bandwidth: float,
    files: dict[str, str],
) -> None:
    from . import _manifest, _outdir

    parts = [
        "stablesoftmax",
        "bench",
        "--out",
        _outdir.shown(out),
        "--repeats",
        str(repeats),
        "--seed",
        str(seed),
        "--suite",
        args.suite,
    ] + (["--only", args.only] if args.only else [])
    if args.force:
        parts.append("--force")
    settings = {
        "seed": seed,
        "repeats": repeats,
        "min_repeat_s": MIN_REPEAT_S,
        "suite": args.suite,
        "read_bandwidth_bytes_per_s": bandwidth,
        "cases": [{"function": c.function, "shape": list(c.shape), "dtype": c.dtype} for c in cases],
    }
    manifest = _manifest.build(command=shlex.join(parts), settings=settings, files=files, inputs={})
    _outdir.write(out / "manifest.json", _manifest.dumps(manifest))


def summary(
    rows: list[dict[str, Any]],
    out: Path,
    bandwidth: float | None = None,
    files: list[str] | None = None,
    machine: list[str] | None = None,
) -> str:
    """The table, under the machine it was measured on (the CPU's vector features, the versions)."""
    from . import _outdir

    head = (
        f"{'function':<24}{'shape':<11}{'dtype':<9}{'impl':<9}{'median us':>12}{'min us':>11}{'max us':>11}"
        f"{'vs naive':>10}{'per round, q1-q3':>18}{'vs 1 read':>11}"
    )
    lines = [*(machine or []), head] + [
        f"{r['function']:<24}{r['shape']:<11}{r['dtype']:<9}{r['implementation']:<9}{r['median_s'] * 1e6:>12.1f}"
        f"{r['min_s'] * 1e6:>11.1f}{r['max_s'] * 1e6:>11.1f}{r['ratio_to_naive']:>9.2f}x"
        f"{r['ratio_q1']:>11.2f}-{r['ratio_q3']:.2f}x{r.get('ratio_to_one_read', float('nan')):>10.2f}x"
        for r in rows
    ]
    if bandwidth:
        lines.append(
            f"single-thread read bandwidth: {bandwidth / 1e9:.1f} GB/s ('vs 1 read' divides by one read of the input)"
        )
    return "\n".join(lines + [f"wrote {_outdir.shown(out)}/: {' '.join(files or FILES)}"])
