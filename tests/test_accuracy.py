"""The accuracy goals, held over the mpmath battery (issue 2, item 5).

Every function in every dtype is measured against mpmath at 50 digits over
:func:`tests.accuracy_harness.battery`, each row cast to the dtype first, on
NumPy arrays and on CPU torch tensors (where torch is installed), each on
the compiled and on the pure-NumPy path. The goals live in
``tests/helpers.py`` (``ULP_GOALS``). The second half checks the measure
itself: that it sees a wrong answer when there is one.
"""

from __future__ import annotations

import doctest
import functools
import importlib.util
import math

import mpmath
import numpy as np
import pytest

import stablesoftmax
from stablesoftmax import naive
from tests import accuracy_harness as accuracy
from tests.accuracy_harness import AccuracyRow, Case, Implementation
from tests.helpers import DTYPE_IDS, FLOAT_DTYPES, ulp, ulp_error, ulp_goal

pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

OURS = accuracy.implementation("stablesoftmax")

# The array types stablesoftmax is measured on: NumPy arrays, and CPU torch tensors of the same dtypes.
BACKENDS = [
    "stablesoftmax",
    pytest.param(
        "stablesoftmax-torch",
        marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed"),
    ),
]


@functools.cache
def _row(backend: str, function: str, dtype_name: str, path: str) -> AccuracyRow:
    """One measurement per backend, pair and path, shared by the goal and the warning tests.

    ``path`` is part of the key: the kernels and the NumPy fallback are two
    measurements, never one reused for the other.
    """
    return accuracy.measure(accuracy.implementation(backend), function, dtype_name)


def _measured(backend: str, function: str, dtype: np.dtype, path: str) -> AccuracyRow:
    row = _row(backend, function, dtype.name, path)
    if row.note:
        pytest.skip(row.note)
    return row


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("function", accuracy.FUNCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
class TestGoals:
    def test_within_goal(self, backend, function, dtype, each_path):
        row = _measured(backend, function, dtype, each_path)
        goal = ulp_goal(function, dtype)
        assert row.max_ulp <= goal, (
            f"{backend} {function} {dtype}: {row.max_ulp:.3g} ulp > goal {goal}; worst: {row.detail}"
        )

    def test_no_warnings(self, backend, function, dtype, each_path):
        # Correctly rounded results (an overflow to -inf included) come without a RuntimeWarning.
        row = _measured(backend, function, dtype, each_path)
        assert row.warned == "", f"{backend} {function} {dtype} warned on case {row.warned}"


def _ours_nudged(steps: int) -> Implementation:
    """stablesoftmax with every finite result moved ``steps`` ulps toward zero."""

    def call(function: str, case: Case) -> np.ndarray:
        out = OURS.call(function, case)
        for _ in range(steps):
            out = np.where(np.isfinite(out), np.nextafter(out, out.dtype.type(0)), out)
        return out.astype(case.x.dtype)

    return Implementation("nudged", call, OURS.missing)


def _naive() -> Implementation:
    def call(function: str, case: Case) -> np.ndarray:
        return np.asarray(getattr(naive, function)(case.masked()))

    return Implementation(
        "naive", call, lambda function, dtype: "not measured" if function == "cross_entropy" else None
    )


class TestMeasure:
    """The measure must be able to fail: it sees a wrong answer when there is one."""

    @pytest.mark.parametrize("function", ["logsumexp", "softmax", "log_softmax"])
    def test_two_ulps_off_is_seen(self, function):
        # float32 results are within 0.5 ulp; two steps toward zero, each at most one ulp of the exact value.
        row = accuracy.measure(_ours_nudged(2), function, np.float32, quick=True)
        assert 1.5 <= row.max_ulp < 2.6, row.detail
        assert row.max_ulp > ulp_goal(function, np.float32)

    def test_naive_softmax_fails(self):
        row = accuracy.measure(_naive(), "softmax", np.float64, quick=True)
        assert row.max_ulp == math.inf
        assert row.finite_max_ulp == math.inf  # NaN from inf / inf on [1000, 1001, 1002]
        assert row.special_wrong > 0  # NaN from 0 / 0 where the exact answer is 0
        assert "RuntimeWarning" in row.warned

    def test_naive_log_softmax_misses_goal(self):
        row = accuracy.measure(_naive(), "log_softmax", np.float64, quick=True)
        assert row.max_ulp > ulp_goal("log_softmax", np.float64)

    def test_dtype_mismatch_raises(self):
        wide = Implementation("wide", lambda f, c: OURS.call(f, c).astype(np.float64), OURS.missing)
        with pytest.raises(TypeError, match="returned float64 for float32 input"):
            accuracy.measure(wide, "softmax", np.float32, quick=True)

    def test_missing_pair_is_reported(self):
        row = accuracy.measure(_naive(), "cross_entropy", np.float64, quick=True)
        assert row.note == "not measured" and math.isnan(row.max_ulp)

    def test_table_rows(self):
        rows = accuracy.accuracy_rows(OURS, functions=["softmax", "logsumexp"], dtypes=[np.float32], quick=True)
        assert [(r.function, r.dtype) for r in rows] == [("softmax", "float32"), ("logsumexp", "float32")]
        assert all(0 < r.median_ulp <= r.max_ulp and r.worst_case in r.detail for r in rows)

    def test_unknown_function(self):
        with pytest.raises(ValueError, match="function='softplus' is unknown"):
            accuracy.measure(OURS, "softplus", np.float64, quick=True)

    def test_unknown_implementation(self):
        with pytest.raises(ValueError, match="implementation name='numpy' is unknown; allowed: 'stablesoftmax'"):
            accuracy.implementation("numpy")

    def test_torch_backend_must_answer_in_tensors(self, monkeypatch):
        # A backend that hands a CPU tensor back as a NumPy array is caught, not measured.
        pytest.importorskip("torch")
        impl = accuracy.implementation("stablesoftmax-torch")
        case = accuracy.battery(np.float32, quick=True)[0]
        assert impl.call("softmax", case).dtype == np.float32
        real = stablesoftmax.softmax
        monkeypatch.setattr(stablesoftmax, "softmax", lambda x, **kw: real(x.numpy(), **kw))
        with pytest.raises(TypeError, match="returned ndarray for a CPU torch tensor"):
            impl.call("softmax", case)

    def test_harness_examples(self):
        result = doctest.testmod(accuracy, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0


class TestUlp:
    @pytest.mark.parametrize("k", [-1021, -1, 0, 1, 52, 1023])
    def test_float64_powers_of_two(self, k):
        two = mpmath.mpf(2)
        assert ulp(two**k, np.float64) == two ** (k - 52)
        with mpmath.workdps(60):  # just below the power of two: the binade below
            assert ulp(two**k * (1 - mpmath.mpf(10) ** -40), np.float64) == two ** (k - 53)

    @pytest.mark.parametrize(
        ("dtype", "smallest"), [(np.float16, -24), (accuracy.DTYPES[1], -133), (np.float32, -149), (np.float64, -1074)]
    )
    def test_subnormal_spacing(self, dtype, smallest):
        assert ulp(0.0, dtype) == mpmath.mpf(2) ** smallest
        assert ulp(mpmath.mpf(2) ** (smallest + 3), dtype) == mpmath.mpf(2) ** smallest

    def test_ulp_error_specials(self):
        assert ulp_error(-math.inf, -mpmath.inf, np.float32) == 0.0
        assert ulp_error(-3.0e38, -mpmath.inf, np.float32) == math.inf
        assert ulp_error(math.nan, mpmath.mpf(1), np.float32) == math.inf

    def test_vectorised_agrees_with_scalar(self, rng):
        case = Case("probe", rng.normal(0.0, 30.0, 50), None, ())
        ref = accuracy.reference(case)["softmax"]
        got = np.asarray(stablesoftmax.softmax(case.x))
        with mpmath.workdps(50):
            exact = [mpmath.exp(mpmath.mpf(v)) for v in case.x]
            total = mpmath.fsum(exact)
            scalar = [ulp_error(g, e / total, np.float64) for g, e in zip(got, exact, strict=True)]
        np.testing.assert_allclose(accuracy.ulp_errors(got, ref), scalar, rtol=1e-9, atol=1e-12)

    def test_exact_zero_must_match(self):
        x = np.array([1.0, -np.inf, 3.0])
        ref = accuracy.reference(Case("probe", x, None, ()))["softmax"]
        assert ref.special.tolist() == [False, True, False]
        got = np.asarray(stablesoftmax.softmax(x))
        assert accuracy.ulp_errors(got, ref)[1] == 0.0
        got[1] = 5e-324  # the smallest subnormal is not the exact 0 of a -inf entry
        assert accuracy.ulp_errors(got, ref)[1] == math.inf


class TestReference:
    @pytest.mark.parametrize("row", [[1000.0, 1001.0, 1002.0], [-3.0, 0.0, 1.0, 2.0, 5.0], [1.2, 4.7, 3.1, 0.5, 2.9]])
    def test_against_the_textbook_formula(self, row):
        # The reference shifts by the max and uses log1p; at 80 digits the unshifted formula is just as exact.
        ref = accuracy.reference(Case("lab", np.array(row), None, ()))
        with mpmath.workdps(80):
            e = [mpmath.exp(mpmath.mpf(v)) for v in row]
            lse = mpmath.log(mpmath.fsum(e))
            expected = {
                "logsumexp": [lse],
                "softmax": [t / mpmath.fsum(e) for t in e],
                "log_softmax": [v - lse for v in row],
            }
            for function, values in expected.items():
                r = ref[function]
                for i, v in enumerate(values):
                    stored = (mpmath.mpf(r.hi[i]) + mpmath.mpf(r.lo[i])) * mpmath.mpf(r.unit[i])
                    assert abs(stored - v) <= abs(v) * mpmath.mpf(2) ** -100, (function, i)

    def test_log_softmax_has_no_cancellation_at_the_max(self):
        # log_softmax at 92 is -log1p(s), s = e^-82 + ...: ~ -2.61e-23, which x - lse would lose.
        ref = accuracy.reference(Case("lab", np.array([10.0, 92.0, 30.0, -50.0, 40.0]), None, ()))["log_softmax"]
        assert ref.value[1] == pytest.approx(-2.6103975761543725e-23, rel=1e-15)

    def test_masked_equals_sliced(self):
        x = np.array([np.nan, 1.0, np.inf, -2.0, 1e300])
        keep = np.array([False, True, False, True, False])
        masked = accuracy.reference(Case("m", x, keep, ()))
        sliced = accuracy.reference(Case("s", x[keep], None, ()))
        assert masked["logsumexp"].value.tolist() == sliced["logsumexp"].value.tolist()
        assert masked["softmax"].value[keep].tolist() == sliced["softmax"].value.tolist()
        assert masked["softmax"].value[~keep].tolist() == [0.0, 0.0, 0.0]
        assert masked["log_softmax"].value[~keep].tolist() == [-np.inf] * 3

    def test_overflow_past_the_dtype_is_inf(self):
        x = np.array([65504.0, -65504.0], dtype=np.float16)
        ls = accuracy.reference(Case("limit", x, None, ()))["log_softmax"]
        assert ls.special[1] and ls.value[1] == -np.inf  # -131008 - log1p(e^-131008) is past float16's range
        assert accuracy.ulp_errors(np.array([0.0, -65504.0]), ls)[1] == math.inf

    def test_rejects_nan(self):
        with pytest.raises(ValueError, match="NaN or \\+inf among its unmasked entries"):
            accuracy.reference(Case("bad", np.array([1.0, np.nan]), None, ()))


class TestBattery:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
    def test_cast_first_and_deterministic(self, dtype):
        a, b = accuracy.battery(dtype, quick=True), accuracy.battery(dtype, quick=True)
        assert all(c.x.dtype == dtype for c in a)
        assert [c.name for c in a] == [c.name for c in b]
        assert all(
            np.array_equal(c.x, d.x, equal_nan=True) and c.targets == d.targets for c, d in zip(a, b, strict=True)
        )
        assert len({c.name for c in a}) == len(a), "case names must be unique"

    def test_seed_matters(self):
        a, b = accuracy.battery(np.float64, seed=0, quick=True), accuracy.battery(np.float64, seed=1, quick=True)
        assert not all(np.array_equal(c.x, d.x, equal_nan=True) for c, d in zip(a, b, strict=True))

    def test_families_and_widths(self):
        cases = accuracy.battery(np.float64)
        names = " ".join(c.name for c in cases)
        for family in (
            "lab ",
            "gauss s=10000",
            "dominant",
            "others sum to 1-",
            "others sum to 1+",
            "near-tie",
            "masked all",
            "limit",
        ):
            assert family in names
        widths = {c.x.size for c in cases if c.name.startswith("gauss")}
        assert {1, 2, 5, 600, 10_000, 100_000} <= widths
        assert max(c.x.size for c in accuracy.battery(np.float64, quick=True)) < 10_000

    def test_targets_are_usable_entries(self):
        for case in accuracy.battery(np.float32, quick=True):
            usable = np.isfinite(case.x.astype(np.float64)) if case.where is None else case.where
            assert all(usable[t] for t in case.targets), case.name
