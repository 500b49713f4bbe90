"""Temperature sampling from logits, as the course page's inference step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from . import _dispatch as D
from ._errors import ArgumentError, AxisError
from ._reductions import softmax
from ._typing import Array

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["sample"]


Indices = npt.NDArray[np.int64] | np.int64
"""What :func:`sample` gives outside PyTorch: int64 indices, a NumPy scalar for one slice."""


@overload
def sample(
    logits: Tensor, /, *, temperature: float = 1.0, axis: int = -1, rng: np.random.Generator | int | None = None
) -> Tensor: ...


@overload
def sample(
    logits: Array | npt.ArrayLike,
    /,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    rng: np.random.Generator | int | None = None,
) -> Indices: ...


def sample(
    logits: Any,
    /,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    rng: np.random.Generator | int | None = None,
) -> Any:
    r"""Draw one class index per slice from ``softmax(logits / temperature)``.

    .. math:: P(i) = \frac{e^{(x_i - m)/T}}{\sum_j e^{(x_j - m)/T}}, \qquad T = 0:\ i = \arg\max_j x_j

    Parameters
    ----------
    logits : array_like
        Scores; ``axis`` is the class axis. ``-inf`` entries are never drawn.
    temperature : float, default 1.0
        ``T >= 0``. ``T = 0`` means argmax exactly (the first of tied
        maxima); as ``T -> 0`` the draw tends to it, without overflow, since
        the max is subtracted before dividing by ``T``.
    axis : int, default -1
        The class axis.
    rng : numpy.random.Generator, int or None
        The generator, or a seed for ``np.random.default_rng``.

    Returns
    -------
    array of int64
        Indices shaped like ``logits`` without ``axis``, an array of the
        input's own library on its device (a torch tensor for tensor input,
        a JAX or array-API array for theirs; int32 under JAX without x64).

    Raises
    ------
    ArgumentError
        For a negative or NaN temperature, or a slice with no probability
        mass to draw from (all ``-inf``) or holding NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import sample
    >>> int(sample(np.array([1.0, 92.0, 3.0]), temperature=0))
    1
    """
    t = D.real_option(temperature, "temperature", lambda v: 0 <= v < np.inf, "finite and >= 0 (0 means argmax)")
    arr = _host(logits)
    if not D.is_int(axis):
        raise AxisError(f"axis={axis!r} must be a single int: the class axis.")
    (ax,) = D.normalize_axes(axis, max(arr.ndim, 1)) if arr.ndim else (0,)
    x = np.moveaxis(np.atleast_1d(arr).astype(np.float64), ax, -1)
    if x.shape[-1] == 0:
        raise ArgumentError(
            f"logits of shape {arr.shape} have no classes along axis {axis}; sampling needs at least one."
        )
    _check_rows(x)
    generator = _generator(rng)
    if t == 0.0:
        out = np.argmax(x, axis=-1)
    else:
        out = _inverse_cdf(x, t, generator)
    return _like(out.astype(np.int64), logits)


def _host(logits: Any) -> np.ndarray:
    arr, _ = D.array_in(logits, "logits")
    if D.library(arr) == "torch":
        arr = arr.detach().cpu().double().numpy()
    return np.asarray(arr)


def _generator(rng: Any) -> np.random.Generator:
    if rng is not None and not isinstance(rng, (int, np.integer, np.random.Generator, np.random.SeedSequence)):
        raise ArgumentError(f"rng={rng!r} is not allowed; give None, an int seed or a numpy.random.Generator.")
    return np.random.default_rng(rng)


def _check_rows(x: np.ndarray) -> None:
    flat = x.reshape(-1, x.shape[-1])
    nan_rows = np.isnan(flat).any(axis=-1)
    dead_rows = (flat == -np.inf).all(axis=-1)
    bad = nan_rows | dead_rows
    if bad.any():
        i = int(np.argmax(bad))
        why = "holds NaN" if nan_rows[i] else "has no probability mass (all -inf or empty)"
        raise ArgumentError(f"logits slice {i} {why}; sampling needs at least one finite or +inf logit and no NaN.")


def _inverse_cdf(x: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """One draw per row by inverting the cumulative sum of the probabilities."""
    m = x.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):  # inf - inf on +inf rows (uniform over
        # their +inf entries); (x - m) / t past the float range is -inf, a probability 0
        shifted = np.where(m == np.inf, np.where(x == np.inf, 0.0, -np.inf), (x - m) / t)
    cdf = np.cumsum(softmax(shifted), axis=-1)
    u = rng.random(x.shape[:-1] + (1,)) * cdf[..., -1:]
    idx = (cdf <= u).sum(axis=-1)  # first index whose cumulative mass exceeds u
    draws: np.ndarray = np.minimum(idx, x.shape[-1] - 1)  # NumPy's stubs type a ufunc of unknown dtype as Any
    return draws


def _like(out: np.ndarray, logits: Any) -> Any:
    """The indices in ``logits``' own library and on its device; NumPy's scalar for one NumPy slice."""
    lib = D.library(logits)
    if lib == "torch":
        import torch

        return torch.from_numpy(out).to(logits.device)
    if lib == "numpy":
        return out[()] if out.ndim == 0 else out
    xp = D.namespace(logits)  # JAX, array-api-strict, CuPy: int64 where the library has it
    return xp.asarray(out, device=D.device(logits))
