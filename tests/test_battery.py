"""``stablesoftmax battery``: the lab's stop conditions, truthful results, determinism.

Expected values come from the labs' own reasoning (exp's range in each dtype,
mpmath for the float32 break), never from the battery's output.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest

from stablesoftmax import cli, naive, softmax
from stablesoftmax.lab import _predictions, _report
from stablesoftmax.lab._cases import LAB02_INPUTS, BREAK_ROWS, DTYPES, SOFTMAX_CASES
from stablesoftmax.lab._plot import NAN_COLOR
from stablesoftmax.lab._results import run_battery

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "experiments" / "02-softmax-stability"
WRITTEN = ("results.json", "README.md", "softmax_break.png")

# Lab 01 block D's own sample predictions, as the seed prints them (y = 1).
LAB_SAMPLE = """
[cases."small magnitudes"]
naive_nan = false
stable_nan = false
ce = 1.50
[cases."large positive"]
naive_nan = true
stable_nan = false
ce = 91.0
[cases."large negative"]
naive_nan = true
stable_nan = false
ce = 0.0
"""


def battery(out: Path, *extra: str) -> dict:
    assert cli.main(["battery", "--out", str(out), "-q", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    out = tmp_path_factory.mktemp("f32")
    return out, battery(out)


@pytest.fixture(scope="module", params=list(DTYPES))
def by_dtype(request):
    return DTYPES[request.param], run_battery(DTYPES[request.param], 42)


def _exp_range(dtype):
    """Logits whose exp is finite and nonzero in ``dtype``: (log smallest subnormal, log max)."""
    fi = ml_dtypes.finfo(dtype)
    return math.log(float(fi.smallest_subnormal)), math.log(float(fi.max))


class TestStopConditions:
    """Lab 01: naive NaN on at least two cases, stable on none, sums within n * eps."""

    def test_stable_never_nan(self, by_dtype):
        dtype, r = by_dtype
        assert [c["name"] for c in r["softmax"] if c["stable"]["has_nan"]] == []
        assert r["stop_conditions"]["stable_nan"]["met"]

    def test_stable_sums_within_n_eps(self, by_dtype):
        dtype, r = by_dtype
        eps = float(ml_dtypes.finfo(dtype).eps)
        for case, row in zip(SOFTMAX_CASES, r["softmax"]):
            p = np.asarray(softmax(np.asarray(case.logits).astype(dtype)), np.float64)
            assert row["stable"]["sum"] == math.fsum(p)  # the reported sum is the exact one
            assert abs(math.fsum(p) - 1.0) <= p.size * eps, case.name
        assert r["stop_conditions"]["stable_sums"]["met"]

    @pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
    def test_narrow_sums_within_one_rounding(self, name):
        # Computed wide and rounded once, each p_i carries a relative error of at
        # most eps/2 (or half a subnormal), so the sum is off by about eps/2, not n * eps.
        dtype = DTYPES[name]
        r = run_battery(dtype, 42)
        fi = ml_dtypes.finfo(dtype)
        for row in r["softmax"]:
            bound = float(fi.eps) / 2 + row["n"] * float(fi.smallest_subnormal) / 2
            assert abs(float(row["stable"]["sum"]) - 1.0) <= bound * (1 + 1e-9), row["name"]

    @pytest.mark.parametrize("name", ["float16", "bfloat16"])
    def test_naive_nan_on_two_cases_where_the_exponent_range_is_narrow(self, name):
        r = run_battery(DTYPES[name], 42)
        assert len([c for c in r["softmax"] if c["naive"]["has_nan"]]) >= 2
        assert r["stop_conditions"]["naive_nan"]["met"]

    def test_naive_nan_exactly_where_exp_leaves_its_range(self, by_dtype):
        # In float32 only the overflow case breaks: exp(-100) = 3.7e-44 survives
        # as a subnormal, so the lab's "large negative: 0/0" needs a narrower dtype.
        dtype, r = by_dtype
        lo, hi = _exp_range(dtype)
        expect = []
        for case in SOFTMAX_CASES:
            m = max(case.logits)
            assert abs(m - hi) > 1 and abs(m - lo) > 1, "a case too close to a threshold tests nothing"
            if m > hi or m < lo:
                expect.append(case.name)
        got = r["stop_conditions"]["naive_nan"]
        assert got["softmax_cases"] == expect
        assert r["nan_by_dtype"][dtype.name]["naive_nan"] == expect

    def test_stop_condition_counts_every_case_of_results_json(self, by_dtype):
        # Lab 02's inputs are in results.json too: [1000, 1001, 1002] overflows and
        # [-1000, -999, -998] underflows to 0/0 in every dtype, so the lab's first stop
        # condition holds at float32 as well, where only one lab 01 case breaks.
        dtype, r = by_dtype
        lo, hi = _exp_range(dtype)
        lab02 = [c for c in r["stop_conditions"]["naive_nan"]["cases"] if c.startswith("lab 02")]
        expect = [z for z in LAB02_INPUTS if max(z) > hi or max(z) < lo]
        assert len(lab02) == len(expect) == 2
        assert all("log_softmax" in c for c in lab02)
        got = r["stop_conditions"]["naive_nan"]
        assert got["cases"] == got["softmax_cases"] + lab02
        assert got["met"] and len(got["cases"]) >= 2
        assert r["stop_conditions"]["stable_nan"]["cases"] == []

    def test_report_puts_predictions_before_results(self, f32):
        text = (f32[0] / "README.md").read_text()
        pred, res = text.index("| case | x | naive NaN? | stable NaN? |"), text.index("## 2. Results")
        assert text.index("## 1. Predictions") < pred < res


class TestResults:
    def test_flags_match_the_functions(self, by_dtype):
        dtype, r = by_dtype
        for case, row in zip(SOFTMAX_CASES, r["softmax"]):
            x = np.asarray(case.logits).astype(dtype)
            with np.errstate(all="ignore"):  # the naive formula's warnings are the battery's to record
                p = np.asarray(naive.softmax(x), np.float64)
            assert row["naive"]["has_nan"] == bool(np.isnan(p).any())

    def test_relative_difference_where_naive_is_finite(self, f32):
        r = f32[1]
        row = next(c for c in r["softmax"] if c["name"] == "large positive")
        naive_out = [float(v) for v in row["naive"]["output"]]
        stable_out = [float(v) for v in row["stable"]["output"]]
        for a, b, d in zip(naive_out, stable_out, row["rel_diff"]):
            if math.isnan(a):
                assert d is None
            else:
                assert float(d) == abs(a - b) / abs(b)
        assert row["rel_diff_compared"] == sum(not math.isnan(a) for a in naive_out)

    def test_naive_warnings_recorded_not_raised(self, f32):
        # pytest turns warnings into errors: reaching here means none leaked.
        r = f32[1]
        row = next(c for c in r["softmax"] if c["name"] == "large positive")
        assert any("overflow encountered in exp" in w for w in row["naive"]["warnings"])
        assert row["stable"]["warnings"] == []
        lab02 = {tuple(x["input"]): x for x in r["lab02"]}
        big = lab02[(1000.0, 1001.0, 1002.0)]["logsumexp"]
        assert big["naive"] == "inf" and any("overflow" in w for w in big["naive_warnings"])

    def test_lab02_stable_finite_and_shift_invariant(self, f32):
        # lab 02: the shifted inputs [1000, 1001, 1002] and [-1000, -999, -998]
        # have the log_softmax of [1, 2, 3].
        rows = {tuple(x["input"]): x for x in f32[1]["lab02"]}
        base = rows[(1.0, 2.0, 3.0)]["log_softmax"]["stable"]
        for z in [(1000.0, 1001.0, 1002.0), (-1000.0, -999.0, -998.0)]:
            assert rows[z]["log_softmax"]["stable"] == base
            assert all(math.isfinite(float(rows[z][f]["stable"])) for f in ("logsumexp", "cross_entropy"))

    def test_ce_undefined_for_a_single_class(self, f32):
        row = next(c for c in f32[1]["softmax"] if c["name"] == "single element")
        assert row["cross_entropy"]["defined"] is False and row["cross_entropy"]["stable"] is None

    def test_fp32_break_against_mpmath(self, f32):
        b = f32[1]["fp32_break"]
        for spec, row in zip(BREAK_ROWS, b["rows"]):
            with mpmath.workdps(50):
                xs = [mpmath.mpf(float(np.float32(v))) for v in spec.logits]
                exact = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xs)) - xs[spec.target]
            assert row["stable_ce"] == float(np.float32(float(exact)))
            assert row["argmin_logit"] == int(np.argmin(spec.logits))
        huge = b["rows"][1]
        assert huge["unfused_ce"] == "inf" and huge["fails"] and huge["target_probability"] == 0.0
        assert b["failing_rows"] == ["huge"] and b["smallest_probability_per_batch"] == 0.0

    def test_scipy_parity_passes(self, f32):
        p = f32[1]["scipy_parity"]
        assert p["available"] and p["passed"] and len(p["rows"]) == len(SOFTMAX_CASES) + 5

    def test_without_scipy_it_says_so(self, monkeypatch):
        for name in ("scipy", "scipy.special"):
            monkeypatch.setitem(sys.modules, name, None)
        r = run_battery(DTYPES["float32"], 42)
        assert r["scipy_parity"]["available"] is False and "SciPy" in r["scipy_parity"]["reason"]
        assert r["fp32_break"]["scipy_ce"] is None

    def test_strict_json(self, f32):
        def refuse(token):
            raise AssertionError(f"bare {token} in results.json")

        json.loads((f32[0] / "results.json").read_text(), parse_constant=refuse)


class TestPng:
    def test_naive_half_red_and_stable_half_not(self, f32):
        # The headline: NaN cells are red on the naive side only.
        import matplotlib.image

        img = matplotlib.image.imread(f32[0] / "softmax_break.png")[..., :3]
        red = np.array([int(NAN_COLOR[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        is_red = np.all(np.abs(img - red) < 0.02, axis=-1)
        h, w = is_red.shape
        band = is_red[int(0.1 * h) : int(0.9 * h)]  # the rows: no titles, no legend
        naive_side, stable_side = band[:, int(0.16 * w) : int(0.52 * w)], band[:, int(0.56 * w) : int(0.92 * w)]
        assert naive_side.sum() > 2000  # the NaN cell and frame of "large positive"
        assert stable_side.sum() == 0

    def test_no_software_metadata(self, f32):
        data = (f32[0] / "softmax_break.png").read_bytes()
        assert data.startswith(b"\x89PNG") and b"Software" not in data and b"matplotlib" not in data


class TestDeterminism:
    def test_two_runs_byte_identical_except_manifest_time(self, tmp_path):
        out = tmp_path / "run"
        battery(out, "--force")
        first = {n: (out / n).read_bytes() for n in (*WRITTEN, "predictions-template.toml", "manifest.json")}
        battery(out, "--force")
        for name in (*WRITTEN, "predictions-template.toml"):
            assert (out / name).read_bytes() == first[name], name
        m1, m2 = json.loads(first["manifest.json"]), json.loads((out / "manifest.json").read_text())
        m1.pop("time"), m2.pop("time")
        assert m1 == m2


class TestManifest:
    def test_hashes_and_fields(self, f32):
        import hashlib

        out = f32[0]
        m = json.loads((out / "manifest.json").read_text())
        for name, digest in m["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert set(m["files"]) == {*WRITTEN, "predictions-template.toml"}
        assert m["seed"] == 42 and m["dtype"] == "float32"
        assert {"python", "numpy", "stablesoftmax", "scipy"} <= set(m["versions"])
        assert m["git"] is None or len(m["git"]["commit"]) == 40
        assert m["command"].startswith("stablesoftmax battery --out ")


class TestPredictions:
    def test_lab_sample_predictions_diverge_with_reasons(self, tmp_path, f32):
        f = tmp_path / "lab.toml"
        f.write_text(LAB_SAMPLE)
        found = {(d.case, d.field): d for d in _predictions.divergences(_predictions.load(f, "float32"), f32[1])}
        # small: the seed's ~1.50 misses log(6.82) - 0.2 = 1.72 by more than 5 %
        assert ("small magnitudes", "CE") in found
        # large positive: y = 1 is the max logit, CE ~ 0, not 91
        assert ("large positive", "CE") in found and ("large positive", "naive NaN?") not in found
        # large negative: exp(-100) is a float32 subnormal, no 0/0
        assert "subnormal" in found[("large negative", "naive NaN?")].why
        assert "logsumexp(x) - x[1]" in found[("large negative", "CE")].why

    def test_divergences_appear_in_the_report(self, tmp_path):
        f = tmp_path / "lab.toml"
        f.write_text(LAB_SAMPLE)
        out = tmp_path / "out"
        r = battery(out, "--predictions", str(f))
        text = (out / "README.md").read_text()
        for d in _predictions.divergences(_predictions.load(f, "float32"), r):
            assert f"**{d.case}**, {d.field} predicted {d.predicted}, got {d.actual}" in text
        assert not (out / "predictions-template.toml").exists()

    def test_template_is_a_valid_predictions_file(self, tmp_path):
        f = tmp_path / "t.toml"
        f.write_text(_predictions.template("bfloat16"))
        preds = _predictions.load(f, "bfloat16")
        assert set(preds.cases) == {c.name for c in SOFTMAX_CASES}

    def test_ce_tolerance(self):
        ce = {"defined": True, "stable": 100.0}
        assert _predictions._ce_agrees(104.9, ce) and not _predictions._ce_agrees(105.1, ce)
        assert _predictions._ce_agrees(math.inf, {"defined": True, "stable": "inf"})
        assert _predictions._ce_agrees("undefined", {"defined": False, "stable": None})


class TestReport:
    def test_closing_notes(self, f32):
        text = (f32[0] / "README.md").read_text()
        assert _report.MAX_TRICK in text and _report.MASKED_LABEL in text
        assert "all zeros" in text  # the contract's all -inf policy, read from CONTRACT


class TestWorkedExample:
    def test_committed_example_regenerates(self, tmp_path):
        if not (EXAMPLE / "results.json").exists():
            pytest.skip("the worked example is not generated yet")
        m = json.loads((EXAMPLE / "manifest.json").read_text())
        shutil.copy(EXAMPLE / "predictions.toml", tmp_path / "predictions.toml")
        out = tmp_path / "out"
        battery(out, "--dtype", m["dtype"], "--seed", str(m["seed"]), "--predictions", str(tmp_path / "predictions.toml"))
        assert (out / "results.json").read_bytes() == (EXAMPLE / "results.json").read_bytes()
        assert (out / "README.md").read_bytes() == (EXAMPLE / "README.md").read_bytes()


def test_results_do_not_depend_on_the_compiled_extra(monkeypatch):
    # The README's first command installs no numba; CI does. Both must write the same results.json.
    with_kernels = json.dumps(run_battery(DTYPES["float32"], 42), sort_keys=True)
    monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
    assert json.dumps(run_battery(DTYPES["float32"], 42), sort_keys=True) == with_kernels
