"""Array plumbing shared by every public function.

Inputs arrive as NumPy arrays, Python sequences or any array-API array
(PyTorch tensors included). They are computed on the host through NumPy in a
wide dtype, and each result goes back to the input's array type, device and
dtype with a single rounding. Axis handling (any number of axes, 0-d input)
also lives here so that every function reads ``axis`` the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ._errors import ArgumentError, AxisError, DtypeError, ShapeError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
ALLOWED = "float16, bfloat16, float32, float64, or integer/bool (promoted to float64)"

AxisLike = int | Sequence[int] | None


# --------------------------------------------------------------------------
# Into NumPy and back
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where an input came from, so a result can be sent back there.

    ``dtype`` is the logical float dtype of the result (NumPy spelling);
    ``restore`` turns a float64 NumPy result into the caller's array type.
    """

    dtype: np.dtype
    restore: Callable[[np.ndarray], Any]


def to_numpy(x: Any, name: str) -> tuple[np.ndarray, Source]:
    """Return ``x`` as a NumPy array (never a copy unless needed) and its source.

    The array keeps its own float dtype (integers and bools become float64);
    callers widen it with :func:`wide`.
    """
    if _is_torch(x):
        return _torch_to_numpy(x, name)
    if not isinstance(x, np.ndarray) and hasattr(x, "__array_namespace__"):
        return _array_api_to_numpy(x, name)
    arr = _asarray(x, name)
    dtype = result_dtype(arr.dtype, name)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr, Source(dtype, lambda out: _numpy_result(out, dtype))


def is_numpy_like(x: Any) -> bool:
    """True for NumPy arrays, NumPy scalars and Python sequences: what the compiled path takes."""
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    return not _is_torch(x) and not hasattr(x, "__array_namespace__") and not hasattr(x, "__dlpack__")


def host(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array on the host in its own dtype (no float promotion)."""
    if _is_torch(x):
        if str(x.dtype) == "torch.bfloat16":
            return to_numpy(x, name)[0]
        return x.detach().to("cpu").numpy()
    if not isinstance(x, np.ndarray) and hasattr(x, "__array_namespace__"):
        return _asarray(_host_copy(x), name)
    return _asarray(x, name)


def result_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """The float dtype a result has for input of ``dtype``, or a DtypeError."""
    if dtype in FLOAT_DTYPES:
        return dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        raise DtypeError(
            f"{name} has complex dtype {dtype}; softmax-family functions are defined "
            f"for real input only. Allowed: {ALLOWED}."
        )
    raise DtypeError(f"{name} has dtype {dtype}, which is not supported. Allowed: {ALLOWED}.")


def wide(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the dtype we compute in: float64 (a view when it already is)."""
    return arr if arr.dtype == np.float64 else arr.astype(np.float64)


def round_to(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a float64 array to ``dtype`` once (correctly rounded, ties to even).

    NumPy's float64 -> float16 cast rounds once. ml_dtypes' float64 -> bfloat16
    cast goes through float32 and so rounds twice; we round to float32 with
    round-to-odd first, which makes the second rounding the correct one
    (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved
    algorithms using rounding to odd", IEEE TC 2008).
    """
    if out.dtype == dtype:
        return out
    with np.errstate(over="ignore"):  # past the dtype's range, +-inf is the correctly rounded result
        if dtype != BFLOAT16:
            return out.astype(dtype)
        return _float32_round_to_odd(out).astype(BFLOAT16)


def _float32_round_to_odd(x: np.ndarray) -> np.ndarray:
    near = x.astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf and nan compare quietly; those stay as cast
        back = near.astype(np.float64)
        inexact = np.isfinite(x) & (back != x)
        overshoot = inexact & (np.abs(back) > np.abs(x))
    toward_zero = np.where(overshoot, np.nextafter(near, np.float32(0)), near)
    bits = toward_zero.view(np.uint32).copy()
    bits[inexact] |= np.uint32(1)
    return bits.view(np.float32)


def _numpy_result(out: np.ndarray, dtype: np.dtype) -> Any:
    out = round_to(out, dtype)
    return out[()] if out.ndim == 0 else out


def _asarray(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name} could not be read as an array ({exc}); give a rectangular numeric array.") from None
    if arr.dtype.kind in "OUSV" and arr.dtype != BFLOAT16:
        raise DtypeError(f"{name} has dtype {arr.dtype} (object, string or structured); Allowed: {ALLOWED}.")
    return arr


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def _torch_to_numpy(x: Any, name: str) -> tuple[np.ndarray, Source]:
    import torch

    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}
    if x.is_complex():
        raise DtypeError(f"{name} has complex dtype {x.dtype}; real input only. Allowed: {ALLOWED}.")
    logical = np.dtype(names[x.dtype]) if x.dtype in names and x.dtype != torch.bfloat16 else None
    if x.dtype == torch.bfloat16:
        logical = BFLOAT16
    if logical is None:
        if x.dtype.is_floating_point:
            raise DtypeError(f"{name} has dtype {x.dtype}, which is not supported. Allowed: {ALLOWED}.")
        logical = np.dtype(np.float64)
    host = x.detach().to("cpu")
    if x.dtype == torch.bfloat16:
        arr = host.view(torch.int16).numpy().view(BFLOAT16)
    else:
        arr = host.numpy()
    arr = arr if arr.dtype == logical else arr.astype(logical)
    device, torch_dtype = x.device, x.dtype if x.dtype.is_floating_point else torch.float64

    def restore(out: np.ndarray) -> Any:
        out = np.array(round_to(np.asarray(out, dtype=np.float64), logical), order="C")  # keeps 0-d, unlike ascontiguousarray
        if logical == BFLOAT16:
            t = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(out)
        return t.to(device=device, dtype=torch_dtype)

    return arr, Source(logical, restore)


def _array_api_to_numpy(x: Any, name: str) -> tuple[np.ndarray, Source]:
    import array_api_compat as aac

    xp = aac.array_namespace(x)
    device = aac.device(x)
    arr = _asarray(_host_copy(x), name)
    logical = result_dtype(arr.dtype, name)
    arr = arr if arr.dtype == logical else arr.astype(logical)

    def restore(out: np.ndarray) -> Any:
        host = round_to(np.asarray(out, dtype=np.float64), logical)
        return xp.asarray(host, device=device)

    return arr, Source(logical, restore)


def _host_copy(x: Any) -> Any:
    """A NumPy view or copy of an array-API array, through DLPack where it can."""
    for attempt in (lambda: np.from_dlpack(x), lambda: np.from_dlpack(x, device="cpu", copy=True)):
        try:
            return attempt()
        except (AttributeError, BufferError, RuntimeError, TypeError, ValueError):
            continue  # not on the host, or no DLPack: try the next way
    return x


def restore_pair(src: Source, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
    return src.restore(a), src.restore(b)


# --------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------


def normalize_axes(axis: AxisLike, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Return the reduction axes as sorted non-negative ints.

    ``None`` means every axis. A 0-d array accepts ``-1``, ``0`` and ``()``
    and treats its one element as the slice, as PyTorch does.
    """
    if axis is None:
        return tuple(range(ndim))
    if axis == -1 and ndim and type(axis) is int:  # the default, answered without the general checks
        return (ndim - 1,)
    items = (axis,) if _is_int(axis) else axis
    if not isinstance(items, (tuple, list)) or not all(_is_int(a) for a in items):
        raise AxisError(f"{name}={axis!r} is not an int or a tuple of ints; give e.g. axis=-1 or axis=(0, 1).")
    if ndim == 0:
        if any(int(a) not in (-1, 0) for a in items):
            raise AxisError(f"{name}={axis!r} is out of range for a 0-d array; allowed: -1, 0 or ().")
        return ()
    out = []
    for a in items:
        a = int(a)
        if not -ndim <= a < ndim:
            raise AxisError(f"{name}={axis!r} is out of range for an array of {ndim} dimensions; allowed: [{-ndim}, {ndim}).")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise AxisError(f"{name}={axis!r} repeats an axis; each axis may appear once.")
    return tuple(sorted(out))


def _is_int(a: Any) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


@dataclass(frozen=True)
class Rows:
    """A view of an array as ``(*batch, K)`` with the reduced axes last and merged.

    ``batch`` is the shape of a reduction's result; ``moved`` the shape with
    the reduced axes moved to the end, before they were merged.
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    batch: tuple[int, ...]
    moved: tuple[int, ...]
    k: int
    trailing: bool  # the reduced axes are already the last ones: no axis moves

    @classmethod
    def of(cls, shape: tuple[int, ...], axes: tuple[int, ...]) -> Rows:
        keep = [d for d in range(len(shape)) if d not in axes]
        batch = tuple(shape[d] for d in keep)
        reduced = tuple(shape[d] for d in axes)
        trailing = axes == tuple(range(len(shape) - len(axes), len(shape)))
        return cls(tuple(shape), axes, batch, batch + reduced, math.prod(reduced), trailing)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def split(self, a: np.ndarray) -> np.ndarray:
        """``a`` (of the full shape) as ``(*batch, K)``."""
        if not self.trailing:
            a = np.moveaxis(a, self.axes, tuple(range(self.ndim - len(self.axes), self.ndim)))
        return a.reshape(self.batch + (self.k,))

    def join(self, a: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`split` for an array of ``(*batch, K)``."""
        a = a.reshape(self.moved)
        if self.trailing:
            return a
        return np.moveaxis(a, tuple(range(self.ndim - len(self.axes), self.ndim)), self.axes)

    def keepdims(self, reduced: np.ndarray) -> np.ndarray:
        """A reduction's ``batch``-shaped result with the reduced axes kept as 1."""
        return np.expand_dims(reduced, self.axes) if self.axes else reduced


def broadcast_like(a: Any, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """``a`` broadcast to ``shape``, or a ShapeError naming both shapes."""
    arr = np.asarray(a.detach().cpu().numpy() if _is_torch(a) else a)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ShapeError(f"{name} of shape {arr.shape} does not broadcast to {what} shape {shape}.") from None


def as_mask(where: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ``where=`` argument as a bool array of ``shape`` (None stays None)."""
    if where is None:
        return None
    mask = broadcast_like(where, shape, "where", "the input's")
    if mask.dtype != np.bool_:
        raise DtypeError(f"where has dtype {mask.dtype}; it must be a bool array (True = use the entry).")
    return mask


def real_option(value: Any, name: str, ok: Callable[[float], bool], allowed: str) -> float:
    """``value`` as a float for which ``ok`` holds, or an ArgumentError saying ``allowed``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name}={value!r} is not a real number; it must be {allowed}.") from None
    if np.isnan(v) or not ok(v):
        raise ArgumentError(f"{name}={value!r} is not allowed; it must be {allowed}.")
    return v


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float; it must be finite and positive."""
    return real_option(temperature, "temperature", lambda t: np.isfinite(t) and t > 0, "finite and > 0")
