"""What the library knows of each array library: its compute dtype, and whether values can be read now.

One table, :data:`LIBRARIES`, filled when this module is imported and never
changed afterwards. Nothing is registered when an adapter happens to be
imported: a table that changed during a call is what made a cold
``torch.compile`` fail (Dynamo guards on it, and the guard broke on the frame
that filled it) and made the first call in a process check less than the
second. The rules import nothing: an array of a library reaches them only
once that library is loaded, so they find it in ``sys.modules``.

An array of a library with no row gets float64 and no value reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Library", "LIBRARIES", "library_key", "compute_dtype", "concrete_host"]


@dataclass(frozen=True)
class Library:
    """``compute_dtype(x, xp)``: float64 unless the device has none; ``concrete(x)``: values readable now."""

    compute_dtype: Callable[[Any, Any], Any]
    concrete: Callable[[Any], bool]


def _float64(x: Any, xp: Any) -> Any:
    return xp.float64


def _never(x: Any) -> bool:
    return False


def _torch_compute_dtype(x: Any, xp: Any) -> Any:
    return xp.float32 if x.device.type == "mps" else xp.float64  # MPS has no float64


def _torch_concrete(a: Any) -> bool:
    """A CPU tensor with storage, outside tracing: never a fake, functorch-wrapped or compiling tensor."""
    torch = sys.modules["torch"]
    if a.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if type(a).__name__ == "FakeTensor" or a.is_meta:
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(a)


def _jax_compute_dtype(x: Any, xp: Any) -> Any:
    x64 = sys.modules["jax"].config.read("jax_enable_x64")
    return xp.float64 if x64 else xp.float32


LIBRARIES: dict[str, Library] = {
    "numpy": Library(_float64, lambda a: isinstance(a, np.ndarray)),
    "torch": Library(_torch_compute_dtype, _torch_concrete),
    "jax": Library(_jax_compute_dtype, _never),
    "jaxlib": Library(_jax_compute_dtype, _never),
}
_OTHER = Library(_float64, _never)


def library_key(x: Any) -> str:
    """The top-level module of ``x``'s type: ``"torch"``, ``"jax"``, ``"numpy"``, ..."""
    return type(x).__module__.split(".")[0]


def compute_dtype(x: Any, xp: Any) -> Any:
    """float64, unless the device has none (Apple MPS, JAX without x64): then float32."""
    return LIBRARIES.get(library_key(x), _OTHER).compute_dtype(x, xp)


def concrete_host(a: Any) -> bool:
    """True for arrays whose values can be read without tracing or a device sync."""
    if isinstance(a, np.ndarray):
        return True
    return LIBRARIES.get(library_key(a), _OTHER).concrete(a)
