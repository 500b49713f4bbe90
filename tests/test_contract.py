"""Every row of the edge-case contract, for every function it names, exactly.

The expected values live in ``stablesoftmax._contract.CONTRACT``; this file
only calls. Exact equality (NaN equal to NaN), no RuntimeWarning allowed.
"""

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax._contract import CONTRACT, markdown_table, rules_for
from tests.helpers import DTYPE_IDS, FLOAT_DTYPES

pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

CASES = [(rule, fn) for rule in CONTRACT for fn in rule.expect]


@pytest.mark.parametrize(("rule", "fn"), CASES, ids=[f"{fn}:{rule.case}" for rule, fn in CASES])
def test_rule_holds_exactly(rule, fn):
    args, kw = rule.arguments(fn)
    with np.errstate(all="raise"):
        got = getattr(ss, fn)(*args, **kw)
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), np.asarray(rule.expect[fn], dtype=np.float64))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fn", ["logsumexp", "softmax", "log_softmax"])
def test_rules_hold_in_every_dtype(fn, dtype):
    for rule in rules_for(fn):
        if fn not in rule.expect:
            continue
        args, kw = rule.arguments(fn)
        with np.errstate(over="ignore"):  # the masked 1e308 becomes inf in 16 bits: still masked
            args[0] = args[0].astype(dtype)
        if "b" in kw:  # b takes part in the result dtype, as in SciPy: give it x's
            kw["b"] = kw["b"].astype(dtype)
        with np.errstate(all="raise"):
            got = getattr(ss, fn)(*args, **kw)
        assert np.asarray(got).dtype == dtype
        expect = np.asarray(rule.expect[fn], dtype=np.float64).astype(dtype)
        # Compared in float64: NumPy's equality does not see two bfloat16 NaNs as equal.
        np.testing.assert_array_equal(np.asarray(got).astype(np.float64), expect.astype(np.float64), err_msg=rule.case)


@pytest.mark.parametrize("fn", ["logsumexp", "softmax", "log_softmax"])
def test_special_rows_do_not_touch_their_neighbours(fn):
    x = np.array([[0.0, np.nan, 1.0], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0], [1.0, 2.0, 3.0]])
    got = getattr(ss, fn)(x)
    alone = getattr(ss, fn)(x[3])
    np.testing.assert_array_equal(got[3], alone)


def test_every_rule_has_an_exact_example():
    for rule in CONTRACT:
        assert rule.expect, rule.case
        assert set(rule.expect) <= {
            "logsumexp",
            "softmax",
            "log_softmax",
            "cross_entropy",
            "cross_entropy_grad",
            "softmax_grad",
            "log_softmax_grad",
            "logsumexp_grad",
        }


def test_docstrings_read_the_contract():
    for rule in rules_for("softmax"):
        assert rule.outcome["softmax"].replace("`", "``").split("``")[0] in ss.softmax.__doc__


def test_markdown_table_lists_every_family_rule():
    table = markdown_table()
    assert all(r.case in table for r in CONTRACT if {"logsumexp", "softmax", "log_softmax"} & set(r.outcome))


def test_return_sign_of_a_negative_sum():
    lse, sign = ss.logsumexp([0.0, 0.0], b=[1.0, -2.0], return_sign=True)
    assert (lse, sign) == (0.0, -1.0)


def test_return_sign_of_special_slices():
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.nan, 0.0]])
    lse, sign = ss.logsumexp(x, return_sign=True)
    np.testing.assert_array_equal(lse, [-np.inf, np.inf, np.nan])
    np.testing.assert_array_equal(sign, [0.0, 1.0, np.nan])
    _, sign0 = ss.logsumexp(np.empty(0), return_sign=True)
    assert sign0 == 0.0
