"""The examples run, and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Issue 4, item 7: the Value run and the array run agree to 1e-12 relative.
GOAL = 1e-12


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tense_runs():
    """``main()`` of examples/tense_regression.py, its printout and the data it trained on."""
    module = load("tense_regression")
    runs = module.main()
    X, y = module.make_data(np.random.default_rng(42), 40, 4)
    return module, runs, X, y


def relative(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


class TestTenseRegression:
    def test_main_prints_both_scales(self, capsys):
        load("tense_regression").main(n=10, steps=2)
        out = capsys.readouterr().out
        assert "scale 1:" in out and "scale 1000:" in out

    @pytest.mark.parametrize("scale", [1.0, 1000.0])
    def test_value_and_array_runs_agree(self, tense_runs, scale):
        _, runs, _, _ = tense_runs
        value, array = runs[scale]
        assert len(value.losses) == len(array.losses) == 12
        assert relative(value.losses, array.losses) <= GOAL
        assert relative(value.W, array.W) <= GOAL
        assert relative(value.b, array.b) <= GOAL

    def test_loss_goes_down(self, tense_runs):
        _, runs, _, _ = tense_runs
        for run in runs[1.0]:
            assert run.losses[0] == pytest.approx(math.log(5), rel=GOAL)  # zero weights: uniform
            assert all(later < earlier for earlier, later in itertools.pairwise(run.losses))
            assert run.losses[-1] < 0.6 * run.losses[0]

    def test_scaled_run_stays_finite_where_the_textbook_loss_does_not(self, tense_runs):
        module, runs, X, y = tense_runs
        for run in runs[1000.0]:
            assert np.isfinite(run.losses).all() and np.isfinite(run.W).all() and np.isfinite(run.b).all()
        logits = 1000.0 * (X @ runs[1000.0][1].W.T + runs[1000.0][1].b)
        assert np.abs(logits).max() > 709.8  # past float64 exp's overflow: the stress is real
        with np.errstate(all="ignore"):
            assert not np.isfinite(module.stablesoftmax.naive.cross_entropy(logits, y).mean())
