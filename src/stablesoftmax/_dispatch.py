"""The one dispatch layer: validate once, shape into rows, pick the backend, shape back.

A public function hands its arguments here. :func:`array_in` finds the
input's namespace (NumPy for NumPy arrays, sequences and scalars; the
library's own for PyTorch, JAX, CuPy, array-api-strict and any array-API
array) and checks its dtype; :class:`Rows` moves the reduced axes last and
merges them, in that namespace; :func:`backend` picks who computes:

* PyTorch tensors go through :mod:`._backends.torch`, custom ops with our
  own gradients that ``torch.compile`` traces whole;
* JAX arrays through :mod:`._backends.jax`, ``custom_vjp`` rules;
* everything else straight to :mod:`._compute` (the kernels for NumPy, the
  array-API reference elsewhere).

Nothing below this module knows what a torch tensor or a JAX tracer is,
except the one backend file for that library.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import ArgumentError as ArgumentError
from ._errors import AxisError as AxisError
from ._errors import DtypeError as DtypeError
from ._errors import ShapeError as ShapeError

Array = Any
AxisLike = int | Sequence[int] | None
ALLOWED = "float16, bfloat16, float32, float64, or integer/bool (promoted to float64)"
FLOATS = ("float16", "bfloat16", "float32", "float64")


# --------------------------------------------------------------------------
# Arrays in: namespace and dtype
# --------------------------------------------------------------------------


def library(x: Any) -> str:
    """``"torch"``, ``"jax"``, ``"numpy"`` (NumPy arrays, scalars, sequences) or ``"array_api"``."""
    if type(x) is np.ndarray:  # the common case first: every call asks, several times
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "detach"):
        return "torch"
    if mod.startswith(("jax", "jaxlib")):
        return "jax"
    if isinstance(x, (np.ndarray, np.generic)) or not hasattr(x, "__array_namespace__"):
        return "numpy"
    return "array_api"


def namespace(x: Any) -> Any:
    """The array-API namespace of ``x``; PyTorch's and JAX's named directly, so that compilers trace it.

    NumPy's is named directly too: ``array_api_compat.array_namespace`` of a
    NumPy array is that module, and asking it costs more than a small call's kernel.
    """
    lib = library(x)
    if lib == "numpy" and isinstance(x, (np.ndarray, np.generic)):
        return _numpy_namespace()
    if lib == "torch":
        import array_api_compat.torch as xp

        return xp
    if lib == "jax":
        import jax.numpy as jnp

        return jnp
    import array_api_compat

    return array_api_compat.array_namespace(x)


@functools.cache
def _numpy_namespace() -> Any:
    import array_api_compat.numpy as npx

    return npx


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"bfloat16"``, ...: the dtype's name whatever its library (``torch.float32`` too)."""
    if isinstance(dtype, np.dtype):  # formatting a NumPy dtype as text is slower than its name
        return str(dtype.name)
    return str(dtype).split(".")[-1]


def array_in(x: Any, name: str) -> tuple[Array, Any]:
    """``(array, xp)``: ``x`` as an array of its own library, float (ints and bools promoted).

    NumPy input keeps NumPy's namespace; a ``numpy.ma.MaskedArray`` is
    refused, since dropping its mask would silently compute on masked values.
    """
    lib = library(x)
    if lib == "numpy":
        arr = numpy_in(x, name)
        xp = namespace(arr)
    else:
        arr, xp = x, namespace(x)
        if lib == "torch":
            torch_checks(arr, name)
    kind = dtype_name(arr.dtype)
    if kind in FLOATS:
        return arr, xp
    if "complex" in kind:
        raise DtypeError(
            f"{name} has complex dtype {kind}; softmax-family functions are defined for real input "
            f"only. Allowed: {ALLOWED}."
        )
    if kind == "bool" or kind.startswith(("int", "uint")):
        return xp.astype(arr, float_for(arr, xp)), xp
    raise DtypeError(f"{name} has dtype {kind}, which is not supported. Allowed: {ALLOWED}.")


def torch_checks(x: Any, name: str) -> None:
    """What the PyTorch adapter cannot take, refused by name rather than failing inside PyTorch."""
    import torch

    if x.layout != torch.strided:
        raise ArgumentError(f"{name} is a {x.layout} tensor; sparse tensors are not supported. Pass {name}.to_dense().")
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x):
        raise ArgumentError(
            f"{name} is traced by a torch.func transform (grad, vmap, jacrev, ...), which is not "
            "supported; use torch.autograd (loss.backward() or torch.autograd.grad) instead."
        )


def float_for(x: Array, xp: Any) -> Any:
    """The float dtype integers and bools are promoted to: float64 where the library has it."""
    if library(x) == "jax":
        import jax

        x64 = jax.config.read("jax_enable_x64")  # type: ignore[no-untyped-call]  # jax leaves Config.read unannotated
        return xp.float64 if x64 else xp.float32
    return xp.float64


def numpy_in(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ma.MaskedArray):
        raise ArgumentError(
            f"{name} is a numpy.ma.MaskedArray; its mask would be lost. Pass {name}.data with "
            f"where=~{name}.mask instead."
        )
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name} could not be read as an array ({exc}); give a rectangular numeric array.") from None
    if arr.dtype.kind in "OUSVMm" and arr.dtype.name != "bfloat16":
        raise DtypeError(f"{name} has dtype {arr.dtype} (object, string, time or structured); Allowed: {ALLOWED}.")
    return native(arr)


def native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (a copy if it was swapped): the kernels take native numbers only."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def like(a: Any, x: Array, xp: Any, name: str, *, dtype: Any = None) -> Array:
    """An auxiliary argument (mask, weights, target) as an array of ``x``'s library and device."""
    if library(a) == library(x) and library(x) != "numpy":
        return a if dtype is None else xp.astype(a, dtype)
    if library(a) == "torch":
        a = a.detach().cpu().numpy()
    arr = numpy_in(a, name)
    if library(x) == "numpy":
        return arr if dtype is None else arr.astype(dtype)
    return xp.asarray(arr if dtype is None else arr, device=device(x), **({} if dtype is None else {"dtype": dtype}))


def device(x: Array) -> Any:
    import array_api_compat

    return array_api_compat.device(x)


def weights_in(b: Any, x: Any, arr: Array, xp: Any) -> tuple[Array, Array]:
    """``(x, b)`` in the dtype they compute and return in, ``b`` as an array on ``x``'s device.

    ``x`` is the input as given (its dtype before integers are promoted) and
    ``arr`` the array :func:`array_in` made of it. A Python scalar ``b`` takes
    ``arr``'s dtype, as the array API's Python scalars do; arrays promote by
    :func:`common_float`.
    """
    if type(b) in (bool, int, float) and math.isfinite(b):
        return arr, xp.asarray(float(b), dtype=arr.dtype, device=device(arr))
    raw = like(b, arr, xp, "b")
    if "complex" in dtype_name(raw.dtype):
        array_in(raw, "b")  # the DtypeError that names b
    given = getattr(x, "dtype", None)  # a list or a Python number: NumPy's reading of it, which arr kept
    wide = common_float(arr.dtype if given is None else given, raw.dtype, arr, xp)
    bb, _ = array_in(raw, "b")
    return (arr if arr.dtype == wide else xp.astype(arr, wide)), (bb if bb.dtype == wide else xp.astype(bb, wide))


def common_float(a: Any, b: Any, arr: Array, xp: Any) -> Any:
    """The float dtype two inputs of dtypes ``a`` and ``b`` compute in, by their library's promotion.

    An integer (or bool) with a float gives what the library's ``result_type``
    gives (NumPy: float64 for int64 with float32; PyTorch and JAX: the float's
    dtype); two integer dtypes give :func:`float_for`; where the library
    refuses to promote across kinds (array-api-strict), the floats promote with
    the default float, as SciPy does.
    """
    try:
        wide = xp.result_type(a, b)
    except TypeError:
        floats = [d for d in (a, b) if dtype_name(d) in FLOATS]
        return xp.result_type(*floats, float_for(arr, xp))
    return wide if dtype_name(wide) in FLOATS else float_for(arr, xp)


def numeric(a: Array, name: str) -> None:
    """A real-valued auxiliary array (weights ``b``, ``weight``, ``pos_weight``), or a named error."""
    kind = dtype_name(a.dtype)
    if kind in FLOATS or kind.startswith(("int", "uint")) or kind == "bool":
        return
    raise DtypeError(f"{name} has dtype {kind}; it must hold real numbers (float, integer or bool).")


def mask_in(where: Any, x: Array, xp: Any, shape: tuple[int, ...]) -> Array | None:
    """``where`` as a bool array broadcast to ``shape``; None stays None."""
    if where is None:
        return None
    mask = like(where, x, xp, "where")
    if dtype_name(mask.dtype) != "bool":
        raise DtypeError(f"where has dtype {dtype_name(mask.dtype)}; it must be a bool array (True = use the entry).")
    return broadcast(mask, shape, xp, "where", "the input's")


def broadcast(a: Array, shape: tuple[int, ...], xp: Any, name: str, what: str) -> Array:
    try:
        np.broadcast_shapes(tuple(a.shape), shape)
        if np.broadcast_shapes(tuple(a.shape), shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ShapeError(
            f"{name} of shape {tuple(a.shape)} does not broadcast to {what} shape {tuple(shape)}."
        ) from None
    return xp.broadcast_to(a, tuple(shape))


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def real_option(value: Any, name: str, ok: Callable[[float], bool], allowed: str) -> float:
    """``value`` as a float for which ``ok`` holds, or an ArgumentError saying ``allowed``."""
    if isinstance(value, (bool, np.bool_)) or (hasattr(value, "shape") and tuple(value.shape) != ()):
        raise ArgumentError(f"{name}={value!r} is not a real number; it must be {allowed}.")
    # float() of a tensor that requires grad warns; an option carries no gradient (a Python number,
    # the common case, is not asked: torch.compile cannot trace library()'s look at the type's module)
    if not isinstance(value, (int, float)) and library(value) == "torch":
        value = value.detach()
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name}={value!r} is not a real number; it must be {allowed}.") from None
    if math.isnan(v) or not ok(v):
        raise ArgumentError(f"{name}={value!r} is not allowed; it must be {allowed}.")
    return v


def temperature(value: Any) -> float:
    return real_option(value, "temperature", lambda t: math.isfinite(t) and t > 0, "finite and > 0")


def int_option(value: Any, name: str, allowed: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name}={value!r} is not an int; it must be {allowed}.")
    return int(value)


def choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ArgumentError(f"{name}={value!r} is not one of {allowed}.")
    return value


# --------------------------------------------------------------------------
# Axes and rows
# --------------------------------------------------------------------------


def normalize_axes(axis: AxisLike, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """The reduction axes as sorted non-negative ints; ``None`` means every axis.

    A 0-d array accepts ``-1``, ``0`` and ``()`` and treats its one element
    as the slice, as PyTorch does.
    """
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, without the general checks
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    items = (axis,) if is_int(axis) else axis
    if not isinstance(items, (tuple, list)) or not all(is_int(a) for a in items):
        raise AxisError(f"{name}={axis!r} is not an int or a tuple of ints; give e.g. axis=-1 or axis=(0, 1).")
    if ndim == 0:
        if any(int(a) not in (-1, 0) for a in items):
            raise AxisError(f"{name}={axis!r} is out of range for a 0-d array; allowed: -1, 0 or ().")
        return ()
    out = []
    for a in items:
        if not -ndim <= int(a) < ndim:
            raise AxisError(
                f"{name}={axis!r} is out of range for an array of {ndim} dimensions; allowed: [{-ndim}, {ndim})."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise AxisError(f"{name}={axis!r} repeats an axis; each axis may appear once.")
    return tuple(sorted(out))


def class_axis(axis: Any, ndim: int, name: str) -> tuple[int, ...]:
    """The one class axis of a loss: an int, or the same AxisError every function raises."""
    if not is_int(axis):
        raise AxisError(f"axis={axis!r} must be a single int: the class axis.")
    if ndim == 0:
        raise ShapeError(f"{name} is 0-d; it needs a class axis (shape [C], [N, C] or [N, C, d1, ...]).")
    return normalize_axes(axis, ndim)


def is_int(a: Any) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


@dataclass(frozen=True)
class Rows:
    """An array seen as ``(B, K)``: the reduced axes moved last and merged.

    ``batch`` is the shape of a reduction's result; ``moved`` the shape with
    the reduced axes moved to the end, before they were merged.
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    batch: tuple[int, ...]
    moved: tuple[int, ...]
    k: int
    n: int

    @classmethod
    def of(cls, shape: tuple[int, ...], axes: tuple[int, ...]) -> Rows:
        shape = tuple(shape)
        if len(axes) == 1 and axes[0] == len(shape) - 1:  # the last axis: most calls, no list work
            batch = shape[:-1]
            return cls(shape, axes, batch, shape, shape[-1], math.prod(batch))
        keep = [d for d in range(len(shape)) if d not in axes]
        batch = tuple(shape[d] for d in keep)
        reduced = tuple(shape[d] for d in axes)
        return cls(shape, axes, batch, batch + reduced, math.prod(reduced), math.prod(batch))

    @property
    def trailing(self) -> bool:
        return self.axes == tuple(range(len(self.shape) - len(self.axes), len(self.shape)))

    def split(self, a: Array, xp: Any) -> Array:
        """``a`` (of the full shape) as ``(B, K)``."""
        if not self.trailing:
            a = xp.moveaxis(a, self.axes, tuple(range(len(self.shape) - len(self.axes), len(self.shape))))
        return xp.reshape(a, (self.n, self.k))

    def join(self, a: Array, xp: Any) -> Array:
        """Inverse of :meth:`split` for an array of ``(B, K)``."""
        a = xp.reshape(a, self.moved)
        if self.trailing:
            return a
        return xp.moveaxis(a, tuple(range(len(self.shape) - len(self.axes), len(self.shape))), self.axes)

    def reduced(self, a: Array, xp: Any, keepdims: bool) -> Array:
        """A per-row ``(B,)`` result in the batch shape, with the reduced axes kept as 1 if asked."""
        a = xp.reshape(a, self.batch)
        if keepdims:
            a = xp.reshape(a, tuple(1 if d in self.axes else n for d, n in enumerate(self.shape)))
        return a

    def cotangent(self, g: Array, xp: Any, keepdims: bool) -> Array:
        """A reduction's cotangent (result-shaped) as ``(B,)``."""
        out_shape = tuple(1 if d in self.axes else n for d, n in enumerate(self.shape)) if keepdims else self.batch
        g = broadcast(g, out_shape, xp, "g", "the result's")
        return xp.reshape(g, (self.n,))


# --------------------------------------------------------------------------
# Results out
# --------------------------------------------------------------------------


def out(a: Array, xp: Any) -> Any:
    """A NumPy 0-d result as a NumPy scalar (as NumPy's own reductions give); other libraries as they are."""
    if isinstance(a, np.ndarray) and a.ndim == 0:
        return a[()]
    return a


# --------------------------------------------------------------------------
# Which backend
# --------------------------------------------------------------------------


def backend(x: Array) -> Any:
    """The module that computes on ``x``: a library adapter, or :mod:`._compute` itself."""
    lib = library(x)
    if lib == "torch":
        from ._backends import torch as torch_adapter

        return torch_adapter
    if lib == "jax":
        from ._backends import jax as jax_adapter

        return jax_adapter
    from ._backends import plain

    return plain
