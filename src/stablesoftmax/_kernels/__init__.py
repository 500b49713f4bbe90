"""The accelerators, side by side, and the one place that chooses among them.

Every accelerator computes the same per-row parts of :mod:`.._state` for rows
``(N, K)``, and writes outputs and gradients from them. Each is one module of
this package implementing the same small protocol, :class:`Accelerator`:

* ``state_rows(x, /, *, where=None, out=None, log=False)`` gives the state
  ``(m, k, s)`` of each row in float64 and, with ``out``, writes its softmax
  (``log=False``) or log-softmax, rounded once;
* ``cross_entropy_rows(x, target, /, *, where, weight, label_smoothing, grad, g, z_grad)``
  gives the loss parts of each row (:class:`.._state.LossParts` fields: the
  state, the target's logit, and the weighted shift sum that smoothing needs)
  and, with ``grad``, writes the gradient from the per-row coefficients ``g``
  and ``z_grad`` (given ``parts``, the rows' parts from an earlier call, an
  accelerator that finds them in a pass of their own may skip it);
* ``block_gradient_rows(x, first, m, k, s, target, alive, big_a, g, z_coef, smooth, hot, *, weight, softcap, out)``
  writes the gradient of a block of classes ``first : first + K`` of rows
  whose whole state and coefficients (:class:`.._state.Coefficients`) are
  known from every block: a chunk of ``linear_cross_entropy``.

Nobody else finishes: the losses and their reductions are :mod:`.._state`'s.

The accelerators:

* :mod:`.cpu`, numba kernels for NumPy rows (and CPU tensors viewed as NumPy);
* :mod:`.triton`, Triton kernels for torch tensors on a device Triton compiles
  for (CUDA, ROCm, XPU), and for any torch tensor under :func:`triton_path`
  (on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``);
* :mod:`.reference`, the array-API reference (:mod:`.._reference` over
  :mod:`.._state`), which serves everything else: any library, any device,
  and under :func:`reference_path`.

:func:`select` is the only function that decides, and :mod:`.._compute` the
only module that calls it. Adding an accelerator means one module here, one
branch in :func:`select` and one entry in the conformance suite
(``tests/kernels/``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Protocol

__all__ = ["Accelerator", "select", "reference_path", "triton_path", "triton_active", "DISABLE_ENV"]

DISABLE_ENV = "STABLESOFTMAX_DISABLE_KERNELS"
_REFERENCE = contextvars.ContextVar("stablesoftmax_reference_path", default=False)
_TRITON = contextvars.ContextVar("stablesoftmax_triton_path", default=False)
_CPU: ModuleType | None | bool = False  # the numba module once looked up; None when it cannot load
_GPU: ModuleType | None | bool = False  # the Triton module, likewise
_TRITON_DEVICES = ("cuda", "xpu")  # ROCm's tensors say cuda

# DISABLE_ENV is read at every call, so that setting it at run time takes effect. os.environ.get
# encodes the name and decodes the value each time: 0.6 us on AMD Zen 5, as much as a short
# kernel call. CPython's os.environ keeps the encoded pairs in ``_data``, which os.environ's
# own writes update; it is read directly where it exists (0.05 us), else through get, and
# through get too if os.environ has been replaced by another mapping (a test's patch).
_ENV: Any = os.environ
_ENV_STORE: Any = getattr(os.environ, "_data", None)
_ENV_KEY: Any = os.environ.encodekey(DISABLE_ENV) if _ENV_STORE is not None else None
_ENV_ONE: Any = os.environ.encodevalue("1") if _ENV_STORE is not None else None


def _disabled() -> bool:
    """Whether ``STABLESOFTMAX_DISABLE_KERNELS`` is ``1`` now."""
    env = os.environ
    if env is _ENV and _ENV_STORE is not None:
        return bool(_ENV_STORE.get(_ENV_KEY) == _ENV_ONE)
    return env.get(DISABLE_ENV, "") == "1"


class Accelerator(Protocol):
    """What every accelerator module offers (see the module docstring)."""

    def state_rows(self, x: Any, /, *, where: Any = None, out: Any = None, log: bool = False) -> tuple[Any, Any, Any]:
        """``(m, k, s)`` per row, float64; ``out`` receives softmax or log-softmax."""

    def cross_entropy_rows(self, x: Any, target: Any, /, **options: Any) -> Any:
        """The loss parts per row; with ``grad=``, the gradient written from ``g`` and ``z_grad``."""

    def block_gradient_rows(self, x: Any, first: int, *rows: Any, out: Any, **options: Any) -> None:
        """A block's gradient into ``out`` from the rows' whole state ``m, k, s`` and their coefficients."""


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within this block every function takes the array-API reference path, never the kernels.

    The lab uses it so that its results are the same bytes with or without
    numba (the two paths agree within the ulp goals, not bit for bit).
    """
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


@contextlib.contextmanager
def triton_path() -> Iterator[None]:
    """Within this block torch tensors on any device take the Triton kernels, where Triton can run.

    On a CPU tensor that means Triton's interpreter: set ``TRITON_INTERPRET=1``
    before anything imports triton. The test suite runs the Triton kernels so.
    """
    token = _TRITON.set(True)
    try:
        yield
    finally:
        _TRITON.reset(token)


def select(x: Any) -> Accelerator | None:
    """The accelerator for rows ``x``, or None where the array-API reference computes.

    * NumPy rows of a floating dtype on the host (float16 and ml_dtypes'
      bfloat16 included, read as their bits): the numba kernels;
    * torch tensors on a device Triton compiles for, or any torch tensor
      under :func:`triton_path`: the Triton kernels;
    * None under :func:`reference_path`, with ``STABLESOFTMAX_DISABLE_KERNELS=1``,
      or where the accelerator's library is missing.
    """
    module: Accelerator | None  # a module is structurally its protocol
    if _is_numpy(x):
        module = _cpu() if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else None
        return module
    if _is_torch(x) and (_TRITON.get() or x.device.type in _TRITON_DEVICES):
        module = _gpu()
        return module
    return None


def triton_active() -> bool:
    """Whether a :func:`triton_path` block is open."""
    return _TRITON.get()


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _gpu() -> ModuleType | None:
    """The Triton module when it can run here, else None; imported on first use."""
    global _GPU
    if _REFERENCE.get() or _disabled():
        return None
    if _GPU is False:
        module: ModuleType | None
        try:
            from . import triton as module
        except ImportError:
            module = None
        _GPU = module if module is not None and module.available() else None
    return _GPU if isinstance(_GPU, ModuleType) else None


def _is_numpy(x: Any) -> bool:
    return type(x).__module__ == "numpy"


def _cpu() -> ModuleType | None:
    """The numba module when it can run here, else None; imported on first use (numba takes 0.3 s)."""
    global _CPU
    if _REFERENCE.get() or _disabled():
        return None
    if _CPU is False:
        module: ModuleType | None
        try:
            from . import cpu as module
        except ImportError:  # numba missing or broken: the reference serves
            module = None
        _CPU = module if module is not None and module.available() else None
    return _CPU if isinstance(_CPU, ModuleType) else None


def host_kernels() -> ModuleType | None:
    """The host's accelerator module (with its fast paths: ``lse_rows``, ``lse_vector``), or None."""
    return _cpu()
