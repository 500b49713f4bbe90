"""The array-API reference in row blocks: memory bounded by a budget, and the same bits whatever the budget.

Where no compiled kernel serves, the reference computes in blocks of rows,
each holding at most ``set_reference_budget``'s bytes of temporaries. These
tests force that path (``reference_path()``, on NumPy arrays and CPU
tensors), hold the results to the unblocked ones bit for bit, and the peak
of the memory traced beyond input and output to the budget.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax import ArgumentError


@pytest.fixture
def budget():
    """Set the budget for one test, and restore it."""
    old = ss.set_reference_budget(256 << 20)
    yield ss.set_reference_budget
    ss.set_reference_budget(old)


def _every_function(x, y, q, w, mask, lib):
    out = [
        ss.logsumexp(x, axis=-1, where=mask),
        *ss.logsumexp(x, axis=-1, b=q, return_sign=True),
        ss.softmax(x, axis=-1, where=mask),
        ss.log_softmax(x, axis=0),
        ss.softmax_grad(x, q, axis=-1),
        ss.log_softmax_grad(x, q, axis=-1),
        ss.logsumexp_grad(x, q[:, 0], axis=-1),
    ]
    for kw in (
        {"weight": w},
        {"label_smoothing": 0.1, "where": mask},
        {"z_loss": 1e-3, "reduction": "sum"},
        {"reduction": "none", "softcap": 3.0},
    ):
        out += list(ss.cross_entropy_with_grad(x, y, **kw))
    out += list(ss.cross_entropy_with_grad(x, q / q.sum(-1, keepdims=True)))
    return [np.asarray(o) for o in out]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_any_budget_gives_the_same_bits(budget, lib, rng):
    x = rng.normal(scale=5.0, size=(23, 41))
    y = rng.integers(0, 41, 23)
    y[4] = -100
    q = rng.random((23, 41))
    w = rng.uniform(0.5, 2.0, 41)
    mask = rng.random((23, 41)) > 0.1
    args = (x, y, q, w, mask)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        args = tuple(torch.tensor(a) for a in args)
    with ss.reference_path():
        whole = _every_function(*args, lib)
        budget(1)  # one row a block
        one_row = _every_function(*args, lib)
        budget(12 * 8 * 41 * 5)  # five rows a block, the last block short
        five_rows = _every_function(*args, lib)
    for a, b, c in zip(whole, one_row, five_rows, strict=True):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)


@pytest.mark.parametrize("fn", ["softmax", "cross_entropy_with_grad"])
def test_peak_memory_stays_within_output_gradient_and_budget(budget, fn, rng):
    n, k = 2048, 1024
    x = rng.normal(size=(n, k)).astype(np.float32)
    y = rng.integers(0, k, n)
    out_bytes = x.nbytes  # the softmax, or the gradient (the loss is a scalar)
    limit = 2 << 20
    budget(limit)
    call = (lambda: ss.softmax(x, axis=-1)) if fn == "softmax" else (lambda: ss.cross_entropy_with_grad(x, y))
    with ss.reference_path():
        call()  # anything cached on the first call is not the call's own memory
        tracemalloc.start()
        call()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # the output, the budget, and the O(N) per-row vectors (a few float64 arrays of N)
    assert peak <= out_bytes + limit + 64 * n, (peak, out_bytes + limit)


def test_unblocked_would_not_fit_that_bound(budget, rng):
    """The bound above is not vacuous: with an unbounded budget the reference's temporaries exceed it."""
    x = rng.normal(size=(2048, 1024)).astype(np.float32)
    budget(1 << 40)
    with ss.reference_path():
        tracemalloc.start()
        ss.softmax(x, axis=-1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak > x.nbytes + (2 << 20) + 64 * 2048


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "1MB"])
def test_the_budget_is_a_whole_number_of_bytes(bad):
    with pytest.raises(ArgumentError, match=r"nbytes=.* whole number of bytes >= 1"):
        ss.set_reference_budget(bad)


def test_the_environment_variable_takes_precedence(budget, monkeypatch, rng):
    from stablesoftmax import _compute

    budget(1 << 40)
    monkeypatch.setenv("STABLESOFTMAX_REFERENCE_BUDGET", str(12 * 8 * 10))
    assert len(_compute._row_blocks(100, 10)) == 100
    monkeypatch.setenv("STABLESOFTMAX_REFERENCE_BUDGET", "not a number")
    assert len(_compute._row_blocks(100, 10)) == 1
