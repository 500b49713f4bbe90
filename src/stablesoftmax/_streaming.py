"""Streaming logsumexp: a mergeable running state, for data seen in chunks.

The state of every output entry is the online-softmax pair of Milakov &
Gimelshein ("Online normalizer calculation for softmax", 2018): the running
max ``m`` and the sum ``s`` of ``exp(x_i - m)`` over every term seen but the
max term itself, so that ``logsumexp = m + log1p(s)`` exactly as in the
one-shot :func:`stablesoftmax.logsumexp` (Blanchard, Higham & Higham 2021).

When a chunk brings a larger max ``m'``, the old mass is rescaled,
``s' = s_new + (1 + s) exp(m - m')``. Each rescaling multiplies the old mass
by a rounded ``exp``; in float64 that is up to 1 ulp per change of max, and a
stream whose max keeps rising (sorted data, a drift) piles these up. So ``s``
is kept in ``np.longdouble`` and the factor computed there (x86-64: 64-bit
significand, 2**11 times finer than float64): a thousand rescalings cost less
than one float64 rounding. Where ``longdouble`` is float64 (MSVC, Apple
arm64) the state still works, with that 1 ulp per rise of the max.

Chunks are reduced by :func:`._compute.host_state`: the accelerator that
serves host rows, else the reference in row blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import array_api_compat.numpy as npx
import numpy as np

from . import _compute, _state
from . import _dispatch as D
from ._dispatch import AxisLike, Rows
from ._errors import ArgumentError, DtypeError, ShapeError
from ._typing import ArrayIn, NumpyResult

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["LogSumExp", "logsumexp_chunks"]


@dataclass
class _Sums:
    """The state of every output entry, from the first chunk on."""

    m: np.ndarray  # float64, shape = the result's shape
    s: np.ndarray  # np.longdouble, same shape
    dtype: np.dtype  # the result's: the chunks' float dtype, promoted


class LogSumExp:
    r"""A running, mergeable logsumexp over chunks of a reduction axis.

    .. math:: \operatorname{lse} = m + \operatorname{log1p}(s), \quad
              m = \max_i x_i, \quad s = \sum_{i \ne k} e^{x_i - m}

    Feed chunks with :meth:`update` (each chunk holds more terms of the same
    slices: equal shapes once the reduced axes are taken out), combine states
    built apart (other processes, other files) with :meth:`merge`, and read
    the value with :meth:`result`. The order of chunks and merges changes the
    result by rounding only.

    An ``np.memmap`` (or any ndarray) larger than ``block_bytes`` is read
    block by block along its leading axes, so arrays larger than memory
    work: only one block is in memory at a time.

    Special values follow the family's contract: no terms (or only
    ``-inf``) give ``-inf``, a ``+inf`` term gives ``+inf``, a NaN term
    gives NaN, each output entry on its own.

    See Also
    --------
    logsumexp_chunks, stablesoftmax.logsumexp

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import LogSumExp, logsumexp
    >>> x = np.array([1000.0, 1001.0, 1002.0, -np.inf])
    >>> state = LogSumExp().update(x[:2])
    >>> other = LogSumExp().update(x[2:])
    >>> float(state.merge(other).result()) == float(logsumexp(x))
    True
    """

    block_bytes: int = 64 << 20  # largest block of an ndarray chunk reduced at once

    def __init__(self) -> None:
        self._sums: _Sums | None = None  # None before the first chunk
        self._like: Any = None  # the first chunk: results go back to its library and device

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of :meth:`result`; None before the first chunk."""
        return None if self._sums is None else self._sums.m.shape

    @property
    def dtype(self) -> np.dtype | None:
        """Dtype of :meth:`result`: the chunks' float dtype (promoted if they differ)."""
        return None if self._sums is None else self._sums.dtype

    def update(self, chunk: ArrayIn, /, *, axis: AxisLike = -1) -> LogSumExp:
        """Add the terms of ``chunk`` along ``axis``; returns ``self``.

        Parameters
        ----------
        chunk : array_like
            More terms. NumPy arrays (``np.memmap`` included) are read block
            by block; other arrays (PyTorch and array-API ones too) are
            converted whole.
        axis : int, tuple of ints or None, default -1
            The reduced axes of this chunk. The other axes must have the shape
            of the state (set by the first chunk).
        """
        arr = chunk if isinstance(chunk, np.ndarray) else _host(chunk)
        dtype = _float_dtype(arr, "chunk")
        if self._like is None:
            self._like = chunk
        axes = D.normalize_axes(axis, arr.ndim)
        batch = Rows.of(arr.shape, axes).batch
        self._feed(self._ensure(batch, dtype), arr, axes, 0, [slice(None)] * len(batch))
        return self

    def merge(self, other: LogSumExp, /) -> LogSumExp:
        """Fold the state ``other`` (of the same shape) into this one; returns ``self``."""
        if not isinstance(other, LogSumExp):
            raise TypeError(f"merge takes a LogSumExp, got {type(other).__name__}.")
        if other._sums is None:
            return self
        sums = self._ensure(other._sums.m.shape, other._sums.dtype, "the merged LogSumExp holds shape")
        sums.m, sums.s = _combine(sums.m, sums.s, other._sums.m, other._sums.s)
        return self

    def result(self) -> NumpyResult | Tensor:
        """The logsumexp so far, rounded once to the chunks' dtype (``-inf`` before any chunk)."""
        sums = self._sums
        if sums is None:
            empty: np.float64 = np.float64(-np.inf)  # NumPy's stubs type this constructor's result as Any
            return empty
        # NaN state stays NaN; rounding an infinite result to 16 bits takes the ulp of inf (inf - inf), unused
        with np.errstate(invalid="ignore"):
            lse = _state.lse(_state.State(sums.m, None, sums.s.astype(np.float64)), npx)
            out = _compute.round_to(lse, np.zeros(0, sums.dtype), D.namespace(lse))
        return _back(out, self._like)

    def __repr__(self) -> str:
        return f"LogSumExp(shape={self.shape}, dtype={self.dtype})"

    # ----------------------------------------------------------------------

    def _ensure(self, batch: tuple[int, ...], dtype: np.dtype, what: str = "chunk reduces to shape") -> _Sums:
        """The state, made for ``batch`` by the first chunk; a later chunk (or merged state, ``what``) must match it."""
        if self._sums is None:
            self._sums = _Sums(np.full(batch, -np.inf), np.zeros(batch, dtype=np.longdouble), dtype)
            return self._sums
        if tuple(batch) != self._sums.m.shape:
            raise ShapeError(
                f"{what} {tuple(batch)}, but this LogSumExp holds shape {self._sums.m.shape}; every chunk "
                "and merged state must have the same shape once the reduced axes are taken out."
            )
        self._sums.dtype = _promote(self._sums.dtype, dtype)
        return self._sums

    def _feed(self, sums: _Sums, a: np.ndarray, axes: tuple[int, ...], dim: int, index: list[slice]) -> None:
        """Reduce ``a`` block by block along axes ``dim, dim+1, ...``; merge into ``sums[index]``."""
        if a.nbytes <= self.block_bytes or dim == a.ndim:
            m, s = _parts(a, axes)
            at = tuple(index)
            sums.m[at], sums.s[at] = _combine(sums.m[at], sums.s[at], m, s)
            return
        step = max(1, self.block_bytes // (a.nbytes // a.shape[dim]))
        batch_pos = sum(1 for d in range(dim) if d not in axes)
        for i in range(0, a.shape[dim], step):
            cut = [slice(None)] * a.ndim
            cut[dim] = slice(i, i + step)
            sub_index = list(index)
            if dim not in axes:  # a block of output entries; a reduced axis splits terms instead
                sub_index[batch_pos] = slice(i, i + step)
            self._feed(sums, a[tuple(cut)], axes, dim + 1, sub_index)


def logsumexp_chunks(chunks: Iterable[ArrayIn] | np.ndarray, /, *, axis: AxisLike = -1) -> NumpyResult | Tensor:
    """logsumexp over an iterable of chunks, each reduced along ``axis``.

    An ndarray (an ``np.memmap`` too) counts as one chunk, read block by
    block: ``logsumexp_chunks(np.load(path, mmap_mode="r"), axis=-1)``
    handles arrays larger than memory.

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import logsumexp_chunks
    >>> float(logsumexp_chunks([np.array([0.0, 1.0]), np.array([]), np.array([2.0])]))
    2.40760596444438
    """
    state = LogSumExp()
    if not isinstance(chunks, np.ndarray) and not hasattr(chunks, "__iter__"):
        raise ArgumentError(
            f"chunks={chunks!r} is not an iterable of arrays nor an array; give e.g. a list of arrays or an np.memmap."
        )
    if isinstance(chunks, np.ndarray):
        return state.update(chunks, axis=axis).result()
    for chunk in chunks:
        state.update(chunk, axis=axis)
    return state.result()


# --------------------------------------------------------------------------
# One chunk, and two states
# --------------------------------------------------------------------------


def _parts(a: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(m, s)`` of one in-memory block, result-shaped, float64 (the kernels' state, or the reference's)."""
    rows = Rows.of(a.shape, axes)
    arr = D.native(np.asarray(a))  # a byte-swapped memmap, block by block
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)  # integers and bools, as in logsumexp
    if rows.k == 0:  # no terms: the empty sum
        return np.full(rows.batch, -np.inf), np.zeros(rows.batch)
    x = np.ascontiguousarray(rows.split(arr, np))
    st = _compute.host_state(x)
    m, s = st.m, st.s
    return m.reshape(rows.batch), s.reshape(rows.batch)


def _combine(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`._state.merge` of two states elementwise, in ``np.longdouble``."""
    shape = np.shape(m1)
    a = _state.State(np.asarray(m1, np.longdouble).reshape(-1), None, np.asarray(s1, np.longdouble).reshape(-1))
    b = _state.State(np.asarray(m2, np.longdouble).reshape(-1), None, np.asarray(s2, np.longdouble).reshape(-1))
    with np.errstate(all="ignore"):  # see _backends.plain
        st = _merge_sums(a, b)
    return st.m.astype(np.float64).reshape(shape), st.s.reshape(shape)


def _merge_sums(a: _state.State, b: _state.State) -> _state.State:
    k = np.zeros(a.m.shape, np.int64)
    return _state.merge(_state.State(a.m, k, a.s), _state.State(b.m, k, b.s), npx)


def _host(chunk: Any) -> np.ndarray:
    """A chunk as NumPy: this state lives on the host (a torch CPU tensor is viewed, not copied)."""
    if D.library(chunk) == "torch":
        t = chunk.detach().cpu()
        view: np.ndarray = t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()
        return view
    return D.numpy_in(np.asarray(chunk) if D.library(chunk) != "numpy" else chunk, "chunk")


def _float_dtype(arr: np.ndarray, name: str) -> np.dtype:
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        native: np.dtype = arr.dtype.newbyteorder("=")  # NumPy's stubs type newbyteorder's result as Any
        return native
    if arr.dtype.kind in "iub":
        return np.dtype(np.float64)
    raise DtypeError(f"{name} has dtype {arr.dtype}, which is not supported. Allowed: {D.ALLOWED}.")


def _back(out: np.ndarray, like: Any) -> NumpyResult | Tensor:
    """A result in the first chunk's library (a torch tensor for torch chunks), a scalar for 0-d NumPy."""
    if like is not None and D.library(like) == "torch":
        import torch

        return torch.as_tensor(np.asarray(out, np.float64)).to(dtype=like.dtype, device=like.device)
    if out.ndim:
        return out
    scalar: NumpyResult = out[()]  # a 0-d array indexed by () gives its NumPy scalar
    return scalar


def _promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """Result dtype for chunks of dtypes ``a`` and ``b``."""
    if a == b:
        return a
    if a.itemsize == b.itemsize == 2:  # float16 with bfloat16: neither holds the other
        return np.dtype(np.float32)
    return a if a.itemsize > b.itemsize else b
