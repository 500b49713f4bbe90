"""``.. perf-charts:: benchmarks/results/perf.csv``: the committed timings, drawn when the docs are built.

The CSV is what ``python benchmarks/perf.py --csv`` writes (one row per method and case,
filed under the CPU class the run was made on). The directive draws, for each case the
library is timed on, how many times faster it is than naive NumPy, SciPy and PyTorch:
the median over rounds of the per-round ratio ``time(baseline) / time(stablesoftmax)``,
with the quartiles as error bars. Each CPU class measured gets its own panel, and a
table under the picture gives the same figures in digits. Nothing is typed by hand, so
a new run of the benchmark redraws the page.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]

# The baselines a bar is drawn for, and the methods of perf.py that are each one.
BASELINES = {
    "naive NumPy": ("naive",),
    "SciPy": ("scipy",),
    "PyTorch": ("torch", "F.cross_entropy"),
}
COLOURS = {"naive NumPy": "#8c8c8c", "SciPy": "#4c72b0", "PyTorch": "#dd8452"}

Ratio = tuple[float, float, float]  # median, first quartile, third quartile


def read_results(path: Path) -> dict[str, list[dict[str, str]]]:
    """The CSV's rows grouped by CPU class, in the order the classes first appear."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[row["cpu_class"]].append(row)
    return dict(groups)


def _baseline(method: str) -> str | None:
    return next((name for name, prefixes in BASELINES.items() if method.startswith(prefixes)), None)


def speedups(rows: list[dict[str, str]]) -> list[tuple[str, dict[str, Ratio]]]:
    """Per case (in the CSV's order), each baseline's time over the library's, as median and quartiles.

    Cases where the library itself is not timed (the kernel's thread scaling) have no
    ``ratio_to_stablesoftmax`` and are left out.
    """
    cases: dict[str, dict[str, Ratio]] = {}
    for row in rows:
        if not row["ratio_to_stablesoftmax"]:
            continue
        label = " ".join(p for p in (row["function"], row["variant"]) if p) + f"\n{row['shape']} {row['dtype']}"
        figures = cases.setdefault(label, {})
        name = _baseline(row["method"])
        if name is not None:
            figures[name] = (
                float(row["ratio_to_stablesoftmax"]),
                float(row["ratio_to_stablesoftmax_q1"]),
                float(row["ratio_to_stablesoftmax_q3"]),
            )
    return list(cases.items())


def describe(rows: list[dict[str, str]]) -> str:
    """What a panel's run was: the library's version, the other libraries', the CPU and its clock."""
    versions = {row["library"]: row["version"] for row in rows}
    libs = ", ".join(
        f"{lib} {versions[lib]}" for lib in ("stablesoftmax", "numpy", "scipy", "torch") if lib in versions
    )
    clocks = sorted({row["clock"] for row in rows if row["ratio_to_stablesoftmax"]})
    return f"{rows[0]['cpu']}; {libs}; {' and '.join(clocks)} time, one thread"


def draw(groups: dict[str, list[dict[str, str]]], path: Path) -> None:
    """One panel per CPU class: grouped bars of the speed-ups, on a log axis with 1 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 4.6 * len(groups)), squeeze=False)
    for ax, (cls, rows) in zip(axes[:, 0], groups.items(), strict=True):
        cases = speedups(rows)
        width = 0.8 / len(BASELINES)
        for j, name in enumerate(BASELINES):
            xs = [i + (j - (len(BASELINES) - 1) / 2) * width for i, (_, f) in enumerate(cases) if name in f]
            med = [f[name][0] for _, f in cases if name in f]
            err = [
                [f[name][0] - f[name][1] for _, f in cases if name in f],
                [f[name][2] - f[name][0] for _, f in cases if name in f],
            ]
            bars = ax.bar(
                xs, med, width, yerr=err, capsize=2, label=f"{name} time / stablesoftmax time", color=COLOURS[name]
            )
            ax.bar_label(bars, labels=[f"{m:.2g}" for m in med], fontsize=7, padding=2)
        ax.set_yscale("log")
        top = max(f[0] for _, figures in cases for f in figures.values())
        ax.set_ylim(top=top * 8)  # headroom above the tallest bar for the legend
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(cases)), [label for label, _ in cases], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("times faster (above 1: stablesoftmax is faster)", fontsize=8)
        ax.set_title(f"{cls}\n{describe(rows)}", fontsize=9)
        ax.legend(fontsize=8, loc="upper center", ncol=len(BASELINES))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)


def _cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph(text, text)
    return entry


def table(cls: str, cases: list[tuple[str, dict[str, Ratio]]]) -> nodes.table:
    """The panel's figures in digits: median [quartiles] per baseline, a dash where not measured."""
    head = ["case"] + [f"{name} time / stablesoftmax time" for name in BASELINES]
    tab = nodes.table(classes=["perf-table"])
    tab += nodes.title(cls, f"{cls}: how many times faster stablesoftmax is, median [quartiles] over rounds")
    group = nodes.tgroup(cols=len(head))
    tab += group
    group += [nodes.colspec(colwidth=w) for w in [4] + [3] * len(BASELINES)]
    thead, tbody = nodes.thead(), nodes.tbody()
    group += [thead, tbody]
    row = nodes.row()
    row += [_cell(h) for h in head]
    thead += row
    for label, figures in cases:
        row = nodes.row()
        row += _cell(label.replace("\n", " "))
        for name in BASELINES:
            f = figures.get(name)
            row += _cell(f"{f[0]:.3g}× [{f[1]:.3g} – {f[2]:.3g}]" if f else "—")
        tbody += row
    return tab


class PerfCharts(SphinxDirective):
    """The chart of a ``benchmarks/perf.py --csv`` file (path from the repository root) and its tables."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        csv_path = REPO / self.arguments[0]
        if not csv_path.is_file():
            raise self.error(f"perf-charts: {csv_path} does not exist; run benchmarks/perf.py --csv")
        self.env.note_dependency(str(csv_path))
        groups = read_results(csv_path)
        image = Path(self.env.srcdir) / "_generated" / f"{csv_path.stem}_charts.png"
        draw(groups, image)
        classes = ", ".join(groups)
        alt = f"bar chart per case: naive NumPy, SciPy and PyTorch time over stablesoftmax time, on {classes}"
        out: list[nodes.Node] = [nodes.image(uri=f"/_generated/{image.name}", alt=alt)]
        out += [table(cls, speedups(rows)) for cls, rows in groups.items()]
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("perf-charts", PerfCharts)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
