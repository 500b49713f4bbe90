"""``stablesoftmax diagnose --plot``: each slice's spread against the cliffs of each dtype.

The picture is checked through what it holds: the PNG read back from disk
(its size), and the figure's own artists (one marker per failing slice, in
the colour of the widest dtype it breaks; a line per cliff where the dtype's
facts put it). Expected cliffs come from the IEEE formats written out by hand,
not from ``finfo``; expected failures from rows built to cross one cliff each,
and, for a random batch, from the report's own list of failing slices.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from stablesoftmax.cli import main
from stablesoftmax.lab import _plot
from stablesoftmax.lab import diagnose as dg

matplotlib_image = pytest.importorskip("matplotlib.image")

LN2 = math.log(2.0)
# (largest finite, smallest subnormal, smallest normal) of each format, from its bits
FORMATS = {
    "float16": ((2 - 2**-10) * 2.0**15, 2.0**-24, 2.0**-14),
    "bfloat16": ((2 - 2**-7) * 2.0**127, 2.0**-133, 2.0**-126),
    "float32": ((2 - 2**-23) * 2.0**127, 2.0**-149, 2.0**-126),
    "float64": ((2 - 2**-52) * 2.0**1023, 2.0**-1074, 2.0**-1022),
}
# One row per cliff, float64, no target: (row, the widest dtype it breaks in, or None)
ROWS = [
    ([5.0, 0.0], None),  # finite everywhere
    ([50.0, 48.0], "float16"),  # exp(50) overflows float16 only (cliff 11.09)
    ([0.0, -50.0], "float16"),  # exp(-50) rounds to 0 in float16 only (cliff 17.33)
    ([0.0, -95.0], "bfloat16"),  # past bfloat16's 92.88, short of float32's 103.97
    ([0.0, -200.0], "float32"),
    ([100.0, 99.0], "float32"),  # exp(100) overflows float32 (88.72), not float64
    ([0.0, -800.0], "float64"),  # past float64's 745.13
    ([np.nan, 0.0], None),  # a data problem: no place on the axes
]
PIXELS = (1100, 715)  # 10 x 6.5 inches at 110 dots per inch


def ulps_apart(a: float, b: float) -> float:
    return abs(a - b) / math.ulp(max(abs(a), abs(b)))


@pytest.fixture
def drawn(monkeypatch):
    """The SpreadChart of each --plot the command draws, as draw_plot returns it."""
    charts = []
    draw = dg.draw_plot

    def record(*args, **kwargs):
        charts.append(draw(*args, **kwargs))
        return charts[-1]

    monkeypatch.setattr(dg, "draw_plot", record)
    return charts


def plot_cli(capsys, tmp_path: Path, x: np.ndarray, *argv: str) -> tuple[int, str, str, Path]:
    np.save(tmp_path / "x.npy", x)
    png = tmp_path / "x.png"
    code = main(["diagnose", str(tmp_path / "x.npy"), "--plot", str(png), *argv])
    out, err = capsys.readouterr()
    return code, out, err, png


class TestCliffs:
    @pytest.mark.parametrize("dtype", dg.DTYPES)
    def test_from_the_dtype_facts(self, dtype):
        largest, subnormal, tiny = FORMATS[dtype]
        c = dg.cliff(dtype)
        assert ulps_apart(c.overflow, math.log(largest)) <= 2
        assert ulps_apart(c.underflow, LN2 - math.log(subnormal)) <= 2  # half the smallest subnormal rounds to 0
        assert ulps_apart(c.subnormal, -math.log(tiny)) <= 2

    def test_the_report_uses_the_same_cliffs(self):
        report = dg.diagnose(np.zeros((1, 2)))
        for name, rep in report.dtypes.items():
            assert (rep.overflow_above, -rep.underflow_below) == (dg.cliff(name).overflow, dg.cliff(name).underflow)


class TestCommand:
    def test_png_with_one_marker_per_failing_slice(self, capsys, tmp_path, drawn):
        code, out, err, png = plot_cli(capsys, tmp_path, np.array([r for r, _ in ROWS]))
        assert (code, err) == (0, "") and "verdict  FAIL" in out
        assert matplotlib_image.imread(png).shape[:2] == PIXELS[::-1]
        (chart,) = drawn
        assert chart.size == PIXELS and png.read_bytes() == chart.png
        widest = [w for _, w in ROWS if w is not None]
        assert chart.failing == {d: widest.count(d) for d in dg.DTYPES if d in widest}
        assert chart.passing == 1  # the NaN row is not drawn
        for name in dg.DTYPES:
            c = dg.cliff(name)
            assert chart.cliffs[name] == {"overflow": c.overflow, "underflow": c.underflow, "subnormal": c.subnormal}

    def test_only_the_dtypes_asked_for(self, capsys, tmp_path, drawn):
        code, _, _, png = plot_cli(capsys, tmp_path, np.array([r for r, _ in ROWS]), "--dtype", "float32,float16")
        assert code == 0 and png.exists()
        # the bfloat16 row breaks float16 here, the float64 row float32 (the widest asked about)
        assert drawn[0].failing == {"float16": 3, "float32": 3}
        assert set(drawn[0].cliffs) == {"float16", "float32"}

    def test_a_batch_read_in_windows(self, capsys, tmp_path, drawn, monkeypatch):
        rng = np.random.default_rng(7)
        x = rng.normal(0.0, 4.0, size=(600, 30))
        x[::7] *= 9.0  # spreads past float16's and bfloat16's cliffs
        x[::50, 0] += 120.0  # maxima past float32's overflow cliff
        monkeypatch.setattr(dg, "CHUNK_BYTES", 30 * 8 * 64)  # 64 slices a window: ten windows
        code, _, _, _ = plot_cli(capsys, tmp_path, x)
        assert code == 0
        # the oracle: each dtype's report lists every slice that breaks it (top = all)
        widest: dict[tuple[int, ...], str] = {}
        for name in dg.DTYPES:  # narrowest first: a wider dtype overwrites
            for s in dg.diagnose(x, dtypes=(name,), top=len(x)).dtypes[name].worst:
                widest[s.index] = name
        expected = {d: list(widest.values()).count(d) for d in dg.DTYPES if d in widest.values()}
        assert sum(expected.values()) > 50 and len(expected) >= 2  # the test would see a dropped window
        assert drawn[0].failing == expected
        assert drawn[0].passing == len(x) - len(widest)

    def test_bounded_number_of_points(self, capsys, tmp_path, drawn, monkeypatch):
        titles = []
        chart = _plot.spread_chart
        monkeypatch.setattr(_plot, "spread_chart", lambda *a: titles.append(a[-1]) or chart(*a))
        monkeypatch.setattr(dg, "PLOT_PASSING", 10)
        monkeypatch.setattr(dg, "PLOT_FAILING", 4)
        x = np.zeros((100, 3))
        x[::10, 0] = 50.0  # ten slices overflow float16
        code, _, _, _ = plot_cli(capsys, tmp_path, x, "--dtype", "float16")
        assert code == 0
        assert drawn[0].failing == {"float16": 4}  # the first 4 of 10
        assert drawn[0].passing == 9  # 1 in 10 of the 90 that stay finite
        assert "the first 4 failing slices are marked" in titles[0]
        assert "one in 10 of the 90 slices that stay finite" in titles[0]

    def test_target_note(self, capsys, tmp_path, drawn, monkeypatch):
        titles = []
        chart = _plot.spread_chart
        monkeypatch.setattr(_plot, "spread_chart", lambda *a: titles.append(a[-1]) or chart(*a))
        np.save(tmp_path / "t.npy", np.array([0, 1]))
        code, _, _, _ = plot_cli(
            capsys, tmp_path, np.array([[0.0, -50.0], [0.0, 1.0]]), "--target", str(tmp_path / "t.npy")
        )
        assert code == 0 and "its target's logit, not its min" in titles[0]
        assert drawn[0].failing == {} and drawn[0].passing == 2  # the target is the max: nothing breaks


class TestRefusals:
    def refused(self, capsys, tmp_path, plot: str, *needles: str) -> None:
        np.save(tmp_path / "x.npy", np.zeros((2, 3)))
        code = main(["diagnose", str(tmp_path / "x.npy"), "--plot", plot])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("stablesoftmax diagnose: error: ")
        for n in needles:
            assert n in err, (n, err)

    def test_without_matplotlib(self, capsys, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
        self.refused(capsys, tmp_path, str(tmp_path / "x.png"), "--plot", "matplotlib", "not installed", "[lab]")
        assert not (tmp_path / "x.png").exists()

    def test_not_png(self, capsys, tmp_path):
        self.refused(capsys, tmp_path, "x.pdf", "--plot 'x.pdf'", "ending in .png")

    def test_no_such_directory(self, capsys, tmp_path):
        plot = str(tmp_path / "nope" / "x.png")
        self.refused(capsys, tmp_path, plot, f"--plot {plot!r}", "does not exist", "existing directory")


class TestSpreadChart:
    def test_what_is_drawn_is_what_was_given(self):
        rng = np.random.default_rng(3)
        n = 500
        widest = rng.integers(-1, 2, size=n).astype(np.int8)
        cliffs = [dg.cliff("float16"), dg.cliff("float32")]
        chart = _plot.spread_chart(rng.normal(0, 50, n), rng.uniform(0, 300, n), widest, cliffs, "t")
        assert chart.passing == int((widest == -1).sum())
        assert chart.failing == {"float16": int((widest == 0).sum()), "float32": int((widest == 1).sum())}
        assert chart.size == PIXELS and chart.png.startswith(b"\x89PNG\r\n\x1a\n")

    def test_same_input_same_bytes(self):
        args = (np.array([1.0, 50.0]), np.array([2.0, 1.0]), np.array([-1, 0], np.int8), [dg.cliff("float16")], "t")
        assert _plot.spread_chart(*args).png == _plot.spread_chart(*args).png
