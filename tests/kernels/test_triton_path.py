"""The public API on torch tensors through ``stablesoftmax.triton_path()``: the Triton kernels, interpreted on the CPU.

Every cross-entropy option and reduction, forward and backward, against the
NumPy path (float64 within 1e-13 / 1e-12 relative); 16-bit and float32
results bit for bit with the NumPy path's, which are correctly rounded; the
contract's special rows exactly; and a check that the calls do reach the
Triton kernels.
"""

from __future__ import annotations

import contextlib
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import stablesoftmax as ss  # noqa: E402
from tests.helpers import BFLOAT16  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
from stablesoftmax._kernels import triton as tk  # noqa: E402

if not tk.available():
    pytest.skip("Triton can run neither on a device nor interpreted here", allow_module_level=True)

OPTIONS = [
    {},
    {"weight": "w"},
    {"label_smoothing": 0.15},
    {"label_smoothing": 0.15, "weight": "w"},
    {"z_loss": 1e-3},
    {"where": "mask"},
    {"ignore_index": 3},
]


def _case(rng, n=7, c=29):
    x = rng.normal(scale=3.0, size=(n, c))
    x[1, 4] = 45.0  # confident
    y = rng.integers(0, c, n)
    y[1] = 4
    y[2] = -100  # ignored
    mask = np.ones((n, c), bool)
    mask[3, ::3] = False
    y[3] = 1
    return x, y, mask, rng.uniform(0.5, 2.0, c)


def _resolve(opts, w, mask):
    return {k: (w if v == "w" else mask if v == "mask" else v) for k, v in opts.items()}


@pytest.fixture
def launches(monkeypatch):
    """Counts the Triton kernel launches the calls make."""
    count = [0]
    real = tk._launch

    def counted(*a, **k):
        count[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(tk, "_launch", counted)
    return count


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_and_gradient_equal_the_numpy_path(opts, reduction, rng, launches):
    x, y, mask, w = _case(rng)
    kw = _resolve(opts, w, mask)
    y = np.where(y == -100, kw.get("ignore_index", -100), y)
    want, want_grad = ss.cross_entropy_with_grad(x, y, reduction=reduction, **kw)
    xt = torch.tensor(x, requires_grad=True)
    tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with ss.triton_path():
        got = ss.cross_entropy(xt, torch.tensor(y), reduction=reduction, **tkw)
        (grad,) = torch.autograd.grad(got.sum(), xt)
    assert launches[0] == 2  # the forward's pass and the gradient's, from the parts the forward kept
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("triton", [False, True], ids=["host", "triton"])
def test_the_cross_entropy_op_passes_opcheck(triton, rng):
    """The op's schema, fake (the kept parts' shape on each path), autograd and AOT dispatch agree."""
    from stablesoftmax._backends import torch as backend

    x = torch.tensor(rng.normal(size=(6, 11)), requires_grad=True)
    args = (x, torch.tensor(rng.integers(0, 11, 6)), None, None, -100, "mean", 0.1, 0.0, None, False)
    with ss.triton_path() if triton else contextlib.nullcontext():
        parts = backend._cross_entropy(*args)[1]
        assert tuple(parts.shape) == ((7, 6) if triton else (0, 6))
        torch.library.opcheck(backend._cross_entropy, args)


@pytest.mark.parametrize("dtype", [np.float32, BFLOAT16, np.float16], ids=str)
@pytest.mark.parametrize("fn", ["logsumexp", "softmax", "log_softmax"])
def test_narrow_results_are_the_numpy_paths_bits(fn, dtype, rng):
    x = rng.normal(scale=4.0, size=(5, 40)).astype(dtype)
    want = getattr(ss, fn)(x, axis=-1)
    t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if x.dtype == BFLOAT16 else torch.from_numpy(x)
    with ss.triton_path():
        got = getattr(ss, fn)(t, axis=-1)
    got = got.view(torch.int16).numpy().view(BFLOAT16) if got.dtype == torch.bfloat16 else got.numpy()
    np.testing.assert_array_equal(got, want)


def test_special_rows_follow_the_contract():
    inf, nan = math.inf, math.nan
    x = np.array([[-inf, -inf, -inf], [1.0, inf, 0.0], [inf, inf, 0.0], [0.0, nan, 1.0]])
    for fn in ("logsumexp", "softmax", "log_softmax"):
        want = getattr(ss, fn)(x, axis=-1)
        with ss.triton_path():
            got = getattr(ss, fn)(torch.tensor(x), axis=-1).numpy()
        np.testing.assert_array_equal(got, want)
    y = np.array([0, 1, 0, 2])
    want = ss.cross_entropy(x, y, reduction="none")
    with ss.triton_path():
        got = ss.cross_entropy(torch.tensor(x), torch.tensor(y), reduction="none").numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "opts",
    [{}, {"label_smoothing": 0.1}, {"z_loss": 1e-3}, {"softcap": 5.0}, {"class_weight": "w"}],
    ids=lambda o: ",".join(o) or "plain",
)
def test_linear_cross_entropy_chunks_take_the_triton_gradient(opts, rng, monkeypatch):
    """On the tensors' own device each chunk's gradient is the Triton accelerator's, equal to the host path's."""
    n, hid, v = 6, 5, 23
    h, wt, b = rng.normal(size=(n, hid)), rng.normal(size=(v, hid)), rng.normal(size=v)
    h[1] *= 30.0  # confident rows
    y = rng.integers(0, v, n)
    y[2] = -100
    kw = {k: (rng.uniform(0.5, 2.0, v) if val == "w" else val) for k, val in opts.items()}
    want_loss, want = ss.linear_cross_entropy_with_grad(h, wt, y, bias=b, chunk_size=8, **kw)
    calls = [0]
    real = tk.block_gradient_rows

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(tk, "block_gradient_rows", counted)
    ht, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (h, wt, b))
    tkw = {k: torch.tensor(val) if isinstance(val, np.ndarray) else val for k, val in kw.items()}
    with ss.triton_path():
        loss = ss.linear_cross_entropy(ht, wtt, torch.tensor(y), bias=bt, chunk_size=8, **tkw)
        grads = torch.autograd.grad(loss, (ht, wtt, bt))
    assert calls[0] == 3  # one launch per chunk of 8 classes
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-13)
    for got, ref in zip(grads, want, strict=True):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11, atol=1e-13 * np.abs(ref).max())
