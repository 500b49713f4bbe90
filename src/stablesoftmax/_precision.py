"""Precision and rounding: the compute dtype, widening into it, and the one rounding back.

Every function of the family computes in float64 where the device has it
(float32 where it has not: Apple MPS, JAX without x64) and rounds its result
once to the input's dtype. 16-bit and float32 results are then correctly
rounded from a value far more accurate than their half ulp.
"""

from __future__ import annotations

from typing import Any

from ._arrays import compute_dtype

__all__ = ["compute_dtype", "is_numpy", "widen", "round_to", "masked", "masked_weights"]

Array = Any


def is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def widen(x: Array, xp: Any) -> tuple[Array, bool]:
    """``(x in the compute dtype, needs_twosum)``.

    The shift ``x - m`` needs its TwoSum error term only when the input is
    as wide as the compute dtype; a narrower input's difference is exact in
    float64. In a float32 compute dtype the shift is always compensated.
    """
    wide = compute_dtype(x, xp)
    needs_twosum = wide == xp.float32 or x.dtype == wide
    return (x if x.dtype == wide else xp.astype(x, wide)), needs_twosum


def round_to(out: Array, like: Array, xp: Any) -> Array:
    """``out`` (compute dtype) rounded once to ``like``'s dtype.

    A float64 -> 16-bit cast rounds twice in NumPy (bfloat16), PyTorch and
    JAX: through float32. Rounding to float32 with round-to-odd first makes
    the second rounding the correct one (Boldo & Melquiond, "Emulation of FMA
    and correctly rounded sums: proved algorithms using rounding to odd",
    IEEE TC 2008). Odd is found from the significand's parity, ``|f| / ulp(f)``.
    """
    dtype = like.dtype
    if out.dtype == dtype:
        return out
    if _itemsize(dtype) != 2 or out.dtype == xp.float32:
        return xp.astype(out, dtype)
    near = xp.astype(out, xp.float32)
    back = xp.astype(near, out.dtype)
    inexact = xp.isfinite(out) & xp.isfinite(back) & (back != out)
    toward = xp.where(back > out, xp.full_like(near, -xp.inf), xp.full_like(near, xp.inf))
    other = xp.nextafter(near, toward)
    mag = xp.abs(near)
    mag = xp.where(xp.isfinite(mag), mag, xp.zeros_like(mag))  # an infinite result is exact: no ulp to take
    ulp = xp.astype(xp.nextafter(mag, xp.full_like(mag, xp.inf)), out.dtype) - xp.astype(mag, out.dtype)
    ulp = xp.where(ulp > 0, ulp, xp.ones_like(ulp))
    even = xp.remainder(xp.astype(mag, out.dtype) / ulp, 2) == 0
    odd = xp.where(inexact & even, other, near)
    return xp.astype(odd, dtype)


def _itemsize(dtype: Any) -> int:
    name = str(dtype).split(".")[-1]
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(name, 8)


def masked(x: Array, mask: Array | None, xp: Any) -> Array:
    """A masked entry is exactly a ``-inf`` entry, whatever it holds."""
    return x if mask is None else xp.where(mask, x, xp.full_like(x, -xp.inf))


def masked_weights(b: Array, mask: Array | None, xw: Array, xp: Any) -> Array:
    """``b`` in the compute dtype, 0 where masked: a masked term is absent, whatever its weight."""
    bw = xp.astype(b, xw.dtype)
    return bw if mask is None else xp.where(mask, bw, xp.zeros_like(bw))
