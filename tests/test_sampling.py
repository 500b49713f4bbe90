"""sample(): temperature sampling checked against softmax with a chi-square test."""

import numpy as np
import pytest
from scipy.stats import chisquare

import stablesoftmax as ss
from stablesoftmax import ArgumentError

N = 20000


def frequencies(draws, k):
    return np.bincount(np.asarray(draws).reshape(-1), minlength=k)


class TestSample:
    @pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
    def test_frequencies_match_softmax(self, temperature):
        x = np.array([1.0, 2.0, 0.5, -1.0, 1.5])
        draws = ss.sample(np.broadcast_to(x, (N, 5)), temperature=temperature, rng=42)
        expected = ss.softmax(x, temperature=temperature) * N
        assert chisquare(frequencies(draws, 5), expected).pvalue > 1e-3

    def test_chi_square_can_reject(self):
        # The same test must see a wrong distribution: this is its power, not a tautology.
        x = np.array([1.0, 2.0, 0.5, -1.0, 1.5])
        draws = ss.sample(np.broadcast_to(x, (N, 5)), temperature=1.0, rng=42)
        wrong = ss.softmax(x, temperature=1.1) * N
        assert chisquare(frequencies(draws, 5), wrong).pvalue < 1e-6

    def test_zero_temperature_is_argmax(self, rng):
        x = rng.normal(size=(50, 7))
        np.testing.assert_array_equal(ss.sample(x, temperature=0), np.argmax(x, axis=-1))

    def test_tiny_temperature_tends_to_argmax_without_overflow(self, rng):
        x = rng.normal(size=(50, 7))
        np.testing.assert_array_equal(ss.sample(x, temperature=1e-300, rng=1), np.argmax(x, axis=-1))

    def test_never_draws_minus_inf(self):
        draws = ss.sample(np.broadcast_to([0.0, -np.inf, 0.0], (2000, 3)), rng=0)
        assert (draws != 1).all() and set(np.unique(draws)) == {0, 2}

    def test_plus_inf_entries_are_uniform(self):
        draws = ss.sample(np.broadcast_to([np.inf, 5.0, np.inf], (4000, 3)), rng=0)
        assert (draws != 1).all()
        assert chisquare(frequencies(draws, 3)[[0, 2]]).pvalue > 1e-3

    def test_seeded_is_deterministic(self, rng):
        x = rng.normal(size=(10, 4))
        np.testing.assert_array_equal(ss.sample(x, rng=7), ss.sample(x, rng=np.random.default_rng(7)))

    def test_axis_and_shape(self, rng):
        x = rng.normal(size=(3, 6, 2))
        out = ss.sample(x, axis=1, rng=0)
        assert out.shape == (3, 2) and out.dtype == np.int64 and (out < 6).all()

    @pytest.mark.parametrize("t", [-0.1, np.nan, np.inf, "warm"])
    def test_bad_temperature(self, t):
        with pytest.raises(ArgumentError, match=r"temperature=.* (must be|is not)"):
            ss.sample(np.zeros(3), temperature=t)

    @pytest.mark.parametrize(
        ("row", "why"), [([-np.inf, -np.inf], "has no probability mass"), ([0.0, np.nan], "holds NaN")]
    )
    def test_rows_without_a_distribution(self, row, why):
        with pytest.raises(ArgumentError, match=f"logits slice 1 {why}"):
            ss.sample(np.array([[0.0, 1.0], row]), rng=0)

    def test_torch_tensor(self):
        torch = pytest.importorskip("torch")
        out = ss.sample(torch.tensor([[0.0, 9.0]]), temperature=0)
        assert isinstance(out, torch.Tensor) and out.tolist() == [1]


class TestArrayTypes:
    """The indices come back in the logits' own library, as every other function's results do."""

    def test_array_api_strict_gives_its_own_array(self):
        xp = pytest.importorskip("array_api_strict")
        logits = xp.asarray([[1.0, 2.0, 30.0], [0.0, 0.0, -xp.inf]])
        got = ss.sample(logits, temperature=0)
        assert type(got) is type(logits) and got.dtype == xp.int64 and got.device == logits.device
        assert [int(v) for v in got] == [2, 0]
        one = ss.sample(xp.asarray([0.0, 5.0]), temperature=0)
        assert type(one) is type(logits) and one.shape == () and int(one) == 1

    def test_jax_gives_a_jax_array(self):
        jnp = pytest.importorskip("jax.numpy")
        got = ss.sample(jnp.asarray([[1.0, 2.0, 30.0]]), temperature=0)
        assert isinstance(got, type(jnp.zeros(1))) and got.dtype.kind == "i"
        assert got.tolist() == [2]
