"""``stablesoftmax battery``: the lab's own files, its stop conditions, predictions, hints, determinism.

Expected values come from the labs' own reasoning (exp's range in each dtype,
mpmath for the float32 break), never from the battery's output.

The committed worked example is compared with a fresh run in two ways. What is
meant to be exact (every key, string, flag, count, special value, and the
README as a function of results.json) must be equal. The finite figures that
NumPy's ``exp`` and ``log`` produce may differ in their last bits between CPUs
(NumPy's AVX-512 and AVX2 builds round differently), so they must agree within
``ULPS`` units in the last place: NumPy's SIMD float32 ``exp`` and ``log`` are
within 2.52 and 3.83 ulp (NumPy 1.17 release notes), glibc's within 1, and the
lab's formulas chain up to three such calls, so two CPUs can disagree by up to
about 8 ulp. On a CPU with the same NumPy SIMD targets as the one that made the
example, the bytes must be identical.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest

import stablesoftmax
from stablesoftmax import cli
from stablesoftmax.lab import _manifest, _predictions, _report, _results, battery
from stablesoftmax.lab._cases import BREAK_ROWS, DTYPES, LAB02_INPUTS, SOFTMAX_CASES
from stablesoftmax.lab._plot import INF_COLOR, NAN_COLOR, WRONG_COLOR, softmax_break

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "experiments" / "02-softmax-stability"
LAB_DIR = REPO / "src" / "stablesoftmax" / "lab"
ULPS = 8

# Lab 01 block D's own sample predictions (y = 1), with the other five cases filled in.
LAB_SAMPLE = {
    "small magnitudes": (False, False, 1.50),
    "mixed magnitudes": (False, False, 5.07),
    "large positive": (True, False, 91.0),
    "large negative": (True, False, 0.0),
    "all identical": (False, False, 1.609),
    "masked entry": (False, False, "inf"),
    "single element": (False, False, '"undefined"'),
    "verb vocabulary": (False, False, 6.397),
}


def predictions_text(answers: dict, *, explain: dict | None = None, dtype: str = "float32") -> str:
    lines = [f'dtype = "{dtype}"']
    for name, (naive_nan, stable_nan, ce) in answers.items():
        lines += [
            "",
            f'[cases."{name}"]',
            f"naive_nan = {str(naive_nan).lower()}",
            f"stable_nan = {str(stable_nan).lower()}",
            f"ce = {ce}",
        ]
        if explain and name in explain:
            lines.append(f'explain = "{explain[name]}"')
    return "\n".join(lines) + "\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def battery_run(out: Path, *extra: str) -> dict:
    assert cli.main(["battery", "--out", str(out), "-q", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@contextlib.contextmanager
def lab_modules(directory: Path):
    """naive, stable and compare of ``directory``, imported as ``python compare.py`` imports them there."""
    saved = {k: sys.modules.pop(k) for k in ("naive", "stable") if k in sys.modules}
    flag = sys.dont_write_bytecode
    sys.path.insert(0, str(directory))
    try:
        compare = runpy.run_path(str(directory / "compare.py"), run_name="lab_compare")
        yield sys.modules["naive"], sys.modules["stable"], compare
    finally:
        sys.path.remove(str(directory))
        for k in ("naive", "stable"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        sys.dont_write_bytecode = flag


def write_lab(directory: Path, dtype: str = "float32", seed: int = 42) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in _results.LAB_FILES:
        (directory / name).write_bytes(_results.lab_file(name, dtype=dtype, seed=seed))
    return directory


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    out = tmp_path_factory.mktemp("f32")
    return out, battery_run(out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab's naive and stable modules, as written into an experiment directory."""
    with lab_modules(write_lab(tmp_path_factory.mktemp("lab"))) as (naive, stable, compare):
        yield naive, stable, compare


@pytest.fixture(scope="module", params=list(DTYPES))
def by_dtype(request, tmp_path_factory):
    """compare.py's results at each dtype, run in this process (the CLI runs the same file in a new one)."""
    directory = write_lab(tmp_path_factory.mktemp(request.param), request.param)
    with lab_modules(directory) as (naive, stable, compare):
        yield DTYPES[request.param], compare["battery"](), naive, stable


def _exp_range(dtype):
    """Logits whose exp is finite and nonzero in ``dtype``: (log smallest subnormal, log max)."""
    fi = ml_dtypes.finfo(dtype)
    return math.log(float(fi.smallest_subnormal)), math.log(float(fi.max))


def f32_ulps(got: float, exact: float) -> float:
    spacing = float(np.spacing(np.float32(abs(exact))))
    return abs(got - exact) / spacing


# --------------------------------------------------------------------------
# The lab's own files
# --------------------------------------------------------------------------


class TestLabFiles:
    def test_battery_writes_all_seven_files_and_the_template(self, f32):
        out, _ = f32
        assert sorted(p.name for p in out.iterdir()) == sorted([*battery.FILES, battery.TEMPLATE])
        assert len(battery.FILES) == 7

    def test_naive_py_is_lab01_block_a(self):
        text = _results.lab_file("naive.py", dtype="float32", seed=42).decode()
        for body in (
            "def naive_softmax(x):\n    e = np.exp(x)\n    return e / e.sum()",
            "def naive_log_sum_exp(x):\n    return np.log(np.exp(x).sum())",
            "def naive_cross_entropy(x, y):\n    return -np.log(naive_softmax(x)[y])",
            "def naive_log_softmax(x):\n    return np.log(np.exp(x) / np.exp(x).sum())",
        ):
            assert body in text

    @pytest.mark.parametrize("name", ["naive.py", "stable.py"])
    def test_pure_numpy(self, name):
        tree = ast.parse(_results.lab_file(name, dtype="float32", seed=42))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported == {"numpy"}

    def test_stable_py_is_short_and_states_its_all_neg_inf_choice(self):
        text = _results.lab_file("stable.py", dtype="float32", seed=42).decode()
        assert len(text.splitlines()) <= 80
        doc = ast.get_docstring(ast.parse(text))
        assert "all ``-inf``" in doc and "all\nzeros" in doc and "log_softmax\ngives ``-inf``" in doc

    def test_compare_py_holds_the_labs_cases(self, lab):
        _, _, compare = lab
        assert [(n, list(z)) for n, z in compare["test_cases"]] == [(c.name, list(c.logits)) for c in SOFTMAX_CASES]
        assert [tuple(z) for z in compare["lab02_inputs"]] == list(LAB02_INPUTS)
        assert [(n, tuple(z), t, s["unfused_ce"], s["stable_ce"]) for n, z, t, s in compare["break_rows"]] == [
            (r.name, r.logits, r.target, r.seed_unsafe, r.seed_safe) for r in BREAK_ROWS
        ]
        assert compare["Y"] == 1 and compare["SCHEMA"] == _results.SCHEMA

    def test_compare_py_carries_the_runs_dtype_and_seed(self):
        text = _results.lab_file("compare.py", dtype="bfloat16", seed=7).decode()
        assert 'DTYPE = "bfloat16"' in text and "\nSEED = 7 " in text

    def test_python_compare_py_rewrites_identical_results_json(self, f32, tmp_path):
        copy = tmp_path / "copy"
        shutil.copytree(f32[0], copy)
        (copy / "results.json").unlink()
        done = subprocess.run([sys.executable, "compare.py"], cwd=copy, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (copy / "results.json").read_bytes() == (f32[0] / "results.json").read_bytes()
        assert "large positive" in done.stdout and "stop conditions" in done.stdout
        assert not (copy / "__pycache__").exists()

    def test_learners_stable_py_is_kept_and_run(self, tmp_path, capsys):
        out = tmp_path / "out"
        assert run(capsys, "battery", "--out", str(out), "-q")[0] == 0
        broken = (out / "stable.py").read_text().replace("z = x - np.where(np.isfinite(m), m, 0)", "z = x")
        assert broken != (out / "stable.py").read_text()
        (out / "stable.py").write_text(broken)  # the max trick removed: stable.py is now naive
        code, stdout, _ = run(capsys, "battery", "--out", str(out), "-q", "--force")
        assert code == 0 and "kept your stable.py" in stdout
        assert (out / "stable.py").read_text() == broken
        results = json.loads((out / "results.json").read_text())
        assert "large positive" in results["stop_conditions"]["stable_nan"]["cases"]
        assert "your own stable.py" in (out / "README.md").read_text()

    def test_stable_py_that_raises_is_one_line(self, tmp_path, capsys):
        out = write_lab(tmp_path / "out")
        (out / "stable.py").write_text("raise RuntimeError('my bug')\n")
        code, _, err = run(capsys, "battery", "--out", str(out), "-q", "--force")
        one_line_error(code, err, "compare.py failed", "my bug", "python compare.py")


class TestStablePy:
    """The model answer: 1-D and batched, -inf entries, the all -inf row, every dtype, SciPy parity."""

    @pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
    def test_batched_equals_row_by_row_and_keeps_the_dtype(self, lab, rng, name):
        _, stable, _ = lab
        x = (rng.normal(0, 3, size=(4, 7)) + [[0], [200], [-300], [50]]).astype(DTYPES[name])
        for fn in (stable.stable_softmax, stable.log_softmax, stable.log_sum_exp):
            batched = fn(x)
            assert batched.dtype == x.dtype
            for i in range(len(x)):
                np.testing.assert_array_equal(batched[i], fn(x[i]))
        y = np.array([0, 3, 6, 2])
        np.testing.assert_array_equal(
            stable.stable_cross_entropy(x, y), [stable.stable_cross_entropy(x[i], y[i]) for i in range(4)]
        )

    def test_neg_inf_entries_get_exactly_zero(self, lab):
        _, stable, _ = lab
        x = np.array([[1.0, -np.inf, 3.0], [-np.inf, -np.inf, -np.inf]])
        p, lp = stable.stable_softmax(x), stable.log_softmax(x)
        assert p[0, 1] == 0.0 and lp[0, 1] == -np.inf and np.isfinite(p[0]).all()
        np.testing.assert_array_equal(p[1], [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(lp[1], [-np.inf] * 3)
        np.testing.assert_array_equal(stable.log_sum_exp(x), [np.logaddexp(1.0, 3.0), -np.inf])
        np.testing.assert_array_equal(stable.stable_cross_entropy(x, np.array([1, 0])), [np.inf, np.inf])

    def test_scipy_parity_float64(self, lab, rng):
        special = pytest.importorskip("scipy.special")
        _, stable, _ = lab
        for x in (rng.normal(0, 3, (16, 5)), rng.normal(0, 1e4, (8, 600)), np.array([1000.0, 1001, 1002])):
            np.testing.assert_allclose(stable.log_sum_exp(x), special.logsumexp(x, axis=-1), rtol=1e-12)
            np.testing.assert_allclose(stable.log_softmax(x), special.log_softmax(x, axis=-1), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(stable.stable_softmax(x), special.softmax(x, axis=-1), rtol=0, atol=1e-15)

    def test_fp32_break_within_8_ulp_of_mpmath(self, f32):
        # stable.py works in float32, so its result is not correctly rounded: see the module docstring for 8 ulp.
        for spec, row in zip(BREAK_ROWS, f32[1]["fp32_break"]["rows"], strict=True):
            with mpmath.workdps(50):
                xs = [mpmath.mpf(float(np.float32(v))) for v in spec.logits]
                exact = float(mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xs)) - xs[spec.target])
            assert f32_ulps(float(row["stable_ce"]), exact) <= ULPS
            assert row["argmin_logit"] == int(np.argmin(spec.logits))
        huge = f32[1]["fp32_break"]["rows"][1]
        assert huge["stable_ce"] == 142.0  # 1 + exp(-52) + ... rounds to 1 in float32, so log(s) = 0 exactly
        assert huge["unfused_ce"] == "inf" and huge["fails"] and huge["target_probability"] == 0.0


# --------------------------------------------------------------------------
# What results.json says
# --------------------------------------------------------------------------


class TestStopConditions:
    """Lab 01: naive NaN on at least two cases, stable on none, sums within n * eps."""

    def test_stable_never_nan(self, by_dtype):
        _, r, _, _ = by_dtype
        assert [c["name"] for c in r["softmax"] if c["stable"]["has_nan"]] == []
        assert r["stop_conditions"]["stable_nan"]["met"]

    def test_stable_sums_within_n_eps(self, by_dtype):
        dtype, r, _, stable = by_dtype
        eps = float(ml_dtypes.finfo(dtype).eps)
        for case, row in zip(SOFTMAX_CASES, r["softmax"], strict=True):
            p = np.asarray(stable.stable_softmax(np.asarray(case.logits).astype(dtype)), np.float64)
            assert row["stable"]["sum"] == math.fsum(p)  # the reported sum is the exact one
            assert abs(math.fsum(p) - 1.0) <= p.size * eps, case.name
        assert r["stop_conditions"]["stable_sums"]["met"]

    @pytest.mark.parametrize("name", ["float16", "bfloat16"])
    def test_16_bit_sums_within_one_rounding(self, name, tmp_path):
        # stable.py widens 16-bit input to float32 and rounds each p_i once: p_i is within half an ulp of
        # the float32 value, which is within 8 float32 ulp of the exact one, i.e. (eps16 / 2) * (1 + 2**-9)
        # relative for float16 (2**-10 / 2**-23 = 2**13 float32 ulp per float16 ulp); half a subnormal below.
        dtype = DTYPES[name]
        with lab_modules(write_lab(tmp_path, name)) as (_, stable, _):
            fi = ml_dtypes.finfo(dtype)
            for case in SOFTMAX_CASES:
                p = np.asarray(stable.stable_softmax(np.asarray(case.logits).astype(dtype)), np.float64)
                bound = float(fi.eps) / 2 * (1 + 2.0**-7) + p.size * float(fi.smallest_subnormal) / 2
                assert abs(math.fsum(p) - 1.0) <= bound, case.name

    @pytest.mark.parametrize("name", ["float16", "bfloat16"])
    def test_naive_nan_on_two_cases_where_the_exponent_range_is_narrow(self, name, tmp_path):
        with lab_modules(write_lab(tmp_path, name)) as (_, _, compare):
            r = compare["battery"]()
        assert len([c for c in r["softmax"] if c["naive"]["has_nan"]]) >= 2
        assert r["stop_conditions"]["naive_nan"]["met"]

    def test_naive_nan_exactly_where_exp_leaves_its_range(self, by_dtype):
        # In float32 only the overflow case breaks: exp(-100) = 3.7e-44 survives
        # as a subnormal, so the lab's "large negative: 0/0" needs a narrower dtype.
        dtype, r, _, _ = by_dtype
        lo, hi = _exp_range(dtype)
        expect = []
        for case in SOFTMAX_CASES:
            m = max(case.logits)
            assert abs(m - hi) > 1 and abs(m - lo) > 1, "a case too close to a threshold tests nothing"
            if m > hi or m < lo:
                expect.append(case.name)
        assert r["stop_conditions"]["naive_nan"]["softmax_cases"] == expect
        assert r["nan_by_dtype"][dtype.name]["naive_nan"] == expect

    def test_stop_condition_counts_every_case_of_results_json(self, by_dtype):
        # Lab 02's inputs are in results.json too: [1000, 1001, 1002] overflows and
        # [-1000, -999, -998] underflows to 0/0 in every dtype, so the lab's first stop
        # condition holds at float32 as well, where only one lab 01 case breaks.
        dtype, r, _, _ = by_dtype
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
    def test_flags_match_naive_py(self, by_dtype):
        dtype, r, naive, _ = by_dtype
        for case, row in zip(SOFTMAX_CASES, r["softmax"], strict=True):
            with np.errstate(all="ignore"):  # the naive formula's warnings are compare.py's to record
                p = np.asarray(naive.naive_softmax(np.asarray(case.logits).astype(dtype)), np.float64)
            assert row["naive"]["has_nan"] == bool(np.isnan(p).any())

    def test_relative_difference_where_naive_is_finite(self, f32):
        row = next(c for c in f32[1]["softmax"] if c["name"] == "large positive")
        naive_out = [float(v) for v in row["naive"]["output"]]
        stable_out = [float(v) for v in row["stable"]["output"]]
        for a, b, d in zip(naive_out, stable_out, row["rel_diff"], strict=True):
            assert d is None if math.isnan(a) else float(d) == abs(a - b) / abs(b)
        assert row["rel_diff_compared"] == sum(not math.isnan(a) for a in naive_out)

    def test_naive_warnings_recorded_not_raised(self, f32):
        # pytest turns warnings into errors: reaching here means none leaked.
        r = f32[1]
        row = next(c for c in r["softmax"] if c["name"] == "large positive")
        assert any("overflow encountered in exp" in w for w in row["naive"]["warnings"])
        assert row["stable"]["warnings"] == []
        big = next(x for x in r["lab02"] if x["input"] == [1000.0, 1001.0, 1002.0])["logsumexp"]
        assert big["naive"] == "inf" and any("overflow" in w for w in big["naive_warnings"])

    def test_lab02_stable_finite_and_shift_invariant(self, f32):
        # [1000, 1001, 1002] and [-1000, -999, -998] minus their max are [1, 2, 3] minus its max, exactly.
        rows = {tuple(x["input"]): x for x in f32[1]["lab02"]}
        base = rows[(1.0, 2.0, 3.0)]["log_softmax"]["stable"]
        for z in [(1000.0, 1001.0, 1002.0), (-1000.0, -999.0, -998.0)]:
            assert rows[z]["log_softmax"]["stable"] == base
            assert all(math.isfinite(float(rows[z][f]["stable"])) for f in ("logsumexp", "cross_entropy"))

    def test_ce_undefined_for_a_single_class(self, f32):
        row = next(c for c in f32[1]["softmax"] if c["name"] == "single element")
        assert row["cross_entropy"]["defined"] is False and row["cross_entropy"]["stable"] is None

    def test_all_neg_inf_row_follows_stable_pys_stated_choice(self, f32):
        a = f32[1]["all_neg_inf"]
        assert a["stable_softmax"]["value"] == [0.0, 0.0, 0.0] and a["log_sum_exp"]["value"] == "-inf"
        assert a["log_softmax"]["value"] == ["-inf"] * 3 and a["stable_cross_entropy"]["value"] == "inf"
        assert all(a[k]["warnings"] == [] for k in ("stable_softmax", "log_sum_exp", "log_softmax"))
        assert a["batch_softmax"][1] == [0.0, 0.0, 0.0]

    def test_scipy_parity_passes(self, f32):
        p = f32[1]["scipy_parity"]
        assert p["available"] and p["passed"] and len(p["rows"]) == len(SOFTMAX_CASES) + 5

    def test_without_scipy_it_says_so(self, lab, monkeypatch):
        for name in ("scipy", "scipy.special"):
            monkeypatch.setitem(sys.modules, name, None)
        r = lab[2]["battery"]()
        assert r["scipy_parity"]["available"] is False and "SciPy" in r["scipy_parity"]["reason"]
        assert r["fp32_break"]["scipy_ce"] is None

    def test_strict_json(self, f32):
        def refuse(token):
            raise AssertionError(f"bare {token} in results.json")

        json.loads((f32[0] / "results.json").read_text(), parse_constant=refuse)


class TestPitfalls:
    """Each pitfall the labs name, reproduced on battery cases, with what exp's range says must happen."""

    def test_batched_max_breaks_the_rows_far_below_the_batch_max(self, by_dtype):
        dtype, r, _, _ = by_dtype
        b = r["pitfalls"]["batched_max"]
        lo, _ = _exp_range(dtype)
        # shifted by the batch's max, 92, a row's largest term is exp(max(row) - 92): 0 below exp's range,
        # so the row is 0/0. float32: only large negative (exp(-192)); float64: none; 16 bits: all but one.
        rows = [c for c in SOFTMAX_CASES if len(c.logits) == 5]
        expect = [c.name for c in rows if max(c.logits) - 92 < lo]
        assert b["batch_max"] == 92.0 and b["one_max_nan"] == expect
        assert (expect == ["large negative"]) == (dtype.name in ("float32", "bfloat16"))  # the same exponent range
        assert b["keepdims_nan"] == [] and b["keepdims_equals_rows_alone"]

    def test_without_m_off_by_exactly_m(self, f32):
        for row in f32[1]["pitfalls"]["add_back_m"]:
            stable, without, m = (float(row[k]) for k in ("stable", "without_m", "m"))
            assert abs(stable - without - m) <= float(np.spacing(np.float32(stable)))
            assert without < 1.0 < m

    def test_log0_times_0(self, f32):
        huge, masked = f32[1]["pitfalls"]["log0_times_0"]
        assert huge["onehot_log_of_softmax"] == "nan" and huge["onehot_log_softmax"] == 0.0
        assert huge["log_softmax"][3] == -142.0
        assert masked["onehot_log_softmax"] == "nan" and masked["log_softmax"][1] == "-inf"
        assert math.isfinite(masked["gather"]) and masked["gather"] > 0

    def test_axis_semantics_and_per_row_sanity(self, f32):
        a = f32[1]["pitfalls"]["axis"]
        naive = [float(s) for s in a["naive_row_sums"]]
        assert abs(sum(naive) - 1.0) < 1e-6 and all(s < 0.95 for s in naive)  # one normalisation for two rows
        assert all(abs(float(s) - 1.0) <= 3 * 2.0**-23 for s in a["stable_row_sums"])
        sane = a["per_row_sanity"]
        assert sane["stable"]["one_row_sum"] == sane["stable"]["two_rows_sum_halved"]
        # normalised over [z, z], every entry loses log 2: three entries, so the sum drops by 3 log 2
        gap = sane["naive"]["one_row_sum"] - sane["naive"]["two_rows_sum_halved"]
        assert abs(gap - 3 * math.log(2)) < 1e-5

    def test_report_has_a_paragraph_per_pitfall(self, f32):
        text = (f32[0] / "README.md").read_text()
        section = text[text.index("## 9. The labs' pitfalls") : text.index("## 10.")]
        for title in (
            "`-inf` handling",
            "batched max needs keepdims",
            "forgetting to add back m",
            "the masked label",
            "the RuntimeWarning is diagnostic",
            "log(0) · 0 = NaN",
            "axis semantics",
            "cross-entropy is fused",
        ):
            assert f"{title}.**" in section, title
        assert "large negative" in section and "huge" in section and "[1000, 1001, 1002]" in section


class TestLibraryColumn:
    def test_library_values_are_correctly_rounded(self, f32):
        # what makes the report's library column the same on every CPU
        lib = _results.library_view(f32[1])
        for case in SOFTMAX_CASES:
            xs = [float(np.float32(v)) for v in case.logits]
            # rounded to float32 through float64, whose 29 extra bits leave a double-rounding tie practically
            # impossible (and the assertion would show one)
            with mpmath.workdps(60):
                terms = [mpmath.exp(mpmath.mpf(v)) for v in xs if v != -math.inf]
                lse = mpmath.log(mpmath.fsum(terms))
                ce = lse - xs[1] if len(xs) > 1 and xs[1] != -math.inf else None
                exact_lse = float(np.float32(float(lse)))
                exact_ce = None if ce is None else float(np.float32(float(ce)))
            assert lib["cases"][case.name]["logsumexp"] == exact_lse, case.name
            if ce is not None:
                assert lib["cases"][case.name]["cross_entropy"] == exact_ce, case.name

    def test_report_shows_the_tiny_loss_stable_py_rounds_away(self, f32):
        text = (f32[0] / "README.md").read_text()
        row = next(line for line in text.splitlines() if line.startswith("| large positive | `cross_entropy`"))
        assert "| 0 | 3.45909965e-39 |" in row

    def test_same_with_or_without_the_compiled_extra(self, f32, monkeypatch):
        with_kernels = _results.library_view(f32[1])
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
        assert _results.library_view(f32[1]) == with_kernels


class TestPng:
    @staticmethod
    def pixels(png: bytes, color: str) -> np.ndarray:
        import io

        import matplotlib.image

        img = matplotlib.image.imread(io.BytesIO(png))[..., :3]
        rgb = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return np.all(np.abs(img - rgb) < 0.02, axis=-1)

    def test_naive_half_red_and_stable_half_not(self, f32):
        is_red = self.pixels((f32[0] / "softmax_break.png").read_bytes(), NAN_COLOR)
        h, w = is_red.shape
        band = is_red[int(0.1 * h) : int(0.9 * h)]  # the rows: no titles, no legend
        naive_side, stable_side = band[:, int(0.16 * w) : int(0.52 * w)], band[:, int(0.56 * w) : int(0.92 * w)]
        assert naive_side.sum() > 2000  # the NaN cell and frame of "large positive"
        assert stable_side.sum() == 0

    def test_legend_shows_only_marks_that_appear(self, f32, by_dtype):
        # float32: no inf cell and no row with a wrong sum, so neither colour is anywhere, legend included
        f32_png = (f32[0] / "softmax_break.png").read_bytes()
        assert self.pixels(f32_png, INF_COLOR).sum() == 0 and self.pixels(f32_png, WRONG_COLOR).sum() == 0
        dtype, r, _, _ = by_dtype
        if dtype.name == "bfloat16":  # 600 ones add up to 256 in bfloat16: the naive row sums to 2.34
            assert self.pixels(softmax_break(r), WRONG_COLOR).sum() > 500

    def test_no_software_metadata(self, f32):
        data = (f32[0] / "softmax_break.png").read_bytes()
        assert data.startswith(b"\x89PNG") and b"Software" not in data and b"matplotlib" not in data


class TestDeterminism:
    def test_two_runs_byte_identical_except_manifest_time(self, tmp_path):
        out = tmp_path / "run"
        battery_run(out, "--force")
        first = {p.name: p.read_bytes() for p in out.iterdir()}
        battery_run(out, "--force")
        for name, data in first.items():
            if name != "manifest.json":
                assert (out / name).read_bytes() == data, name
        m1, m2 = json.loads(first["manifest.json"]), json.loads((out / "manifest.json").read_text())
        m1.pop("time"), m2.pop("time")
        assert m1 == m2


class TestManifest:
    def test_hashes_and_fields(self, f32):
        out = f32[0]
        m = json.loads((out / "manifest.json").read_text())
        for name, digest in m["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert set(m["files"]) == {*battery.FILES, battery.TEMPLATE} - {"manifest.json"}
        assert m["seed"] == 42 and m["dtype"] == "float32"
        assert {"python", "numpy", "stablesoftmax", "scipy"} <= set(m["versions"])
        assert m["git"] is None or len(m["git"]["commit"]) == 40
        assert m["command"].startswith("stablesoftmax battery --out ")
        assert "argv" not in m and m["platform"]["cpu"]["source"] in ("/proc/cpuinfo", "numpy", "unknown")

    def test_no_absolute_path_when_out_lies_under_the_current_directory(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "p.toml").write_text(predictions_text(LAB_SAMPLE))
        assert (
            run(capsys, "battery", "--out", str(tmp_path / "lab"), "-q", "--predictions", str(tmp_path / "p.toml"))[0]
            == 0
        )
        text = (tmp_path / "lab" / "manifest.json").read_text()
        assert str(tmp_path) not in text and sys.executable not in text
        m = json.loads(text)
        assert m["command"] == "stablesoftmax battery --out lab --dtype float32 --seed 42 --predictions p.toml"


# --------------------------------------------------------------------------
# Predictions: written before the run, all of them, and explained by the learner
# --------------------------------------------------------------------------


class TestPredictions:
    def test_template_has_empty_answers_and_is_refused(self, tmp_path, capsys):
        f = tmp_path / "predictions.toml"
        f.write_text(_predictions.template("float32", "stablesoftmax battery --out x"))
        with pytest.raises(stablesoftmax.InputFileError, match="8 of 8 cases are not filled in"):
            _predictions.load(f, "float32")
        code, _, err = run(capsys, "battery", "--out", str(tmp_path / "out"), "--predictions", str(f))
        line = one_line_error(code, err, "--predictions", "8 of 8 cases are not filled in")
        assert all(repr(c.name) in line for c in SOFTMAX_CASES)
        assert not (tmp_path / "out").exists()  # checked before anything is written

    def test_partly_filled_names_the_missing_cases(self, tmp_path):
        answers = dict(LAB_SAMPLE)
        del answers["verb vocabulary"]
        text = predictions_text(answers).replace("ce = 5.07", 'ce = ""')
        f = tmp_path / "p.toml"
        f.write_text(text)
        with pytest.raises(stablesoftmax.InputFileError) as exc:
            _predictions.load(f, "float32")
        msg = str(exc.value)
        assert "2 of 8 cases" in msg and "'mixed magnitudes' (ce)" in msg
        assert "'verb vocabulary' (the whole case)" in msg
        assert "'small magnitudes'" not in msg

    def test_lab_sample_diverges_where_the_lab_says(self, tmp_path, f32):
        f = tmp_path / "lab.toml"
        f.write_text(predictions_text(LAB_SAMPLE))
        found = {(d.case, d.field) for d in _predictions.divergences(_predictions.load(f, "float32"), f32[1])}
        # small: the seed's ~1.50 misses log(6.82) - 0.2 = 1.72 by more than 5 %
        # large positive: y = 1 is the max logit, CE ~ 0, not 91
        # large negative: exp(-100) is a float32 subnormal, no 0/0; CE = -100 - (-200) = 100, not 0
        assert found == {
            ("small magnitudes", "CE"),
            ("large positive", "CE"),
            ("large negative", "naive NaN?"),
            ("large negative", "CE"),
        }

    def test_report_leaves_the_explanations_to_the_learner(self, tmp_path, capsys):
        f = tmp_path / "lab.toml"
        f.write_text(predictions_text(LAB_SAMPLE, explain={"large negative": "exp(-100) is subnormal, not 0"}))
        out = tmp_path / "out"
        code, stdout, _ = run(capsys, "battery", "--out", str(out), "-q", "--predictions", str(f))
        assert code == 0
        text = (out / "README.md").read_text()
        section = text[text.index("## 3.") : text.index("## 4.")]
        assert 'Your explanation: "exp(-100) is subnormal, not 0"' in section
        assert section.count("*Not explained yet.*") == 2  # small magnitudes, large positive
        for automatic in ("lies inside exp's finite range", "the fused CE is logsumexp", "gradual underflow"):
            assert automatic not in text
        assert "not yet: large positive, small magnitudes" in stdout
        assert not (out / battery.TEMPLATE).exists()

    def test_ce_tolerance(self):
        ce = {"defined": True, "stable": 100.0}
        assert _predictions._ce_agrees(104.9, ce) and not _predictions._ce_agrees(105.1, ce)
        assert _predictions._ce_agrees(math.inf, {"defined": True, "stable": "inf"})
        assert _predictions._ce_agrees("undefined", {"defined": False, "stable": None})

    @pytest.mark.parametrize(
        "nested", ["a = " + "[" * 50_000 + "]" * 50_000, "a = " + "{b = " * 20_000 + "1" + "}" * 20_000]
    )
    def test_deep_nesting_is_one_line(self, tmp_path, capsys, nested):
        f = tmp_path / "deep.toml"
        f.write_text(nested + "\n")
        code, _, err = run(capsys, "battery", "--out", str(tmp_path / "out"), "--predictions", str(f))
        one_line_error(code, err, "--predictions", "too deeply")

    def test_special_files_are_refused_unread(self, tmp_path):
        fifo = tmp_path / "fifo.toml"
        os.mkfifo(fifo)
        for path, kind in ((Path("/dev/zero"), "character device"), (fifo, "FIFO")):
            # a new process with a timeout: reading either of these whole would hang or exhaust memory
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "stablesoftmax",
                    "battery",
                    "--out",
                    str(tmp_path / "o"),
                    "--predictions",
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            one_line_error(done.returncode, done.stderr, "--predictions", kind)

    def test_large_and_binary_files(self, tmp_path):
        big = tmp_path / "big.toml"
        big.write_bytes(b"# " + b"x" * _predictions.MAX_BYTES + b"\n")
        with pytest.raises(stablesoftmax.InputFileError, match="over the limit"):
            _predictions.load(big, "float32")
        binary = tmp_path / "bin.toml"
        binary.write_bytes(b'dtype = "\xff\xfe"\n')
        with pytest.raises(stablesoftmax.InputFileError, match="not UTF-8"):
            _predictions.load(binary, "float32")

    def test_predictions_cannot_be_an_output(self, tmp_path, capsys):
        out = tmp_path / "out"
        assert run(capsys, "battery", "--out", str(out), "-q")[0] == 0
        (out / "README.md").write_text(predictions_text(LAB_SAMPLE))  # a valid predictions file, in the way
        code, _, err = run(capsys, "battery", "--out", str(out), "--force", "--predictions", str(out / "README.md"))
        one_line_error(code, err, "is the README.md this run writes")
        assert (out / "README.md").read_text() == predictions_text(LAB_SAMPLE)


# --------------------------------------------------------------------------
# The command line: --template, --out, repeated flags, hints
# --------------------------------------------------------------------------


class TestCommandLine:
    def test_template_writes_only_the_template(self, tmp_path, capsys):
        out = tmp_path / "lab"
        code, stdout, _ = run(capsys, "battery", "--out", str(out), "--template")
        assert code == 0 and [p.name for p in out.iterdir()] == [battery.TEMPLATE]
        assert f"stablesoftmax battery --out {out} --predictions {out / battery.TEMPLATE}" in stdout
        assert "--force" not in stdout
        code, _, err = run(capsys, "battery", "--out", str(out), "--template", "--force")
        line = one_line_error(code, err, "already exists", "delete it")
        assert "--force" not in line

    def test_empty_out_is_refused(self, capsys, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        code, _, err = run(capsys, "battery", "--out", "")
        one_line_error(code, err, "--out ''", "empty")
        assert list(tmp_path.iterdir()) == []

    def test_repeated_dtype_last_wins(self, capsys, tmp_path):
        out = tmp_path / "lab"
        code = run(capsys, "battery", "--out", str(out), "--template", "--dtype", "float64", "--dtype", "float16")[0]
        assert code == 0
        assert 'dtype = "float16"' in (out / battery.TEMPLATE).read_text()

    def test_every_hint_carries_the_same_out(self, f32, capsys, tmp_path):
        out = tmp_path / "hints"
        code, stdout, _ = run(capsys, "battery", "--out", str(out), "-q")
        texts = [stdout, (out / battery.TEMPLATE).read_text(), (out / "README.md").read_text()]
        commands = [c for t in texts for c in re.findall(r"stablesoftmax battery --[^\n`]*", t)]
        assert len(commands) >= 3
        for c in commands:
            assert f"--out {out}" in c and "--predictions" in c, c

    def test_following_every_hint_changes_no_tracked_file(self, tmp_path, monkeypatch, capsys):
        """In a repository holding the committed example: the README's lab steps, then every hint printed."""
        repo = tmp_path / "repo"
        shutil.copytree(EXAMPLE, repo / "experiments" / EXAMPLE.name)
        (repo / ".gitignore").write_text("/out/\n")
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "example"]):
            subprocess.run(git + args, check=True, capture_output=True)
        monkeypatch.chdir(repo)
        steps = readme_lab_steps()
        assert [s[:3] for s in steps] == [
            ["stablesoftmax", "battery", "--template"],
            ["stablesoftmax", "battery", "--out"],
        ]
        code, stdout, _ = run(capsys, *steps[0][1:])
        assert code == 0
        template = Path(battery.DEFAULT_OUT) / battery.TEMPLATE
        template.write_text((EXAMPLE / "predictions.toml").read_text())  # the learner fills it in
        hints = [shlex.split(h) for h in re.findall(r"^  (stablesoftmax battery .*)$", stdout, re.M)]
        assert hints == [steps[1]]
        code, stdout, _ = run(capsys, *steps[1][1:], "-q")
        assert code == 0
        # what the CLI suggests from here: rerun hints, and the way out of a refusal over tracked files
        code, _, err = run(capsys, "battery", "--out", str(EXAMPLE.relative_to(REPO)))
        refusal = one_line_error(code, err, "git tracks", f"--out {battery.DEFAULT_OUT}")
        assert "--force" not in refusal
        code, _, err = run(capsys, "battery", "--out", battery.DEFAULT_OUT, "-q")
        one_line_error(code, err, "pass --force")
        assert run(capsys, "battery", "--out", battery.DEFAULT_OUT, "-q", "--force")[0] == 0
        code, _, err = run(capsys, "battery", "--template")
        assert "--force" not in one_line_error(code, err, "already exists")
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
        assert status.stdout == ""


def readme_lab_steps() -> list[list[str]]:
    """The battery commands of the README's lab quick start, in order."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The lab, step by step") :]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line[2:].split("#")[0]) for line in block.splitlines() if line.startswith("$ stablesoftmax")]


# --------------------------------------------------------------------------
# The committed worked example
# --------------------------------------------------------------------------

PROBABILITY_KEYS = {
    "output",
    "sum",
    "min",
    "max",
    "target_probability",
    "smallest_probability",
    "smallest_probability_per_batch",
    "batch_softmax",
    "naive_row_sums",
    "stable_row_sums",
}
ERROR_KEYS = {
    "rel_diff",
    "max_rel_diff",
    "softmax_max_abs_diff",
    "logsumexp_rel_diff",
    "log_softmax_max_rel_diff",
    "cross_entropy_rel_diff",
}
EPS_KEYS = {"sum_error_eps", "worst_error_eps"}


def results_differences(a, b, dtype: str, path: str = "") -> list[str]:
    """Where two results.json disagree beyond what a different CPU's exp and log explain (module docstring)."""
    key = path.rsplit(".", 1)[-1].split("[")[0]
    if path in (".scipy_parity",):
        dtype = "float64"
    if path == ".fp32_break":
        dtype = "float32"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        d = a.get("dtype", dtype) if path.startswith(".pitfalls.log0_times_0") else dtype
        return [x for k in a for x in results_differences(a[k], b[k], d, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if "warnings" in path:  # underflow flags are not set alike by every exp; the others are IEEE's
            a, b = ([w for w in v if "underflow" not in w] for v in (a, b))
        if len(a) != len(b):
            return [f"{path}: {a} != {b}"]
        return [
            x
            for i, (u, v) in enumerate(zip(a, b, strict=True))
            for x in results_differences(u, v, dtype, f"{path}[{i}]")
        ]
    if key == "worst_case":  # the argmax of sum_error_eps / n, compared above: close rows may swap
        return []
    if type(a) is not float or type(b) is not float or not (math.isfinite(a) and math.isfinite(b)):
        return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]
    fi = ml_dtypes.finfo(DTYPES[dtype])
    eps = float(fi.eps)
    if key in EPS_KEYS:
        ok = abs(a - b) <= ULPS
    elif key in ERROR_KEYS:
        ok = abs(a - b) <= 2 * ULPS * eps
    elif key in PROBABILITY_KEYS:
        ok = abs(a - b) <= ULPS * eps * max(abs(a), abs(b)) + ULPS * float(fi.smallest_subnormal)
    else:  # log-domain values: a relative error r in a sum is an absolute error r in its log
        ok = abs(a - b) <= ULPS * eps * max(1.0, abs(a), abs(b))
    return [] if ok else [f"{path}: {a!r} != {b!r} (beyond {ULPS} ulp of {dtype})"]


def other_simd_targets() -> list[str]:
    """NPY_DISABLE_CPU_FEATURES values that make NumPy here use older SIMD code, as on an older CPU.

    Disabling a target disables those above it too: on an AVX-512 machine with NumPy 2.4 the values
    include "X86_V4 AVX512_ICL AVX512_SPR" (what an AVX2 machine runs); here, "X86_V3".
    """
    found = _manifest.cpu()["numpy_simd"] or []
    umath = _manifest._umath()
    dispatch = [f for f in getattr(umath, "__cpu_dispatch__", []) if f in found]
    return [" ".join(dispatch[i:]) for i in range(len(dispatch))]


@pytest.fixture(scope="module")
def committed():
    if not (EXAMPLE / "results.json").exists():
        pytest.skip("the worked example is not generated yet")
    return json.loads((EXAMPLE / "results.json").read_text()), json.loads((EXAMPLE / "manifest.json").read_text())


class TestWorkedExample:
    def test_holds_every_file_and_the_lab_files_are_current(self, committed):
        results, m = committed
        assert {p.name for p in EXAMPLE.iterdir()} == {*battery.FILES, battery.TEMPLATE}
        for name in _results.LAB_FILES:
            assert (EXAMPLE / name).read_bytes() == _results.lab_file(name, dtype=m["dtype"], seed=m["seed"]), name

    def test_readme_is_the_report_of_its_results_json(self, committed):
        results, m = committed
        preds = _predictions.load(EXAMPLE / "predictions.toml", m["dtype"])
        text = _report.render(results, preds, _results.library_view(results), lab_state=m["lab_files"], rerun="")
        assert text == (EXAMPLE / "README.md").read_text()  # and so it suggests no command over its own files

    def test_regenerates(self, committed, tmp_path):
        results, m = committed
        shutil.copy(EXAMPLE / "predictions.toml", tmp_path / "predictions.toml")
        out = tmp_path / "out"
        fresh = battery_run(
            out, "--dtype", m["dtype"], "--seed", str(m["seed"]), "--predictions", str(tmp_path / "predictions.toml")
        )
        assert results_differences(results, fresh, m["dtype"]) == []
        if _manifest.cpu()["numpy_simd"] == m["platform"]["cpu"]["numpy_simd"]:
            assert (out / "results.json").read_bytes() == (EXAMPLE / "results.json").read_bytes()

    @pytest.mark.parametrize("disabled", [""] + other_simd_targets())
    def test_compare_py_in_a_copy_on_other_simd_targets(self, committed, tmp_path, disabled):
        results, m = committed
        copy = tmp_path / "copy"
        shutil.copytree(EXAMPLE, copy)
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled}
        done = subprocess.run(
            [sys.executable, "compare.py"], cwd=copy, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0 and "You cannot disable" not in done.stderr, done.stderr
        assert results_differences(results, json.loads((copy / "results.json").read_text()), m["dtype"]) == []

    def test_tolerance_catches_a_real_change(self, committed):
        results, m = committed
        changed = json.loads(json.dumps(results))
        row = next(c for c in changed["softmax"] if c["name"] == "small magnitudes")
        row["stable"]["output"][0] *= 1 + 20 * 2.0**-23
        row["cross_entropy"]["stable"] += 1e-5
        assert len(results_differences(results, changed, m["dtype"])) == 2

    def test_no_absolute_path_in_any_committed_file(self):
        for path in (REPO / "experiments").rglob("*"):
            if path.suffix in (".json", ".md", ".toml", ".py", ".csv"):
                text = path.read_text()
                for bad in ("/work/", "/home/", "/tmp/", "/Users/", "/usr/", "C:\\"):
                    assert bad not in text, (path, bad)


def test_lab_stands_on_the_public_api():
    """The files of this lab import from stablesoftmax only the names in its __all__."""
    public = set(stablesoftmax.__all__)
    for name in ("battery", "bench", "_report", "_predictions", "_plot", "_results", "_cases", "_outdir", "_manifest"):
        tree = ast.parse((LAB_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module is None and {a.name for a in node.names} <= public, (name, ast.dump(node))
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("stablesoftmax"):
                assert node.module in ("stablesoftmax", "stablesoftmax.lab") or node.module.startswith(
                    "stablesoftmax.lab."
                ), (name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("stablesoftmax._") for a in node.names), name
