"""The figures: softmax_break.png (the battery), timings.png and scaling.png (the bench), and
diagnose's ``--plot`` picture (:func:`spread_chart`).

Both are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas
(no pyplot, no global state), under matplotlib's default style so a user's
matplotlibrc cannot change the picture, and saved without the "Software"
metadata so two runs give the same bytes.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._cases import SOFTMAX_CASES

__all__ = [
    "softmax_break",
    "timings_chart",
    "scaling_chart",
    "spread_chart",
    "Cliff",
    "SpreadChart",
    "NAN_COLOR",
    "INF_COLOR",
]

NAN_COLOR = "#d62728"  # red: NaN
INF_COLOR = "#7f0000"  # dark red: +-inf
VALID_COLOR = "#1a7f37"  # green: a stable row where the naive one broke
WRONG_COLOR = "#ff7f0e"  # orange: no NaN, yet the row does not sum to 1
WRONG_SUM = 0.01  # "visibly wrong": off by more than 1 %, far beyond any rounding
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: byte-identical runs
FRAME_COLORS = {"nan_row": NAN_COLOR, "valid": VALID_COLOR, "wrong_sum": WRONG_COLOR}
LABELS = {c.name: c.label for c in SOFTMAX_CASES}


def softmax_break(results: dict[str, Any]) -> bytes:
    """Each case a row, naive.py on the left and stable.py on the right; NaN and inf cells red.

    Drawn from results.json alone, so the picture shows exactly what compare.py
    computed. The legend lists only the marks the picture holds.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = results["softmax"]
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(15, 8.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, sharey=True)
        drawn: set[str] = set()
        for ax, kind in zip(axes, ("naive", "stable"), strict=True):
            mesh = _draw_side(ax, cases, kind, drawn)
        axes[0].set_yticks(np.arange(len(cases)) + 0.5, [f"{c['name']}\n{_label(c)}" for c in cases], fontsize=10)
        cbar = fig.colorbar(mesh, ax=list(axes), shrink=0.8, pad=0.01)
        cbar.set_label("softmax probability")
        _legend(fig, drawn)
        fig.suptitle(_headline(results), fontsize=14, fontweight="bold")
        return _png(fig)


def _label(case: dict[str, Any]) -> str:
    return LABELS.get(case["name"], f"n = {case['n']}")


def _row_values(side: dict[str, Any], n: int) -> tuple[np.ndarray, bool]:
    """A row's probabilities as results.json holds them; a wide row (no output kept) as its mean, flagged."""
    if side["output"] is not None:
        return np.array([float(v) for v in side["output"]]), False
    return np.full(n, float(side["sum"]) / n), True


def _draw_side(ax: Any, cases: list[dict[str, Any]], kind: str, drawn: set[str]) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    mesh = None
    for i, c in enumerate(cases):
        p, wide = _row_values(c[kind], c["n"])
        edges = np.linspace(0.0, 1.0, p.size + 1)
        finite = np.where(np.isfinite(p), p, np.nan)
        mesh = ax.pcolormesh(
            edges,
            [i, i + 1],
            finite[None, :],
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            edgecolors="face" if wide else "white",
            linewidth=0 if wide else 1.5,
        )
        drawn |= _bad_cells(ax, p, edges, i)
        _labels(ax, p, edges, i, c[kind] if wide else None)
    marks = {
        "nan_row": [i for i, c in enumerate(cases) if c[kind]["has_nan"]],
        "wrong_sum": _silently_wrong(cases, kind),
        "valid": [
            i for i, c in enumerate(cases) if kind == "stable" and c["naive"]["has_nan"] and not c["stable"]["has_nan"]
        ],
    }
    for mark, rows in marks.items():
        for i in rows:
            ax.add_patch(_frame(i, FRAME_COLORS[mark]))
        if rows:
            drawn.add(mark)
    broken = marks["nan_row"]
    ax.set_xlim(0, 1)
    ax.set_ylim(len(cases), 0)
    ax.set_xticks([])
    title = "naive.py: exp(x) / sum(exp(x))" if kind == "naive" else "stable.py: the -max shift"
    verdict = f"NaN on {len(broken)} of {len(cases)} cases" if broken else "no NaN on any case"
    ax.set_title(f"{title}\n{verdict}", fontsize=12, color=NAN_COLOR if broken else VALID_COLOR)
    ax.set_xlabel("elements of the row, left to right (each row is split into n equal cells)")
    return mesh


def _bad_cells(ax: Any, p: np.ndarray, edges: np.ndarray, i: int) -> set[str]:
    from matplotlib.patches import Rectangle

    kinds = set()
    for j in np.flatnonzero(~np.isfinite(p)):
        kind = "nan" if math.isnan(p[j]) else "inf"
        kinds.add(kind)
        ax.add_patch(
            Rectangle(
                (edges[j], i),
                edges[j + 1] - edges[j],
                1,
                facecolor=NAN_COLOR if kind == "nan" else INF_COLOR,
                edgecolor="white",
                linewidth=1.5,
                hatch="//",
            )
        )
    return kinds


def _silently_wrong(cases: list[dict[str, Any]], kind: str) -> list[int]:
    """Rows without NaN that visibly fail to sum to 1, like bfloat16's stalled naive sum (600/256)."""
    return [i for i, c in enumerate(cases) if not c[kind]["has_nan"] and abs(float(c[kind]["sum"]) - 1.0) > WRONG_SUM]


def _frame(i: int, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((0.002, i + 0.04), 0.996, 0.92, fill=False, edgecolor=color, linewidth=3.5, zorder=5)


def _labels(ax: Any, p: np.ndarray, edges: np.ndarray, i: int, wide: dict[str, Any] | None) -> None:
    if wide is not None:
        lo, hi = float(wide["min"]), float(wide["max"])
        text = f"{p.size} cells, all {_short(lo)}" if lo == hi else f"{p.size} cells, {_short(lo)} to {_short(hi)}"
        text += f" (sum {_short(float(wide['sum']))})"
        ax.text(
            0.5,
            i + 0.5,
            text,
            ha="center",
            va="center",
            fontsize=10,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "edgecolor": "none", "pad": 2},
        )
        return
    for j, v in enumerate(p):
        bad = not math.isfinite(v)
        ax.text(
            (edges[j] + edges[j + 1]) / 2,
            i + 0.5,
            _short(v),
            ha="center",
            va="center",
            fontsize=11 if bad else 9.5,
            fontweight="bold" if bad else "normal",
            color="white" if bad or v < 0.6 else "black",
        )


def _short(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}"


def _legend(fig: Any, drawn: set[str]) -> None:
    from matplotlib.patches import Patch

    entries = {
        "nan": Patch(facecolor=NAN_COLOR, hatch="//", edgecolor="white", label="NaN"),
        "inf": Patch(facecolor=INF_COLOR, hatch="//", edgecolor="white", label="inf"),
        "nan_row": Patch(facecolor="none", edgecolor=NAN_COLOR, linewidth=3, label="row holds a NaN"),
        "valid": Patch(facecolor="none", edgecolor=VALID_COLOR, linewidth=3, label="naive broke, stable valid"),
        "wrong_sum": Patch(
            facecolor="none", edgecolor=WRONG_COLOR, linewidth=3, label="no NaN, but the sum is off by > 1%"
        ),
    }
    handles = [h for key, h in entries.items() if key in drawn]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=10.5, frameon=False)


def _headline(results: dict[str, Any]) -> str:
    naive_nan = results["stop_conditions"]["naive_nan"]["softmax_cases"]
    stable_nan = [c for c in results["stop_conditions"]["stable_nan"]["cases"] if not c.startswith("lab 02")]
    broke = ", ".join(naive_nan) if naive_nan else "no case"
    held = "never returns NaN" if not stable_nan else "returns NaN on " + ", ".join(stable_nan)
    return f"Softmax at {results['dtype']}: naive breaks on {broke}; stable {held}"


def timings_chart(rows: list[dict[str, Any]], title: str, machine: list[str] | None = None) -> bytes:
    """Median time per call of each implementation, min to max as whiskers, ratio to naive beside it.

    Log scale: on a shared machine the max is often ten times the median, and
    on a linear axis that outlier would flatten every bar.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        one_case = len({(r["function"], r["shape"], r["dtype"]) for r in rows}) == 1
        labels = [
            r["implementation"] if one_case else f"{r['implementation']}\n{r['function']} {r['shape']} {r['dtype']}"
            for r in rows
        ]
        med = np.array([r["median_s"] for r in rows]) * 1e6
        lo = med - np.array([r["min_s"] for r in rows]) * 1e6
        hi = np.array([r["max_s"] for r in rows]) * 1e6 - med
        colors = ["#8c8c8c" if r["implementation"] == "naive" else "#4c72b0" for r in rows]
        ax.bar(range(len(rows)), med, yerr=[lo, hi], capsize=6, color=colors, width=0.6)
        for i, (m, r) in enumerate(zip(med, rows, strict=True)):
            ax.annotate(
                f"{m:.0f} us\n{r['ratio_to_naive']:.2f}x naive",
                (i + 0.06, m),
                ha="left",
                va="center",
                fontsize=9.5,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
            )
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), labels, fontsize=10)
        ax.set_ylabel("time per call, microseconds (log)\nbar: median; whiskers: min to max")
        ax.set_title(title, fontsize=11)
        _machine_note(fig, machine)
        return _png(fig)


def scaling_chart(rows: list[dict[str, Any]], bandwidth: float, machine: list[str] | None = None) -> bytes:
    """Median time against input size on log-log axes, one line per implementation.

    The dashed line is one read of the input at the measured single-thread
    read bandwidth: no single pass can beat it, so the gap to it is what an
    implementation leaves on the table.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8, 5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for impl in dict.fromkeys(r["implementation"] for r in rows):
            mine = sorted((r for r in rows if r["implementation"] == impl), key=lambda r: r["nbytes"])
            ax.plot(
                [r["nbytes"] for r in mine],
                [r["median_s"] for r in mine],
                marker="o",
                label=impl,
                linewidth=2.5 if impl == "stable" else 1.5,
            )
        sizes = np.array(sorted({r["nbytes"] for r in rows}), dtype=float)
        ax.plot(sizes, sizes / bandwidth, "k--", label=f"one read at {bandwidth / 1e9:.1f} GB/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input size, bytes (float32, 1024 rows, width 250 to 64000)")
        ax.set_ylabel("median time per call, seconds")
        ax.set_title(f"{rows[0]['function']} along the last axis: time against size, lower is better", fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        _machine_note(fig, machine)
        return _png(fig)


def _machine_note(fig: Any, machine: list[str] | None) -> None:
    """The CPU's vector features and the versions under a chart: its figures hold for that machine only."""
    if machine:  # supxlabel, not fig.text: the constrained layout makes room for it below the tick labels
        fig.supxlabel("\n".join(machine), fontsize=7, color="#555555", x=0.01, ha="left")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata=PNG_METADATA)
    return buf.getvalue()


# --------------------------------------------------------------------------
# diagnose --plot: each slice's spread against the cliffs of each dtype
# --------------------------------------------------------------------------

DTYPE_COLORS = {"float16": "#d62728", "bfloat16": "#ff7f0e", "float32": "#1f77b4", "float64": "#2ca02c"}
PASSING_COLOR = "#9a9a9a"


@dataclass(frozen=True)
class Cliff:
    """Where one dtype's naive softmax breaks, in nats, from its ``finfo``.

    ``overflow``: ``exp(max)`` is inf once ``max > log(finfo.max)``. ``underflow``:
    ``exp(min - max)`` rounds to 0 once the spread passes
    ``-log(smallest_subnormal / 2)``. ``subnormal``: past ``-log(finfo.tiny)`` it
    is subnormal, which is 0 already where a kernel flushes subnormals.
    """

    dtype: str
    overflow: float
    underflow: float
    subnormal: float


@dataclass(frozen=True)
class SpreadChart:
    """The PNG and what it holds, read back from the figure's artists (not from the input):
    dots per kind, markers per dtype, each cliff line's position, and the size in pixels."""

    png: bytes
    passing: int
    failing: dict[str, int]
    cliffs: dict[str, dict[str, float]]
    size: tuple[int, int]


def spread_chart(
    max_logit: np.ndarray, spread: np.ndarray, widest: np.ndarray, cliffs: list[Cliff], title: str
) -> SpreadChart:
    """Each slice a point at (max, max - min), the cliffs of each dtype as lines, failing slices marked.

    ``widest[i]`` is the index in ``cliffs`` (narrowest dtype first) of the
    widest dtype slice ``i`` breaks in, or -1: a failing slice gets one marker,
    in the colour of that dtype, so the picture says which dtypes the batch
    breaks at a glance. Symmetric-log axes: the cliffs run from 9.7 (float16)
    to 745 (float64), and logits can reach 1e30.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(10, 6.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ok = widest < 0
        ax.scatter(
            max_logit[ok],
            spread[ok],
            s=6,
            color=PASSING_COLOR,
            alpha=0.6,
            linewidths=0,
            gid="passing",
            label=f"stays finite in every dtype ({int(ok.sum())})",
        )
        for i, c in enumerate(cliffs):
            mine = widest == i
            if mine.any():
                ax.scatter(
                    max_logit[mine],
                    spread[mine],
                    s=30,
                    marker="x",
                    color=DTYPE_COLORS[c.dtype],
                    linewidths=1.2,
                    gid=f"failing:{c.dtype}",
                    zorder=3,
                    label=f"breaks {c.dtype}{' and narrower' if i else ''} ({int(mine.sum())})",
                )
        _cliff_lines(ax, cliffs)
        _spread_axes(ax, max_logit, spread, cliffs)
        ax.set_title(title, fontsize=11)
        fig.legend(handles=_spread_legend(ax), loc="outside right upper", fontsize=9, frameon=False)
        return _read_back(fig, ax)


def _cliff_lines(ax: Any, cliffs: list[Cliff]) -> None:
    """A solid vertical line per dtype at its overflow cliff, dashed and dotted horizontals at its underflow
    and subnormal cliffs. Wider dtypes are drawn first and thicker, so that a narrower dtype's line on the
    same value (bfloat16's and float32's overflow) shows inside it; such dtypes share one label."""

    def width(i: int, kind: str) -> float:  # thicker by the narrower dtypes drawn on the same value
        mine: float = round(getattr(cliffs[i], kind), 2)
        same = int(sum(round(getattr(n, kind), 2) == mine for n in cliffs[:i]))
        return (0.9 if kind == "subnormal" else 1.3) * (1 + 1.4 * same)

    labels: dict[tuple[str, float], list[str]] = {}
    for i, c in reversed(list(enumerate(cliffs))):
        color = DTYPE_COLORS[c.dtype]
        ax.axvline(c.overflow, color=color, linewidth=width(i, "overflow"), gid=f"overflow:{c.dtype}")
        ax.axhline(
            c.underflow, color=color, linewidth=width(i, "underflow"), linestyle="--", gid=f"underflow:{c.dtype}"
        )
        ax.axhline(c.subnormal, color=color, linewidth=width(i, "subnormal"), linestyle=":", gid=f"subnormal:{c.dtype}")
    for c in cliffs:
        for kind, value in (("overflow", c.overflow), ("underflow", c.underflow)):
            labels.setdefault((kind, round(value, 2)), []).append(c.dtype)
    _cliff_labels(ax, labels)


def _cliff_labels(ax: Any, labels: dict[tuple[str, float], list[str]]) -> None:
    """Each cliff's dtypes and value beside its line; a label crowded by the next one up goes below its line."""
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax.transData, ax.transAxes)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for kind in ("overflow", "underflow"):
        values = sorted(v for k, v in labels if k == kind)
        for j, value in enumerate(values):
            text = f"{', '.join(labels[kind, value])} {value:.2f}"
            crowded = j + 1 < len(values) and values[j + 1] < 1.5 * value
            if kind == "overflow":
                ha = "left" if crowded else "right"
                ax.text(value, 0.99, text, transform=top, rotation=90, ha=ha, va="top", fontsize=8)
            else:
                va = "top" if crowded else "bottom"
                ax.text(0.99, value, text, transform=right, ha="right", va=va, fontsize=8)


def _spread_axes(ax: Any, max_logit: np.ndarray, spread: np.ndarray, cliffs: list[Cliff]) -> None:
    """Symmetric-log axes wide enough for every point and every cliff."""
    far_x = max([c.overflow for c in cliffs] + [float(np.max(max_logit, initial=0.0))])
    near_x = min(-1.0, float(np.min(max_logit, initial=0.0)))
    far_y = max([c.underflow for c in cliffs] + [float(np.max(spread, initial=0.0))])
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(near_x * 1.5, far_x * 1.5)
    ax.set_ylim(0.0, far_y * 1.5)
    ax.set_xlabel("largest logit of the slice (max); right of a solid line, the naive exp(x) overflows")
    ax.set_ylabel("spread of the slice (max - min); above a dashed line,\nits smallest probability rounds to 0")
    ax.grid(True, which="major", alpha=0.25)


def _spread_legend(ax: Any) -> list[Any]:
    from matplotlib.lines import Line2D

    handles: list[Any] = list(ax.get_legend_handles_labels()[0])
    styles: tuple[tuple[Literal["-", "--", ":"], float, str], ...] = (
        ("-", 1.4, "exp overflows:\nmax > log(finfo.max)"),
        ("--", 1.4, "probability rounds to 0:\nspread > -log(smallest subnormal / 2)"),
        (":", 0.9, "probability subnormal (0 where\nsubnormals flush): spread > -log(finfo.tiny)"),
    )
    for style, width, text in styles:
        handles.append(Line2D([], [], color="black", linestyle=style, linewidth=width, label=text))
    return handles


def _read_back(fig: Any, ax: Any) -> SpreadChart:
    """Render the figure, then count what it holds from its artists, so a test sees what was drawn."""
    png = _png(fig)
    failing, passing = {}, 0
    for coll in ax.collections:
        gid = coll.get_gid() or ""
        if gid == "passing":
            passing = len(coll.get_offsets())
        elif gid.startswith("failing:"):
            failing[gid.split(":", 1)[1]] = len(coll.get_offsets())
    cliffs: dict[str, dict[str, float]] = {}
    for line in ax.lines:
        kind, _, dtype = (line.get_gid() or "").partition(":")
        if kind in ("overflow", "underflow", "subnormal"):
            value = line.get_xdata()[0] if kind == "overflow" else line.get_ydata()[0]
            cliffs.setdefault(dtype, {})[kind] = float(value)
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
    return SpreadChart(png, passing, failing, cliffs, (width, height))
