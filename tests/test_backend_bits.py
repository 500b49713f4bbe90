"""One input, every array library: the same bits where the contract says correctly rounded.

logsumexp, softmax, log_softmax and cross_entropy round correctly in 16-bit and
float32, so NumPy, PyTorch, JAX and array-api-strict must agree bit for bit
there; in float64 (an ulp goal, not correct rounding) they must agree to the
goal. Each result has its input's array type, dtype and device.
"""

import numpy as np
import pytest
from helpers import BFLOAT16, FLOAT_DTYPES

import stablesoftmax as ss

torch = pytest.importorskip("torch")

ROUNDED = {np.dtype(np.float16), BFLOAT16, np.dtype(np.float32)}
CALLS = {
    "logsumexp": lambda x, y: ss.logsumexp(x, axis=-1),
    "softmax": lambda x, y: ss.softmax(x, axis=-1),
    "log_softmax": lambda x, y: ss.log_softmax(x, axis=-1),
    "cross_entropy": lambda x, y: ss.cross_entropy(x, y, reduction="none"),
}


def _torch(a: np.ndarray):
    if a.dtype == BFLOAT16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _from_torch(t) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy()


def _libraries():
    """``name -> (to the library, back to NumPy, the library's array type, its dtype for a NumPy dtype)``."""
    libs = {
        "numpy": (lambda a: a, np.asarray, np.ndarray, lambda d: d),
        "torch": (_torch, _from_torch, torch.Tensor, lambda d: _torch(np.zeros(0, d)).dtype),
    }
    try:
        import jax
        import jax.numpy as jnp

        libs["jax"] = (jnp.asarray, np.asarray, jax.Array, lambda d: jnp.zeros(0, d).dtype)
    except ImportError:
        pass
    try:
        import array_api_strict as xps

        def strict(a):
            return None if a.dtype == BFLOAT16 or a.dtype == np.float16 else xps.asarray(a)

        libs["array_api_strict"] = (strict, np.from_dlpack, type(xps.asarray(0.0)), lambda d: getattr(xps, d.name))
    except ImportError:
        pass
    return libs


LIBS = _libraries()


@pytest.fixture
def x64():
    """JAX with float64, so that a float64 input stays float64 there too."""
    jax = pytest.importorskip("jax") if "jax" in LIBS else None
    if jax is None:
        yield
        return
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fn", list(CALLS))
def test_every_library_gives_the_same_bits(rng, fn, dtype):
    x = (rng.normal(0, 4, (6, 37)) + np.linspace(-30, 30, 6)[:, None]).astype(dtype)
    x[1, 3] = -np.inf
    y = rng.integers(0, 37, 6)
    want = np.asarray(CALLS[fn](x, y))
    assert want.dtype == dtype
    for name, (to, back, kind, dtype_of) in LIBS.items():
        arr = to(x)
        if arr is None:  # array-api-strict has no 16-bit floats
            continue
        labels = to(y) if name != "torch" else torch.from_numpy(y)
        got = CALLS[fn](arr, labels)
        assert isinstance(got, kind), name
        assert got.dtype == dtype_of(dtype), name
        if name == "torch":
            assert got.device == arr.device
        elif name == "jax":
            assert got.devices() == arr.devices()
        elif name == "array_api_strict":
            assert got.device == arr.device
        host = back(got)
        if dtype in ROUNDED:
            np.testing.assert_array_equal(host.view(np.uint8), want.view(np.uint8), err_msg=name)
        else:
            np.testing.assert_allclose(host, want, rtol=4 * np.finfo(np.float64).eps, atol=0, err_msg=name)
