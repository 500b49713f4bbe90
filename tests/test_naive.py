"""stablesoftmax.naive: the textbook formulas, which must break exactly as NumPy does."""

import warnings

import numpy as np
import pytest

from stablesoftmax import naive


class TestNaive:
    def test_softmax_overflows_to_nan_and_warns(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = naive.softmax(np.array([1.0, 92.0, 3.0], dtype=np.float32))
        assert np.isnan(p[1])
        messages = [str(w.message) for w in caught]
        assert messages == ["overflow encountered in exp", "invalid value encountered in divide"]

    def test_logsumexp_underflows_to_minus_inf(self):
        with pytest.warns(RuntimeWarning, match="divide by zero encountered in log"):
            assert naive.logsumexp(np.array([-1000.0, -999.0, -998.0])) == -np.inf

    def test_log_softmax_is_nan_on_zero_over_zero(self):
        with pytest.warns(RuntimeWarning, match="invalid value"):
            assert np.isnan(naive.log_softmax(np.array([-1000.0, -999.0]))).all()

    def test_cross_entropy_is_the_unfused_route(self):
        x = np.array([[1.2, 4.7, 3.1, 0.5, 2.9]])
        p = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
        assert naive.cross_entropy(x, np.array([2]))[0] == -np.log(p[0, 2])

    def test_formulas_are_the_textbook_ones_on_safe_input(self, rng):
        x = rng.normal(size=(3, 4))
        e = np.exp(x)
        np.testing.assert_array_equal(naive.softmax(x), e / e.sum(axis=-1, keepdims=True))
        np.testing.assert_array_equal(naive.logsumexp(x), np.log(e.sum(axis=-1)))
        np.testing.assert_array_equal(naive.log_softmax(x), np.log(e / e.sum(axis=-1, keepdims=True)))
