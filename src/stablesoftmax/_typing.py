"""The types the public signatures are written in.

A public function takes an array of some library and answers in that
library (``sample``, which computes on the host, and ``linear_cross_entropy``
overload PyTorch and NumPy only). Three kinds of input, in the order an
overload tries them:

* a NumPy array or NumPy scalar: the answer is NumPy's. A result with no
  axes left is a NumPy scalar, as NumPy's own reductions give (``float64``,
  ``float32``, ``float16``, or ml_dtypes' ``bfloat16``, whose scalar type
  ml_dtypes declares only as a ``numpy.generic``); any other result is an
  ``ndarray``. Which of the two depends on the shape, which the types do not
  carry, so the result is typed as either: :data:`NumpyResult`.
* any other array (PyTorch tensor, JAX array, array-api-strict or CuPy
  array): the answer is an array of the same type, :data:`ArrayT`.
* a Python scalar, a (nested) sequence, or anything else NumPy reads (an
  object with ``__array__``, such as a pandas ``Series``): the answer is
  NumPy's, as for the first kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["Array", "ArrayT", "ArrayIn", "NumpyIn", "NumpyResult", "NumpyArray"]


class Array(Protocol):
    """What NumPy arrays, ``torch.Tensor``, ``jax.Array`` and array-API arrays all have.

    ``shape`` is the array API's ``tuple[int | None, ...]`` (an unknown
    length is ``None`` there); a ``torch.Size`` is a ``tuple[int, ...]``.
    ``__dlpack__`` is what tells an array library's array from a container
    that only has a shape and a dtype (a pandas ``Series``): such input is
    read by NumPy and answered in NumPy, so it must not match here.
    """

    @property
    def shape(self) -> tuple[int | None, ...]: ...

    @property
    def ndim(self) -> int: ...

    @property
    def dtype(self) -> Any: ...  # a numpy.dtype, torch.dtype or the namespace's own dtype object

    @property
    def __dlpack__(self) -> Callable[..., Any]: ...  # a property: each library's method has its own parameters


#: An array of any library; the result of a public function has the input's type.
ArrayT = TypeVar("ArrayT", bound=Array)

#: NumPy input proper: an ndarray or a NumPy scalar.
NumpyIn = npt.NDArray[Any] | np.generic

#: A NumPy array, as the gradients give it (they keep the input's shape, so never a scalar).
NumpyArray = npt.NDArray[Any]

#: What a function answers for NumPy input: an ndarray, or a NumPy scalar where no axis is left.
NumpyResult = npt.NDArray[Any] | np.generic

#: An auxiliary argument (``where``, ``b``, ``target``, ``weight``, ``g``): any array or anything NumPy reads.
ArrayIn = Array | npt.ArrayLike
