"""Compiled CPU kernels for rows of float64, float32, float16 and bfloat16: numba, one thread unless asked.

Each kernel computes, per row, the state of :mod:`stablesoftmax._state`
(Blanchard, Higham & Higham 2021): the max ``m``, the index ``k`` of its
first occurrence, and ``s``, the sum of ``exp(x_i - m)`` over ``i != k``, in
float64, so that ``lse = m + log1p(s)``, ``log_softmax = (x - m) - log1p(s)``
and ``softmax = exp(x - m) / (1 + s)``. Rows whose max is not finite follow
the same formulas under the state's shift rule (``x_i - m`` is 0 where
``x_i == m``, ``-inf`` everywhere when ``m = -inf``), so the kernels hold no
table of special values: an all ``-inf`` or all-masked row has ``m = -inf,
s = 0``; a row with ``+inf`` has ``m = +inf`` and ``s`` the number of
``+inf`` entries less one; a row with NaN has ``m = s = NaN``. A masked
entry (``where`` False) is exactly a ``-inf`` entry, whatever it holds.

What the kernels add to the reference is speed:

* ``exp`` is written out so that LLVM vectorises it: ``d = n ln2 + r`` with
  ``n`` rounded by the 1.5 * 2**52 shifter trick, a polynomial for
  ``exp(r)`` on ``|r| <= ln2/2``, and ``2**n`` built by integer bit
  manipulation (no libm call, and no float-to-int64 conversion, which AVX2
  lacks). The coefficients are Chebyshev interpolants computed in mpmath.
* float32 input is computed in float64, where ``x - m`` is exact, with a
  degree-9 polynomial and a one-constant reduction: relative error
  <= 4.1e-14 over [-708, 0], so the float32 result is rounded once from a
  value far more accurate than its half ulp.
* float64 input uses a two-constant Cody-Waite reduction, a degree-11
  polynomial (relative error 1.7e-17) and correctly scaled subnormal
  results (max 1.002 ulp against mpmath over [-745, 0]), and carries the
  rounding error of ``x - m`` (TwoSum) into each term, as the reference does.
* Two sweeps per row: the max, then the terms. The max of row ``i + 1`` is
  taken inside the term sweep of row ``i``, so the read of the next row from
  memory overlaps this row's arithmetic; the term sweep reads from cache.
  Terms are summed in blocks (inside a block the order is the vector
  lanes'), and the block sums with Neumaier's compensated addition, so the
  error does not grow with the row length.
* Softmax, log-softmax and the cross-entropy gradient are written from the
  cached row and its terms, rounded once to the output dtype. A float32
  softmax and an unsmoothed gradient are written inside the next row's term
  loop, where their stores overlap that row's arithmetic (-14% and -17%).
* A masked row is swept as a copy with ``-inf`` where masked, made while the
  previous row is swept: a select inside the term loop compiled to code 1.8x
  slower.
* float16 and bfloat16 rows are read as their bits (numba has neither type),
  never copied: each entry is widened in registers, exactly (bfloat16 is the
  high half of a float32; float16 by the CPU's conversion instruction, F16C on
  x86, or else by rebiasing its exponent, subnormals, infinities and NaN
  included), and then computed as float32 rows are, to the same float64
  values. Their 16-bit outputs are rounded once from those values, to nearest
  even: rounded to float32 with round-to-odd first, then to 16 bits (on the
  integer bits, or by F16C for float16), which is correct for any format of
  at most 22 bits (Boldo & Melquiond, IEEE TC 2008). F16C took the float16
  rows from 1.7x to 1.0x PyTorch's softmax time (``benchmarks/torch16.py``). Inside
  the compiled code the bits' dtype names the format: uint16 for bfloat16,
  int16 for float16, so that numba compiles each its own loops.

Every kernel drops the GIL. ``threads=n`` splits the rows into ``n`` bands
run at once; each row is computed exactly as on one thread, so the bytes do
not depend on ``n`` (``tests/test_threads.py``). These functions take
``threads=1`` unless told; the library's callers (:mod:`.._compute`) pass
every core the process may use from ``THREADS_FROM`` entries on, capped by
``stablesoftmax.set_num_threads`` or ``STABLESOFTMAX_NUM_THREADS``.

The vector width is LLVM's choice for the host CPU: ymm (4 doubles) with
AVX2, zmm (8) on AMD Zen 4 and Zen 5, and ymm again on Intel's AVX-512 CPUs, whose LLVM
tuning prefers 256-bit vectors unless numba is started with
``NUMBA_CPU_FEATURES=<host features>,-prefer-256-bit`` (process-wide, so left
to the user). ``python benchmarks/kernels_probe.py asm`` counts the registers
for each target, cross-compiled.

Importing this module imports numba (about 0.3 s); import it lazily, only
where a kernel will run. Kernels are compiled on first use and cached on disk
(``cache=True``), and that cache is keyed per CPU: numba's
``numba.core.caching.Cache._index_key`` files each compiled signature under
``codegen.magic_tuple()`` (``numba.core.codegen.CPUCodegen.magic_tuple``),
which is the LLVM target triple, the host CPU's name (``znver3``,
``sapphirerapids``; ``NUMBA_CPU_NAME`` when set) and its feature string
(``+avx2,+fma,-avx512f,...``; ``NUMBA_CPU_FEATURES`` when set). A cache
directory shared between CPU classes (a network home, a container image)
therefore holds one entry per class, and code built for AVX-512 never loads
on an AVX2 CPU; ``tests/test_threads.py`` checks the key of a compiled kernel.
Set ``STABLESOFTMAX_DISABLE_KERNELS=1`` to turn them off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .._errors import ArgumentError, DtypeError, ShapeError, TargetError
from ._coefficients import (
    EXP_NARROW,
    EXP_SHORT,
    EXP_SHORT_ERROR,
    EXP_WIDE,
    LN2,
    LN2_HI,
    LN2_LO,
    LOG2E,
    SHIFTER,
    TWO_M64,
)

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload
except ImportError:  # numba is an optional dependency (extra "fast")
    numba = None

__all__ = [
    "available",
    "state_rows",
    "cross_entropy_rows",
    "CrossEntropyRows",
    "lse_rows",
    "softmax_rows",
    "log_softmax_rows",
    "lse_vector",
    "block_gradient_rows",
    "SHORT_ERROR",
]

_DISABLE_ENV = "STABLESOFTMAX_DISABLE_KERNELS"
# Terms per vectorised partial sum; block sums are added with compensation.
# Inside a block each vector lane adds block/16 terms in a row, which costs
# float64 accuracy (blocks of 512 gave 2.4 eps on 1000 terms); float32 output
# does not see it, and there longer blocks save the per-block overhead.
_BLOCK_WIDE = 64
_BLOCK_NARROW = 1024
_LSE, _SOFTMAX, _LOG_SOFTMAX, _CE_GRAD = 0, 1, 2, 3  # what the third sweep writes
# How far a short sweep's s may lie from the accurate sweep's, relative: the short polynomial's
# bound, plus the two blocked sums' rounding (1024 terms a block: 2.3e-13). Every term is
# positive, so each term's relative error bounds the sum's.
SHORT_ERROR = EXP_SHORT_ERROR + 3e-13


def available() -> bool:
    """True when numba imported and ``STABLESOFTMAX_DISABLE_KERNELS`` is not ``1``."""
    return numba is not None and os.environ.get(_DISABLE_ENV, "") != "1"


# --------------------------------------------------------------------------
# The state, and the reductions over it
# --------------------------------------------------------------------------


def state_rows(
    x: np.ndarray,
    /,
    *,
    where: np.ndarray | None = None,
    out: np.ndarray | None = None,
    log: bool = False,
    threads: int = 1,
    format16: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state ``(m, k, s)`` of each row of ``x``; with ``out``, its softmax (or log-softmax) too.

    Parameters
    ----------
    x : ndarray, shape ``[N, K]``, C-contiguous
        float32, float64, float16 or bfloat16 (by dtype name, as ml_dtypes'),
        or uint16 holding the bits of a 16-bit format named by ``format16``.
    where : ndarray of bool, shape ``[N, K]``, C-contiguous, optional
        False entries count as ``-inf``, whatever they hold (NaN included).
    out : ndarray, shape ``[N, K]``, float64 or ``x``'s dtype, optional
        Receives ``softmax`` (``log=False``) or ``log_softmax`` (``log=True``)
        of every row, special rows included, rounded once (to nearest, ties to
        even). With 16-bit ``x`` it may also be uint16, receiving the bits.
    threads : int, default 1
    format16 : {"bfloat16", "float16"}, optional
        The format of uint16 ``x`` (and of a uint16 ``out``).

    Returns
    -------
    m : float64 ``[N]``
    k : int64 ``[N]``
        First index of the max (of the first NaN in a NaN row, as ``argmax``);
        0 for a row without mass; -1 when ``K = 0``.
    s : float64 ``[N]``
        ``sum_{i != k} exp(x_i - m)``; see the module docstring for rows whose
        max is not finite.
    """
    x, where = _check_rows(x, format16), _check_where(x, where)
    kind = _SOFTMAX if out is not None and not log else _LOG_SOFTMAX if out is not None else _LSE
    return _run_rows(x, where, _check_out(x, out) if out is not None else _NO_OUT, kind, threads)


def lse_rows(
    x: np.ndarray,
    *,
    where: np.ndarray | None = None,
    threads: int = 1,
    format16: str | None = None,
    swept_again: np.ndarray | None = None,
) -> np.ndarray:
    """logsumexp of each row of C-contiguous 2-D rows (any dtype :func:`state_rows` takes), as float64.

    float32 rows are swept with a shorter polynomial and a rounding test (see
    ``_needs_exact``): their float64 results may differ from :func:`state_rows`'s
    in the last bits, never in their rounding to float32. The rows the test
    sweeps again are counted into ``swept_again[0]`` (int64) when it is given.
    """
    if x.dtype != np.float32:
        m, _, s = state_rows(x, where=where, threads=threads, format16=format16)
    else:
        counter = np.zeros(1, np.int64) if swept_again is None else swept_again
        m, _, s = _run_rows(_check_rows(x), _check_where(x, where), _NO_OUT, _LSE, threads, counter)
    return np.asarray(m + np.log1p(s))


def softmax_rows(
    x: np.ndarray, out: np.ndarray, *, where: np.ndarray | None = None, threads: int = 1, format16: str | None = None
) -> None:
    """Write the softmax of each row of ``x`` into ``out`` (float64, or ``x``'s dtype)."""
    state_rows(x, where=where, out=out, threads=threads, format16=format16)


def log_softmax_rows(
    x: np.ndarray, out: np.ndarray, *, where: np.ndarray | None = None, threads: int = 1, format16: str | None = None
) -> None:
    """Write the log-softmax of each row of ``x`` into ``out`` (float64, or ``x``'s dtype)."""
    state_rows(x, where=where, out=out, log=True, threads=threads, format16=format16)


def lse_vector(x: np.ndarray) -> float:
    """logsumexp of a C-contiguous 1-D float32/float64 array, as a Python float.

    The same computation as :func:`lse_rows`, in one compiled call, for
    short vectors where the overhead of the general path would dominate.
    """
    m, s = _vector_parts(_check_vector(x))
    return float(m + math.log1p(s)) if math.isfinite(m) else float(m)


# --------------------------------------------------------------------------
# Cross-entropy: the loss parts and the gradient in the same sweeps
# --------------------------------------------------------------------------


class CrossEntropyRows(NamedTuple):
    """What :func:`cross_entropy_rows` returns, per row (all ``[N]``).

    ``m, k, s`` are the state of :func:`state_rows`. ``x_target`` is
    ``x[n, target[n]]`` as float64 (``-inf`` where that entry is masked).
    With label smoothing, ``shift_sum`` is ``sum_c w_c (x_c - m)`` over the
    allowed classes (the TwoSum errors of float64 input included; ``-inf``
    when an allowed logit is ``-inf``), ``allowed`` their number and
    ``weight_sum`` their ``sum_c w_c``; without smoothing these three are 0.
    """

    m: np.ndarray
    k: np.ndarray
    s: np.ndarray
    x_target: np.ndarray
    shift_sum: np.ndarray
    allowed: np.ndarray
    weight_sum: np.ndarray


def cross_entropy_rows(
    x: np.ndarray,
    target: np.ndarray,
    /,
    *,
    where: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    grad: np.ndarray | None = None,
    g: np.ndarray | None = None,
    z_grad: np.ndarray | None = None,
    threads: int = 1,
    format16: str | None = None,
    parts: CrossEntropyRows | None = None,  # an earlier call's: unused, the one sweep finds them anyway
    short: bool = False,
) -> CrossEntropyRows:
    r"""Cross-entropy loss parts of each row and, with ``grad``, its gradient, in one pass of ``exp``.

    With ``a`` the smoothing, ``K_n`` the allowed classes, ``W_n = sum w_c``
    over them, ``L = log1p(s)``, ``d_y = x_y - m``, ``D = shift_sum``, the loss
    is

    .. math:: \ell_n = (1 - a) w_y (L - d_y) + \frac{a}{K_n} (W_n L - D)

    (all terms >= 0: no cancellation). The gradient row written into ``grad``
    is ``g_n (A p_c - a_c) + z_n lse_n p_c`` with ``a_c`` the weighted target
    mass ``(1 - a) w_y [c = y] + (a / K_n) w_c``, ``A = sum_c a_c``; at the
    max ``k`` it is computed as ``((A - a_k) - a_k s) / (1 + s)``, which does
    not cancel when ``p_k`` rounds to 1.

    Parameters
    ----------
    x : ndarray ``[N, C]``, C-contiguous, ``C >= 1``
        Any dtype :func:`state_rows` takes.
    target : ndarray ``[N]`` of int64 in ``[0, C)``
        Map ignored elements to any valid class and give them ``g = 0``.
    where : ndarray of bool ``[N, C]``, optional
    weight : ndarray ``[C]`` of float64, optional
        Class weights (1 when None).
    label_smoothing : float in [0, 1]
    grad : ndarray ``[N, C]``, float64 or ``x``'s dtype, C-contiguous, optional
        Receives the gradient, rounded once (uint16 bits too, for 16-bit ``x``). Masked entries and ``+-inf``
        logits get 0, rows whose max is ``+-inf`` get 0, NaN rows NaN
        (whatever ``g``: the caller zeroes rows that are not live).
    g : ndarray ``[N]`` of float64
        Required with ``grad``: each row's cotangent times the reduction's
        factor (``g / sum w_y`` for a mean), not including ``w_y``.
    z_grad : ndarray ``[N]`` of float64, optional
        The z-loss term's factor ``2 z g_z``; the gradient gains ``z_grad lse p``.
    threads : int, default 1
    format16 : {"bfloat16", "float16"}, optional
        The format of uint16 ``x`` (and of a uint16 ``grad``).
    short : bool, default False
        Sweep float32 rows with the short polynomial (other dtypes ignore it):
        each ``s`` is then within ``SHORT_ERROR`` relative of the accurate
        sweep's, and the caller must test the rounding of what it finishes
        from them (Ziv's test; see ``_compute._kernel_ce``). Not with ``grad``,
        whose every entry would need the test.

    Returns
    -------
    CrossEntropyRows
    """
    if short and grad is not None:
        raise ArgumentError("cross_entropy_rows: short=True sweeps no gradient; pass grad=None, or short=False.")
    x, where = _check_rows(x, format16), _check_where(x, where)
    y, w, alpha, grad, g, z_grad = _check_ce(x, target, weight, label_smoothing, grad, g, z_grad)
    n = x.shape[0]
    parts = CrossEntropyRows(
        np.empty(n), np.empty(n, np.int64), np.empty(n), np.empty(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    )

    fast = np.zeros(1, np.int64) if short and x.dtype == np.float32 else None  # read, never written

    def band(r: slice) -> None:
        _ce_kernel(
            x[r],
            _band(where, r),
            y[r],
            w,
            alpha,
            _band(grad, r),
            _band(g, r),
            _band(z_grad, r),
            *(a[r] for a in parts),
            fast,
        )

    _in_bands(n, threads, band)
    _top_rows_shift_sum(parts, x, where)
    return parts


def _top_rows_shift_sum(parts: CrossEntropyRows, x: np.ndarray, where: np.ndarray | None) -> None:
    """``sum_c w_c (x_c - m)`` on rows whose max is ``+inf``, in place: the sweep leaves it undefined there.

    By the shift rule it is ``-inf`` unless every allowed entry is ``+inf`` (then 0).
    """
    top = parts.m == np.inf
    if not parts.allowed.any() or not top.any():
        return
    allowed = np.ones(x[top].shape, bool) if where is None else where[top]
    parts.shift_sum[top] = np.where(((x[top] == _POS_INF.get(x.dtype, np.inf)) | ~allowed).all(axis=1), 0.0, -np.inf)


# --------------------------------------------------------------------------
# Argument checks: the callers dispatch only what the kernels were built for
# --------------------------------------------------------------------------

_NO_OUT = np.empty((0, 0))
# 16-bit rows reach the compiled code as their bits, and the bits' dtype says the
# format: numba compiles each its own loops (it has no float16 or bfloat16 type).
_BITS = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
_FORMAT_OF = {bits: name for name, bits in _BITS.items()}
_POS_INF = {_BITS["bfloat16"]: 0x7F80, _BITS["float16"]: 0x7C00}  # +inf's bits


def block_gradient_rows(
    x: np.ndarray,
    first: int,
    m: np.ndarray,
    k: np.ndarray,
    s: np.ndarray,
    target: np.ndarray,
    alive: np.ndarray,
    big_a: np.ndarray,
    g: np.ndarray,
    z_coef: np.ndarray,
    smooth: np.ndarray,
    hot: float,
    *,
    weight: np.ndarray | None = None,
    softcap: float | None = None,
    out: np.ndarray,
) -> None:
    r"""Write the cross-entropy gradient of the block ``x`` of classes ``first : first + K`` into ``out``.

    The rows' whole state ``m, k, s`` (over every block) and their finish are
    known; this is :func:`.._state.block_gradient` for class targets, written
    from per-row coefficients in one pass of ``exp``:

    .. math:: g_n (A_n p_c - a_c) + z_n p_c, \quad a_c = w_c (h [c = y_n] + \sigma_n)

    with ``p_c = exp(x_c - m) / (1 + s)``, ``A_n = big_a``, ``g_n = g``,
    ``z_n = z_coef`` (``2 z g_z lse``), ``h = hot`` (``1 - a``) and
    ``\sigma_n = smooth`` (``a / K``). At the max ``k`` it is
    ``((A - a_k) - a_k s) / (1 + s)`` (no cancellation when ``p_k`` rounds to
    1). Then the softcap's derivative ``1 - (x / cap)^2``. Non-finite logits
    and rows not ``alive`` or whose max is ``+-inf`` get 0; alive NaN rows NaN.

    ``x`` float32 or float64 (C-contiguous ``[N, K]``), ``out`` float64 or ``x``'s dtype;
    ``out`` may be ``x`` itself, overwritten with its gradient.
    """
    if x.dtype.char not in "fd" or x.ndim != 2 or not x.flags.c_contiguous:
        raise ShapeError(f"x of shape {x.shape} and dtype {x.dtype}: a C-contiguous 2-D float32/float64 block.")
    out = _check_out(x, out)
    n, width = x.shape
    vectors = [_row_vector(a, n, name, np.float64) for a, name in ((m, "m"), (s, "s"), (big_a, "big_a"))]
    vectors += [_row_vector(a, n, name, np.float64) for a, name in ((g, "g"), (z_coef, "z_coef"), (smooth, "smooth"))]
    w = None if weight is None else _row_vector(weight, width, "weight", np.float64)
    cap = np.inf if softcap is None else float(softcap)
    _block_grad_kernel(
        x,
        int(first),
        vectors[0],
        _row_vector(k, n, "k", np.int64),
        vectors[1],
        _row_vector(target, n, "target", np.int64),
        _row_vector(alive, n, "alive", np.bool_),
        *vectors[2:],
        float(hot),
        w,
        cap,
        out,
    )


def _check_rows(x: np.ndarray, format16: str | None = None) -> np.ndarray:
    """``x`` as the compiled code takes it: float32/float64 as it is, 16-bit rows as their bits (a view)."""
    if numba is None:
        raise RuntimeError("stablesoftmax kernels need numba (pip install 'stablesoftmax[fast]').")
    if not isinstance(x, np.ndarray):
        raise DtypeError(f"x is {type(x).__name__}; kernels take ndarrays.")
    fmt = _format16(x, format16)
    if fmt is None and x.dtype.char not in "fd":  # float32, float64
        raise DtypeError(
            f"x has dtype {x.dtype}; kernels take float32, float64, float16 or bfloat16 ndarrays, "
            "or uint16 bits with format16='bfloat16' or 'float16'."
        )
    if x.ndim != 2 or not x.flags.c_contiguous:
        raise ShapeError(
            f"x has shape {x.shape} (C-contiguous: {x.flags.c_contiguous}); kernels take C-contiguous 2-D rows."
        )
    return x if fmt is None else x.view(_BITS[fmt])


def _format16(a: np.ndarray, format16: str | None, name: str = "x") -> str | None:
    """The 16-bit format of ``a``: its dtype's (float16, bfloat16), or ``format16`` for uint16 bits; else None."""
    if format16 is None:  # float32 and float64 by their char: dtype.name is a slow Python property
        return None if a.dtype.char in "fd" else a.dtype.name if a.dtype.name in _BITS else None
    if format16 not in _BITS:
        raise ArgumentError(f"format16={format16!r}; allowed: 'bfloat16', 'float16' or None.")
    if a.dtype != np.uint16 and a.dtype.name != format16:
        raise DtypeError(f"{name} has dtype {a.dtype}; with format16={format16!r} it must be uint16 bits.")
    return format16


def _check_where(x: np.ndarray, where: np.ndarray | None) -> np.ndarray | None:
    if where is None:
        return None
    if not (isinstance(where, np.ndarray) and where.dtype == np.bool_):
        raise DtypeError(f"where has dtype {getattr(where, 'dtype', None)}; kernels take a bool ndarray.")
    if where.shape != x.shape or not where.flags.c_contiguous:
        raise ShapeError(f"where has shape {where.shape}; it must be C-contiguous of x's shape {x.shape}.")
    return where


def _check_out(x: np.ndarray, out: np.ndarray, name: str = "out") -> np.ndarray:
    if not (isinstance(out, np.ndarray) and out.shape == x.shape and out.flags.c_contiguous):
        raise ShapeError(
            f"{name} has shape {getattr(out, 'shape', None)}; it must be C-contiguous of x's shape {x.shape}."
        )
    fmt = _FORMAT_OF.get(x.dtype)  # x as _check_rows gives it
    if out.dtype.char == "d" or (fmt is None and out.dtype == x.dtype):
        return out
    if fmt is not None and (out.dtype == np.uint16 or out.dtype.name == fmt):
        return out.view(_BITS[fmt])
    like = x.dtype if fmt is None else f"{fmt} (or its uint16 bits)"
    raise DtypeError(f"{name} has dtype {out.dtype}; allowed: float64 or x's dtype {like}.")


def _row_vector(a: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if arr.shape != (n,):
        raise ShapeError(f"{name} has shape {arr.shape}; it must be ({n},).")
    return arr


def _check_ce(x, target, weight, alpha, grad, g, z_grad):
    n, c = x.shape
    if c == 0:
        raise ShapeError(f"x has shape {x.shape}; cross_entropy_rows needs at least one class.")
    y = _row_vector(target, n, "target", np.int64)
    if n and (y.min() < 0 or y.max() >= c):
        bad = int(y[(y < 0) | (y >= c)][0])
        raise TargetError(f"target holds {bad}; class indices must be in [0, {c}).")
    w = None if weight is None else _row_vector(weight, c, "weight", np.float64)
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ArgumentError(f"label_smoothing={alpha!r}; it must be a float in [0, 1].")
    if grad is not None:
        grad = _check_out(x, grad, "grad")
        if g is None:
            raise ArgumentError("g is None; a gradient needs each row's cotangent g.")
        g = _row_vector(g, n, "g", np.float64)
    z_grad = None if z_grad is None or grad is None else _row_vector(z_grad, n, "z_grad", np.float64)
    return y, w, float(alpha), grad, g, z_grad


def _check_vector(x: np.ndarray) -> np.ndarray:
    if x.dtype.char not in "fd" or x.ndim != 1 or not x.flags.c_contiguous or x.size == 0:
        raise ShapeError(
            f"x of shape {x.shape} and dtype {x.dtype}: lse_vector takes a non-empty "
            "contiguous 1-D float32/float64 array."
        )
    return x


# --------------------------------------------------------------------------
# Bands of rows on threads
# --------------------------------------------------------------------------

_POOLS: dict[int, Any] = {}


def _band(a: np.ndarray | None, r: slice) -> np.ndarray | None:
    return None if a is None or a is _NO_OUT else a[r]


def _in_bands(n: int, threads: int, run: Callable[[slice], None]) -> None:
    """``run`` over all rows, or over ``threads`` bands of rows at once (the kernels drop the GIL)."""
    if not (isinstance(threads, int) and threads >= 1):
        raise ArgumentError(f"threads={threads!r}; it must be an int >= 1.")
    bands = max(1, min(threads, n))
    if bands == 1:
        run(slice(0, n))
        return
    if bands not in _POOLS:  # kept: starting threads costs more than a small call
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[bands] = ThreadPoolExecutor(bands - 1, thread_name_prefix="stablesoftmax")
    cuts = np.linspace(0, n, bands + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    # The caller sweeps the first band itself rather than sleep: one hand-off fewer.
    others = [_POOLS[bands].submit(run, r) for r in slices[1:]]
    try:
        run(slices[0])
    finally:
        for f in others:
            f.result()


def _run_rows(
    x: np.ndarray, where: np.ndarray | None, out: np.ndarray, kind: int, threads: int, fast: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    m, k, s = np.empty(n), np.empty(n, np.int64), np.empty(n)
    if type(threads) is int and threads == 1:  # no bands: a small call pays for no slicing
        _rows_kernel(x, where, out, kind, m, k, s, fast)
        return m, k, s

    counters: list[np.ndarray] = []  # one per band, summed once the bands are done: no shared counter

    def band(r: slice) -> None:
        counter = None if fast is None else np.zeros(1, np.int64)
        if counter is not None:
            counters.append(counter)
        _rows_kernel(x[r], _band(where, r), out[r] if kind else out, kind, m[r], k[r], s[r], counter)

    _in_bands(n, threads, band)
    if fast is not None:
        fast[0] += sum(int(c[0]) for c in counters)
    return m, k, s


def _native_half() -> bool:
    """Whether this CPU converts between float16 and float32 in hardware: F16C on x86, always on aarch64."""
    import platform

    from llvmlite import binding

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    return machine in ("x86_64", "amd64") and bool(binding.get_host_cpu_features().get("f16c", False))


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)
    # The per-row sweep (_sweep, _first_index, _row_sum, _block) is inlined by numba into the row
    # loops. Called, each row view passed to a compiled function costs an out-of-line NRT_incref
    # and NRT_decref: about 170 ns a row on AMD Zen 5, against 87 ns inlined, so (64, 600) float64
    # logsumexp went from 45 to 34 us and (512, 8000) from 4.1 to 3.2 ms (cold compiles take about
    # half as long again). Inlining fewer of them, or more, measured slower.
    # A row's lane sums are split as LLVM vectorises each inlined loop, so the sweeps that also
    # write a pending row (softmax, the gradient) may give masked float32 rows another ``s``, in
    # its last bits, than the logsumexp and loss sweeps (bfloat16 rows did before); each result
    # is still rounded once from its own ``s``, and a given sweep's bits do not depend on threads.
    _jit_inline = numba.njit(cache=True, nogil=True, inline="always")

    # ------------------------------------------------------------------
    # LLVM building blocks numba does not spell
    # ------------------------------------------------------------------

    @intrinsic
    def _f64_from_bits(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float64))

        return types.float64(types.int64), codegen

    @intrinsic
    def _bits_from_f64(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.int64))

        return types.int64(types.float64), codegen

    @intrinsic
    def _f32_from_bits(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float32))

        return types.float32(types.int32), codegen

    @intrinsic
    def _bits_from_f32(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.int32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _maxnum(typingctx, a, b):
        """The larger of ``a`` and ``b``, as ``llvm.maxnum``: LLVM vectorises it as a reduction.

        The nnan/nsz flags are what lets the reduction share a loop with the
        sum of terms. With a NaN operand the result is then either operand or
        NaN; every caller copes: a NaN or ignored NaN in a row still ends as a
        NaN sum or a non-finite max, and both send the row to the scalar path.
        """
        if a != b:
            return None

        def codegen(context, builder, signature, args):
            lty = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic("llvm.maxnum", [lty], ir.FunctionType(lty, [lty, lty]))
            return builder.call(fn, args, fastmath=("nnan", "nsz"))

        return a(a, b), codegen

    # 'reassoc' on this one addition only: it lets LLVM split a block's sum
    # over vector lanes. Nothing else may be reassociated (TwoSum, Cody-Waite).
    @numba.njit(cache=True, fastmath={"reassoc"})
    def _lane_add(a, b):
        return a + b

    # ------------------------------------------------------------------
    # Optional arguments, resolved when numba compiles (None costs nothing)
    # ------------------------------------------------------------------

    def _at(a, mask, i):
        """``a[i]``, or ``-inf`` where ``mask`` is False."""

    @overload(_at)
    def _at_impl(a, mask, i):
        if isinstance(mask, types.NoneType):
            return lambda a, mask, i: a[i]
        low = _NEG_INF_BITS.get(a.dtype, -np.inf)
        return lambda a, mask, i: a[i] if mask[i] else a.dtype.type(low)

    def _ok(mask, i):
        """Whether entry ``i`` is allowed."""

    @overload(_ok)
    def _ok_impl(mask, i):
        if isinstance(mask, types.NoneType):
            return lambda mask, i: True
        return lambda mask, i: mask[i]

    def _view(a, lo, hi):
        """``a[lo:hi]``, None for None."""

    @overload(_view)
    def _view_impl(a, lo, hi):
        if isinstance(a, (types.NoneType, types.Number)):  # absent, or one weight for every class
            return lambda a, lo, hi: a
        return lambda a, lo, hi: a[lo:hi]

    def _row_of(a, i):
        """Row ``i`` of a 2-D array, None for None."""

    @overload(_row_of)
    def _row_of_impl(a, i):
        if isinstance(a, types.NoneType):
            return lambda a, i: None
        return lambda a, i: a[i]

    def _shift_weights(w):
        """The weights of the shift sum: ``w``, or one weight 1.0 for every class."""

    @overload(_shift_weights)
    def _shift_weights_impl(w):
        if isinstance(w, types.NoneType):
            return lambda w: 1.0
        return lambda w: w

    def _put(buf, i, t):
        """``buf[i] = t``, nothing for None."""

    @overload(_put)
    def _put_impl(buf, i, t):
        if isinstance(buf, types.NoneType):
            return lambda buf, i, t: None

        def put(buf, i, t):
            buf[i] = t

        return put

    def _scaled_put(out, buf, i, c):
        """``out[i] = c * buf[i]`` (the previous row's output, written in this row's sweep); nothing for None."""

    @overload(_scaled_put)
    def _scaled_put_impl(out, buf, i, c):
        if isinstance(out, types.NoneType):
            return lambda out, buf, i, c: None

        def put(out, buf, i, c):
            _store(out, i, c * buf[i])

        return put

    def _shift_term(dw, i, d, e):
        """One term of ``sum w_c (x_c - m)``: 0 without smoothing, and for ``-inf`` entries.

        Masked entries are ``-inf`` in the swept row; an allowed ``-inf`` makes
        the whole sum ``-inf``, which the caller sets (see ``_allowed_sums``).
        """

    @overload(_shift_term)
    def _shift_term_impl(dw, i, d, e):
        if isinstance(dw, types.NoneType):
            return lambda dw, i, d, e: 0.0
        if isinstance(dw, types.Float):  # unweighted
            return lambda dw, i, d, e: (d + e) if d > -np.inf else 0.0
        return lambda dw, i, d, e: dw[i] * (d + e) if d > -np.inf else 0.0

    def _weight(w, i):
        """Class weight ``w[i]``, 1 for None."""

    @overload(_weight)
    def _weight_impl(w, i):
        if isinstance(w, types.NoneType):
            return lambda w, i: 1.0
        return lambda w, i: w[i]

    def _divides(out):
        """Whether softmax output ``out`` gets ``t / (1 + s)`` rather than ``t * (1 / (1 + s))``.

        float64 output divides (0.5 ulp better); 16-bit output too, so that it
        is exactly the float64 output rounded once. float32 output multiplies.
        """

    @overload(_divides)
    def _divides_impl(out):
        divides = out.dtype != types.float32
        return lambda out: divides

    def _term(a, m):
        """``(exp(a - m), a - m, error of a - m)`` in float64, by ``a``'s dtype."""

    @overload(_term)
    def _term_impl(a, m):
        if a == types.float64:
            return lambda a, m: _term_wide(a, m)
        # The float64 difference of float32 (and 16-bit) values is exact.
        return lambda a, m: (_exp_narrow(_wide(a) - m), _wide(a) - m, 0.0)

    def _term_in(a, m, fast):
        """:func:`_term`; with a ``fast`` counter and float32 ``a``, the short polynomial (:func:`_exp_short`)."""

    @overload(_term_in)
    def _term_in_impl(a, m, fast):
        if isinstance(fast, types.NoneType) or a != types.float32:
            return lambda a, m, fast: _term(a, m)
        return lambda a, m, fast: (_exp_short(np.float64(a) - m), np.float64(a) - m, 0.0)

    def _needs_exact(fast, m, s):
        """Whether a row swept with the short polynomial must be swept again: False without ``fast``.

        The short sweep's ``log1p(s)`` is within ``EXP_SHORT_ERROR`` plus the two
        sums' rounding (1024 terms a block: 2.3e-13) of the accurate sweep's, and
        each ``m + log1p(s)`` within a few ulps of its operands (``2**-48``
        covers numpy's and libm's ``log1p`` and the add). When no float32
        rounding boundary lies within that window of the short result, the
        accurate result rounds to the same float32 (Ziv's test).
        """

    @overload(_needs_exact)
    def _needs_exact_impl(fast, m, s):
        if isinstance(fast, types.NoneType):
            return lambda fast, m, s: False

        def needs_exact(fast, m, s):
            lg = math.log1p(s)
            w = SHORT_ERROR + (abs(m) + lg) * 2.0**-48
            return np.float32(m + lg - w) != np.float32(m + lg + w)

        return needs_exact

    def _count(fast):
        """``fast[0] += 1``; nothing for None."""

    @overload(_count)
    def _count_impl(fast):
        if isinstance(fast, types.NoneType):
            return lambda fast: None

        def count(fast):
            fast[0] += 1

        return count

    def _block_size(row):
        """Terms per compensated block, by dtype (see ``_BLOCK_WIDE``)."""

    @overload(_block_size)
    def _block_size_impl(row):
        size = _BLOCK_WIDE if row.dtype == types.float64 else _BLOCK_NARROW
        return lambda row: size

    # ------------------------------------------------------------------
    # 16-bit rows: read as bits, widened in registers; outputs rounded once
    # ------------------------------------------------------------------

    # float16 converts in one vector instruction where LLVM has one (x86's F16C, every aarch64); elsewhere in
    # integer arithmetic, a libcall that the JIT may not link. The numba cache is keyed by the CPU, so a
    # cached kernel never crosses from one kind to the other.
    _NATIVE_HALF = _native_half()

    _NEG_INF_BITS = {types.uint16: 0xFF80, types.int16: -0x400}  # -inf in bfloat16 (uint16), float16 (int16)
    _SIGN_BIT = np.int64(-0x8000000000000000)  # a float64's sign bit, as an int64

    def _lane(v):
        """An entry as the max sweep compares it: a float as it is, 16-bit bits widened to float32 (exact)."""

    @overload(_lane)
    def _lane_impl(v):
        if v == types.uint16:
            return lambda v: _f32_from_bfloat16(v)
        if v == types.int16:
            return (lambda v: _f32_from_half_bits(v)) if _NATIVE_HALF else (lambda v: _f32_from_float16(v))
        return lambda v: v

    def _wide(v):
        """An entry as float64 (exact)."""

    @overload(_wide)
    def _wide_impl(v):
        return lambda v: np.float64(_lane(v))

    def _lowest(row):
        """``-inf`` in the type :func:`_lane` gives for ``row``'s entries."""

    @overload(_lowest)
    def _lowest_impl(row):
        if row.dtype in _NEG_INF_BITS:
            return lambda row: np.float32(-np.inf)
        return lambda row: row.dtype.type(-np.inf)

    def _store(out, i, v):
        """``out[i] = v`` rounded once to ``out``'s dtype (16-bit: to nearest even, from the float64 ``v``)."""

    @overload(_store)
    def _store_impl(out, i, v):
        if out.dtype == types.uint16:

            def store_bfloat16(out, i, v):
                out[i] = _bfloat16_from_f64(v)

            return store_bfloat16
        if out.dtype == types.int16:

            def store_float16(out, i, v):
                out[i] = _float16_from_f64_native(v) if _NATIVE_HALF else _float16_from_f64(v)

            return store_float16

        def store(out, i, v):
            out[i] = v

        return store

    @numba.njit(cache=True)
    def _f32_from_bfloat16(b):
        """bfloat16 is the high half of a float32."""
        return _f32_from_bits(np.int32(np.int32(b) << 16))

    @intrinsic
    def _f32_from_half_bits(typingctx, h):
        """float16 bits to float32 as LLVM's ``fpext half``: exact; one vector instruction with F16C."""

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(types.int16), codegen

    @numba.njit(cache=True)
    def _f32_from_float16(h):
        """float16 bits to float32, exactly: subnormals, infinities and NaN included (no branch).

        Exponent and significand shifted into place read as a float32 of
        exponent ``e - 112`` (subnormal below), which ``2**112`` scales exactly
        (Giesen's ``half_to_float_fast5``); what lands at ``2**16`` or above was
        infinity or NaN and gets float32's top exponent.
        """
        u = np.int32(h)
        o = _f32_from_bits(np.int32((u & 0x7FFF) << 13)) * np.float32(2.0**112)
        o = _f32_from_bits(_bits_from_f32(o) | np.int32(0x7F800000)) if o >= np.float32(65536.0) else o
        return _f32_from_bits(_bits_from_f32(o) | np.int32((u & 0x8000) << 16))

    @numba.njit(cache=True)
    def _odd_f32_bits(v):
        """float64 ``v`` rounded to float32 with round-to-odd, as the float32's bits (an int64 of int32 range).

        Rounded to odd first, a value is then correctly rounded to any format
        of at most 22 bits of significand (Boldo & Melquiond, IEEE TC 2008).
        The nearest float32, when inexact and even, moves one step toward ``v``.
        """
        f = np.float32(v)
        back = np.float64(f)
        u = np.int64(_bits_from_f32(f))
        step = (1 if abs(back) < abs(v) else -1) if back != v and (u & 1) == 0 else 0
        return u + step  # sign and magnitude: +1 moves away from zero, for either sign

    @numba.njit(cache=True)
    def _rounded_to(v, low, high, shift):
        """``v`` rounded once, to nearest even, to a format whose significand has ``53 - log2(shift)`` bits.

        Adding ``c = ±2**e * shift``, with ``2**e`` the power of two at or
        below ``|v|`` (clamped to the format's smallest normal ``low`` and to
        ``high``, above its largest finite) and ``v``'s sign, leaves the sum's
        last bit at the format's quantum for ``v``: the addition rounds there,
        to nearest even, and subtracting ``c`` is exact. Below ``low`` the
        quantum is the subnormals' fixed one. The result keeps ``v``'s sign
        (a zero too); ``±inf`` passes, and NaN becomes the quiet NaN of ``v``'s
        sign. Branch-free and in float64 lanes only, so the output loops
        vectorise without integer shuffles.
        """
        sign = _bits_from_f64(v) & _SIGN_BIT
        e = _f64_from_bits(_bits_from_f64(v) & 0x7FF0000000000000)
        e = min(max(e, low), high)
        c = _f64_from_bits(_bits_from_f64(e * shift) | sign)
        r = (v + c) - c
        r = _f64_from_bits((_bits_from_f64(r) & ~_SIGN_BIT) | sign)
        return r if v == v else _f64_from_bits(0x7FF8000000000000 | sign)

    @numba.njit(cache=True)
    def _bfloat16_from_f64(v):
        """float64 to bfloat16 bits, to nearest even; NaN gives the quiet NaN of ``v``'s sign.

        The rounded value is a bfloat16, so its float32 is exact and the high
        half of its bits is the answer (``2**128`` becomes infinity there).
        """
        return np.uint16(_bits_from_f32(np.float32(_rounded_to(v, 2.0**-126, 2.0**128, 2.0**45))) >> 16)

    @intrinsic
    def _half_bits_from_f32(typingctx, f):
        """float32 to float16 bits as LLVM's ``fptrunc``, to nearest even: one vector instruction with F16C."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

        return types.int16(types.float32), codegen

    @numba.njit(cache=True)
    def _float16_from_f64_native(v):
        """:func:`_float16_from_f64` as :func:`_rounded_to` float16, then an exact :func:`_half_bits_from_f32`."""
        return _half_bits_from_f32(np.float32(_rounded_to(v, 2.0**-14, 2.0**16, 2.0**42)))

    @numba.njit(cache=True)
    def _float16_from_f64(v):
        """float64 to float16 bits, to nearest even: overflow to inf, subnormals, NaN (quiet)."""
        u = _odd_f32_bits(v)
        a = u & 0x7FFFFFFF
        normal = (a - ((127 - 15) << 23) + 0xFFF + ((a >> 13) & 1)) >> 13
        # Below 2**-14: adding 0.5 in float32 rounds to a multiple of 2**-24, float16's subnormal step.
        sub = np.int64(_bits_from_f32(_f32_from_bits(np.int32(a)) + np.float32(0.5))) - 0x3F000000
        r = normal if a >= (113 << 23) else sub
        r = 0x7E00 if a > 0x7F800000 else (0x7C00 if a >= (143 << 23) else r)  # NaN; 2**16 and above
        return np.int16(r | ((u >> 16) & 0x8000))

    @_jit
    def _fill(out_row, v):
        for i in range(out_row.size):
            _store(out_row, i, v)

    # ------------------------------------------------------------------
    # exp(d) for d <= 0 (or NaN), vectorisable
    # ------------------------------------------------------------------

    # The constants, shared with the Triton kernels (see _coefficients for how they were made).
    _LOG2E, _SHIFTER, _LN2 = LOG2E, SHIFTER, LN2
    _LN2_HI, _LN2_LO, _TWO_M64 = LN2_HI, LN2_LO, TWO_M64
    _F0, _F1, _F2, _F3, _F4, _F5, _F6, _F7, _F8, _F9 = EXP_NARROW
    _S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7 = EXP_SHORT
    _Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9 = EXP_WIDE

    @numba.njit(cache=True, fastmath={"contract"})
    def _reduced_narrow(d):
        """``(r, 2**n)`` with ``d = n ln 2 + r``, ``|r| <= ln 2 / 2``: the float32 work's range reduction.

        At -709 the exponent field of ``2**n`` is 0, so the scale is +0.0 and the
        term exactly 0 (terms below 2**-1022 are far below a float32 ulp).
        """
        d = -709.0 if d < -709.0 else d
        z = d * _LOG2E + _SHIFTER
        nf = z - _SHIFTER
        r = d - nf * _LN2  # one constant: ln 2's rounding costs |n| * 2.3e-17 <= 2.4e-14
        return r, _f64_from_bits((_bits_from_f64(z) + 1023) << 52)

    @numba.njit(cache=True, fastmath={"contract"})
    def _exp_narrow(d):
        """exp(d) to 4.1e-14 relative, for float32 work; 0 below about -708.4, NaN stays NaN."""
        r, scale = _reduced_narrow(d)
        p = _F9
        p = p * r + _F8
        p = p * r + _F7
        p = p * r + _F6
        p = p * r + _F5
        p = p * r + _F4
        p = p * r + _F3
        p = p * r + _F2
        p = p * r + _F1
        p = p * r + _F0
        return p * scale

    @numba.njit(cache=True, fastmath={"contract"})
    def _exp_short(d):
        """:func:`_exp_narrow` with a degree-7 polynomial: 6e-11 relative (``EXP_SHORT_ERROR``), two FMAs fewer.

        Only for sweeps whose result passes a rounding test (see ``_needs_exact``).
        """
        r, scale = _reduced_narrow(d)
        p = _S7
        p = p * r + _S6
        p = p * r + _S5
        p = p * r + _S4
        p = p * r + _S3
        p = p * r + _S2
        p = p * r + _S1
        p = p * r + _S0
        return p * scale

    @numba.njit(cache=True, fastmath={"contract"})
    def _exp_wide(d):
        """exp(d) to about 1 ulp, subnormal results included; NaN stays NaN."""
        d = -746.0 if d < -746.0 else d  # exp(-746) rounds to 0; keeps n in range
        z = d * _LOG2E + _SHIFTER
        nf = z - _SHIFTER
        r = (d - nf * _LN2_HI) - nf * _LN2_LO
        q = _Q9
        q = q * r + _Q8
        q = q * r + _Q7
        q = q * r + _Q6
        q = q * r + _Q5
        q = q * r + _Q4
        q = q * r + _Q3
        q = q * r + _Q2
        q = q * r + _Q1
        q = q * r + _Q0
        p = 1.0 + (r + (r * r) * q)
        # Below 2**-1000 build 2**(n+64), exact, and round once by 2**-64 into the subnormals.
        small = nf < -1000.0
        scale = _f64_from_bits((_bits_from_f64(z) + (1023 + 64 if small else 1023)) << 52)
        return (p * scale) * (_TWO_M64 if small else 1.0)

    @numba.njit(cache=True, fastmath={"contract"})
    def _term_wide(a, m):
        """``exp(a - m)`` with the rounding error of ``a - m`` carried (TwoSum), and ``d``, ``e``."""
        d = a - m
        bv = d - a
        e = (a - (d - bv)) - (bv + m)
        e = 0.0 if d < -745.2 else e  # -inf entries: inf - inf; their term is 0 anyway
        t = _exp_wide(d)
        return t + t * e, d, e

    # ------------------------------------------------------------------
    # Row sweeps. A masked row is swept as a copy holding -inf where masked,
    # made while the previous row was swept: a select inside the term loop
    # made LLVM pick narrower, slower code (1.8x the unmasked sweep).
    # ------------------------------------------------------------------

    @_jit
    def _copy_max(row, mask, copy):
        """Max of ``row`` (masked entries -inf), the masked row written into ``copy`` if not None."""
        m = _lowest(row)
        for i in range(row.size):
            v = _at(row, mask, i)
            _put(copy, i, v)
            m = _maxnum(m, _lane(v))
        return np.float64(m)

    @_jit_inline
    def _first_index(row, m):
        """Index of the first entry equal to ``m`` (blocks counted vectorised, then scanned)."""
        for lo in range(0, row.size, 256):
            part = row[lo : lo + 256]
            c = 0
            for i in range(part.size):
                c += _wide(part[i]) == m
            if c:
                for i in range(part.size):
                    if _wide(part[i]) == m:
                        return lo + i
        return -1

    # The sweeps take views and loop from 0: with ``range(lo, hi)`` numba cannot
    # drop its negative-index wraparound and LLVM no longer vectorises the loop.
    @_jit_inline
    def _block(row, nxt, nxt_mask, nxt_copy, m, mx, buf, dw, prev, prev_out, c, fast):
        """Terms of ``row`` summed (and into ``buf``), their shift sum, and ``nxt``'s max folded into ``mx``.

        With ``prev_out``, the previous row's output ``c * prev`` is written in
        the same loop: its stores overlap this row's arithmetic.
        """
        s, ds = 0.0, 0.0
        for i in range(row.size):
            t, d, e = _term_in(row[i], m, fast)
            _put(buf, i, t)
            s = _lane_add(s, t)
            ds = _lane_add(ds, _shift_term(dw, i, d, e))
            v = _at(nxt, nxt_mask, i)
            _put(nxt_copy, i, v)
            mx = _maxnum(mx, _lane(v))
            _scaled_put(prev_out, prev, i, c)
        return s, ds, mx

    @_jit
    def _neumaier(tot, comp, b):
        t = tot + b
        comp += (tot - t) + b if abs(tot) >= abs(b) else (b - t) + tot
        return t, comp

    @_jit_inline
    def _row_sum(row, nxt, nxt_mask, nxt_copy, m, km, buf, dw, prev, prev_out, c, fast):
        """``(s, shift sum, max of nxt)`` for a row with finite max ``m`` at ``km``."""
        tot, comp, dtot, dcomp = 0.0, 0.0, 0.0, 0.0
        first = _at(nxt, nxt_mask, km)
        _put(nxt_copy, km, first)
        mx = _lane(first)  # in the input dtype (float32 for 16-bit): no conversion in the sweep
        _scaled_put(prev_out, prev, km, c)
        size = _block_size(row)
        for lo in range(0, row.size, size):
            hi = min(lo + size, row.size)
            # The three _block calls are spelled out: a helper taking (lo, hi) and making the views,
            # even inlined by numba, made the unmasked float32 sweep about 20% slower.
            if lo <= km < hi:  # leave the max term out by index: it is exactly 1
                b1, d1, mx = _block(
                    row[lo:km],
                    nxt[lo:km],
                    _view(nxt_mask, lo, km),
                    _view(nxt_copy, lo, km),
                    m,
                    mx,
                    _view(buf, lo, km),
                    _view(dw, lo, km),
                    _view(prev, lo, km),
                    _view(prev_out, lo, km),
                    c,
                    fast,
                )
                b2, d2, mx = _block(
                    row[km + 1 : hi],
                    nxt[km + 1 : hi],
                    _view(nxt_mask, km + 1, hi),
                    _view(nxt_copy, km + 1, hi),
                    m,
                    mx,
                    _view(buf, km + 1, hi),
                    _view(dw, km + 1, hi),
                    _view(prev, km + 1, hi),
                    _view(prev_out, km + 1, hi),
                    c,
                    fast,
                )
                b, db = b1 + b2, d1 + d2
            else:
                b, db, mx = _block(
                    row[lo:hi],
                    nxt[lo:hi],
                    _view(nxt_mask, lo, hi),
                    _view(nxt_copy, lo, hi),
                    m,
                    mx,
                    _view(buf, lo, hi),
                    _view(dw, lo, hi),
                    _view(prev, lo, hi),
                    _view(prev_out, lo, hi),
                    c,
                    fast,
                )
            tot, comp = _neumaier(tot, comp, b)
            dtot, dcomp = _neumaier(dtot, dcomp, db)
        _put(buf, km, 1.0)
        return tot + comp, dtot + dcomp, np.float64(mx)

    @_jit_inline
    def _sweep(row, nxt, nxt_mask, nxt_copy, m, buf, dw, prev, prev_out, c, fast=None):
        """``(k, s, shift sum, max of nxt)`` of a row; ``s`` is NaN when the row needs the scalar path.

        ``prev_out = c * prev`` is written on the way (see ``_block``), or by a
        loop of its own when the row is special.
        """
        k = _first_index(row, m) if math.isfinite(m) else -1
        if k < 0:  # a max that is not finite (or NaN that maxnum let through)
            if prev_out is not None:
                _scale_row(prev, prev_out, c)
            return -1, np.nan, 0.0, _copy_max(nxt, nxt_mask, nxt_copy)
        s, ds, m_next = _row_sum(row, nxt, nxt_mask, nxt_copy, m, k, buf, dw, prev, prev_out, c, fast)
        return k, s, ds, m_next

    @_jit_inline
    def _pending_sweep(row, nxt, nxt_mask, nxt_copy, m, buf, prev, rows, pending, spare, c):
        """:func:`_sweep` writing ``c * prev`` into ``rows[pending]``, or into ``spare`` when none is pending.

        Every row of a fused softmax or gradient takes this one loop, whose lane
        sums LLVM might split otherwise in a loop without the write.
        """
        return _sweep(row, nxt, nxt_mask, nxt_copy, m, buf, None, prev, rows[pending] if pending >= 0 else spare, c)

    @_jit
    def _scale_row(buf, out_row, c):
        for i in range(buf.size):
            _store(out_row, i, c * buf[i])

    @_jit
    def _rows_of(x, mask, i, cur):
        """Row ``i`` as swept: ``x[i]``, or its masked copy ``cur`` (then the mask of row ``i + 1``)."""
        nxt = i + 1 if i + 1 < x.shape[0] else i
        if mask is None:
            return x[i], x[nxt], None
        return cur, x[nxt], mask[nxt]

    # ------------------------------------------------------------------
    # Rows whose max is not finite: the state's shift rule, entry by entry
    # ------------------------------------------------------------------

    @_jit
    def _special_state(row):
        """``(m, k, s)`` of a row holding NaN, ``+inf`` or no mass (scalar: such rows are rare)."""
        m, k, n_top = -np.inf, 0, 0
        for i in range(row.size):
            v = _wide(row[i])
            if v != v:
                return np.nan, i, np.nan
            if v > m:
                m, k = v, i
            n_top += v == np.inf
        return m, k, (n_top - 1.0 if m == np.inf else 0.0)

    @_jit
    def _special_out(row, m, s, out_row, kind):
        """softmax ``exp(d) / (1 + s)`` or log-softmax ``d - log1p(s)`` of a special row.

        ``d = x_i - m`` by the state's rule: 0 where ``x_i == m``, ``-inf``
        when ``m = -inf`` (and for ``-inf`` entries), NaN in a NaN row.
        """
        lg = math.log1p(s)
        for i in range(row.size):
            v = _wide(row[i])
            d = -np.inf if (m == -np.inf or v == -np.inf) else (0.0 if v == m else v - m)
            _store(out_row, i, math.exp(d) / (1.0 + s) if kind == _SOFTMAX else d - lg)

    # ------------------------------------------------------------------
    # Third sweeps: the elementwise outputs of an ordinary row
    # ------------------------------------------------------------------

    @_jit
    def _write_softmax(buf, s, out_row):
        """``t / (1 + s)``: a division for float64 and 16-bit output (see ``_divides``), a product for float32."""
        if _divides(out_row):
            z = 1.0 + s
            for i in range(buf.size):
                _store(out_row, i, buf[i] / z)
        else:
            inv = 1.0 / (1.0 + s)
            for i in range(buf.size):
                out_row[i] = buf[i] * inv

    @_jit
    def _write_log_softmax(row, m, s, out_row):
        """``(x - m) - log1p(s)``, plus the TwoSum error of ``x - m`` for float64 input."""
        lg = math.log1p(s)
        for i in range(row.size):
            _, d, e = _term(row[i], m)
            _store(out_row, i, (d - lg) + e)

    @_jit
    def _rows_kernel(x, mask, out, kind, m_out, k_out, s_out, fast=None):
        """Every row's state into ``m_out, k_out, s_out``; for kind 1/2 its output row too.

        With ``fast`` (kind 0, float32 rows: an int64 counter of one entry) the
        rows are swept with the short polynomial, and each row whose logsumexp
        might round to another float32 than the accurate sweep's is swept again
        accurately (counted): the float32 results are the accurate ones.
        """
        n, width = x.shape
        if width == 0:
            m_out[:], k_out[:], s_out[:] = -np.inf, -1, 0.0
            return
        buf, prev = np.empty(width if kind == _SOFTMAX else 1), np.zeros(width if kind == _SOFTMAX else 1)
        cur, nxt_copy = np.empty(width, x.dtype), np.empty(width, x.dtype)
        fuse = kind == _SOFTMAX and not _divides(out)
        pending, c = -1, 0.0  # a row whose softmax is written during the next row's sweep
        # With no row pending, a fused sweep writes into ``spare``: every row then takes the same
        # compiled loop, whose lane sums LLVM may split differently from a loop without the write.
        spare = np.empty(width if fuse else 0, out.dtype)
        m = _copy_max(x[0], _row_of(mask, 0), _copy_if(mask, cur)) if n else 0.0
        for i in range(n):
            row, nxt, nxt_mask = _rows_of(x, mask, i, cur)
            if fuse:
                k, s, _, m_next = _pending_sweep(
                    row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, buf, prev, out, pending, spare, c
                )
            elif kind == _SOFTMAX:
                k, s, _, m_next = _sweep(row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, buf, None, None, None, c)
            else:
                k, s, _, m_next = _sweep(
                    row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, None, None, None, None, c, fast
                )
                if s == s and _needs_exact(fast, m, s):
                    k, s, _, _ = _sweep(row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, None, None, None, None, c)
                    _count(fast)
            m_i, pending = m, -1
            if s != s:
                m_i, k, s = _special_state(row)
                if kind:
                    _special_out(row, m_i, s, out[i], kind)
            elif fuse:
                pending, c = i, 1.0 / (1.0 + s)
                buf, prev = prev, buf
            elif kind == _SOFTMAX:
                _write_softmax(buf, s, out[i])
            elif kind == _LOG_SOFTMAX:
                _write_log_softmax(row, m, s, out[i])
            m_out[i], k_out[i], s_out[i] = m_i, k, s
            m = m_next
            cur, nxt_copy = nxt_copy, cur
        if pending >= 0:
            _scale_row(prev, out[pending], c)

    @numba.njit(cache=True, nogil=True)
    def _vector_parts(x):
        """``(m, s)`` of one contiguous vector: a single dispatch for the short-input path."""
        m_out, k_out, s_out = np.empty(1), np.empty(1, np.int64), np.empty(1)
        _rows_kernel(x.reshape((1, x.size)), None, np.empty((0, 0)), _LSE, m_out, k_out, s_out)
        return m_out[0], s_out[0]

    # ------------------------------------------------------------------
    # The gradient of a block of classes, from the rows' whole state
    # ------------------------------------------------------------------

    @_jit
    def _block_grad_entry(v, t, inv, g, big_a, z, a, cap):
        """One entry of the block gradient, from its term ``t``, mass ``a``; 0 for a non-finite logit."""
        p = t * inv
        r = (big_a * p - a) * g + p * z
        r = r * (1.0 - (v / cap) ** 2) if cap != np.inf else r  # (no division per entry without a softcap)
        return r if v - v == 0.0 else 0.0

    @_jit
    def _block_grad_bulk(row, w, mi, inv, gi, ai, zi, sm, cap, out_row):
        """Every entry of a row as if it were neither the max nor the target; the softcap's branch outside the loop."""
        if cap == np.inf:
            for j in range(row.size):
                t, _, _ = _term(row[j], mi)
                _store(out_row, j, _block_grad_entry(_wide(row[j]), t, inv, gi, ai, zi, sm * _weight(w, j), np.inf))
        else:
            for j in range(row.size):
                t, _, _ = _term(row[j], mi)
                _store(out_row, j, _block_grad_entry(_wide(row[j]), t, inv, gi, ai, zi, sm * _weight(w, j), cap))

    @_jit
    def _block_grad_kernel(x, first, m, k, s, y, alive, big_a, g, zc, smooth, hot, w, cap, out):
        """See ``block_gradient_rows``: a vectorised bulk loop into a row buffer, the max and target entries, a copy.

        The buffer keeps the bulk loop's stores apart from its loads: with
        ``out`` the very array ``x`` (a chunk's logits replaced by its
        gradient), LLVM's alias check failed and the loop ran scalar, 3x slower.
        """
        n, width = x.shape
        buf = np.empty(width, out.dtype)
        for i in range(n):
            row, out_row, mi = x[i], out[i], m[i]
            if not (alive[i] and math.isfinite(mi)):
                _fill(out_row, np.nan if (alive[i] and mi != mi) else 0.0)
                continue
            si, gi, ai, zi, sm = s[i], g[i], big_a[i], zc[i], smooth[i]
            inv = 1.0 / (1.0 + si)
            kj, yj = k[i] - first, y[i] - first
            _block_grad_bulk(row, w, mi, inv, gi, ai, zi, sm, cap, buf)
            if 0 <= yj < width and yj != kj:
                t, _, _ = _term(row[yj], mi)
                a_y = _weight(w, yj) * (hot + sm)
                _store(buf, yj, _block_grad_entry(_wide(row[yj]), t, inv, gi, ai, zi, a_y, cap))
            if 0 <= kj < width:
                v = _wide(row[kj])
                a_k = _weight(w, kj) * (hot * (kj == yj) + sm)
                r = ((ai - a_k) - a_k * si) * inv * gi + inv * zi
                _store(buf, kj, r * (1.0 - (v / cap) ** 2) if cap != np.inf else r)
            out_row[:] = buf

    # ------------------------------------------------------------------
    # Cross-entropy
    # ------------------------------------------------------------------

    @_jit
    def _allowed_sums(row, mask, w):
        """``(allowed classes, their weight sum, whether one of them is -inf)`` of a (masked) row."""
        count, dead, wsum = 0, 0, 0.0
        for i in range(row.size):  # integer and lane sums, no branch: LLVM vectorises it
            ok = _ok(mask, i)
            count += ok
            dead += ok & (_wide(row[i]) == -np.inf)
            wsum = _lane_add(wsum, _weight(w, i) if ok else 0.0)
        return count, (float(count) if w is None else wsum), dead > 0

    @_jit
    def _ce_coef(s, lse, big_a, ce_g, z):
        """The factor of each term ``t_c`` in the gradient: ``(ce_g A + z lse) / (1 + s)``."""
        return (ce_g * big_a + z * lse) / (1.0 + s)

    @_jit
    def _write_ce_smoothed(row, w, coef, smooth, buf, out_row):
        """``coef t_c - smooth w_c`` over a (masked) row; a ``-inf`` or masked entry gets 0 (its term is 0)."""
        for i in range(buf.size):
            _store(out_row, i, coef * buf[i] - (smooth * _weight(w, i) if _wide(row[i]) > -np.inf else 0.0))

    @_jit
    def _ce_fixups(w, y, k, s, lse, alpha, big_a, gy, ce_g, z, live_y, buf, out_row):
        """The gradient at the max ``k`` and the target ``y``, after the bulk ``coef t_c`` was written.

        ``gy`` is ``(1 - a) w_y`` and ``alpha`` is already ``a / K``.
        """
        inv = 1.0 / (1.0 + s)
        a_k = gy * (k == y) + alpha * _weight(w, k)
        _store(out_row, k, ce_g * ((big_a - a_k) - a_k * s) * inv + z * lse * inv)  # no cancellation when p_k -> 1
        if y != k:
            coef = _ce_coef(s, lse, big_a, ce_g, z)
            _store(out_row, y, (coef * buf[y] - ce_g * (gy + alpha * _weight(w, y))) if live_y else 0.0)

    @_jit
    def _ce_kernel(x, mask, y, w, alpha, grad, g, zg, m_out, k_out, s_out, xy_out, d_out, cnt_out, ws_out, fast):
        """Each row's state and loss parts (see ``CrossEntropyRows``); the gradient rows when ``grad``.

        ``fast`` (an int64 array, never with ``grad``) sweeps float32 rows with
        the short polynomial (see :func:`cross_entropy_rows`' ``short``).

        Without smoothing the gradient of a row is ``coef t_c`` but for two
        entries, and it is written during the next row's sweep (``pending``);
        with smoothing, by a loop of its own once the row's sum is known.
        """
        n, width = x.shape
        buf, prev = np.empty(width), np.zeros(width)
        cur, nxt_copy = np.empty(width, x.dtype), np.empty(width, x.dtype)
        pending, c = -1, 0.0
        spare = _spare_row(grad, width)  # the pending write's target when no row is pending (see _rows_kernel)
        m = _copy_max(x[0], _row_of(mask, 0), _copy_if(mask, cur)) if n else 0.0
        for i in range(n):
            row, nxt, nxt_mask = _rows_of(x, mask, i, cur)
            yi, cnt, wsum, ds = y[i], 0, 0.0, 0.0
            if alpha > 0.0:  # the shift sum and the allowed classes are wanted
                cnt, wsum, dead = _allowed_sums(row, _row_of(mask, i), w)
                k, s, ds, m_next = _sweep(
                    row,
                    nxt,
                    nxt_mask,
                    _copy_if(mask, nxt_copy),
                    m,
                    _grad_buf(grad, buf),
                    _shift_weights(w),
                    None,
                    None,
                    c,
                    fast,
                )
                ds = -np.inf if dead else ds
            elif grad is None:
                k, s, _, m_next = _sweep(
                    row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, None, None, None, None, c, fast
                )
            else:
                k, s, _, m_next = _pending_sweep(
                    row, nxt, nxt_mask, _copy_if(mask, nxt_copy), m, buf, prev, grad, pending, spare, c
                )
                if pending >= 0:
                    _pending_fixups(pending, w, y, k_out, s_out, m_out, xy_out, g, zg, prev, grad)
            m_i, pending = m, -1
            xy_out[i] = _wide(row[yi])
            if s != s:
                m_i, k, s = _special_state(row)
                if grad is not None:
                    _fill(grad[i], np.nan if m_i != m_i else 0.0)
            elif grad is not None:
                gy = (1.0 - alpha) * _weight(w, yi)
                a_over_k = alpha / cnt if cnt else 0.0
                z = zg[i] if zg is not None else 0.0
                lse, big_a = m_i + math.log1p(s), gy + a_over_k * wsum
                c = _ce_coef(s, lse, big_a, g[i], z)
                if alpha > 0.0:
                    _write_ce_smoothed(row, w, c, g[i] * a_over_k, buf, grad[i])
                    _ce_fixups(w, yi, k, s, lse, a_over_k, big_a, gy, g[i], z, xy_out[i] > -np.inf, buf, grad[i])
                else:
                    pending = i
                    buf, prev = prev, buf
            m_out[i], k_out[i], s_out[i] = m_i, k, s
            d_out[i], cnt_out[i], ws_out[i] = ds, cnt, wsum
            m = m_next
            cur, nxt_copy = nxt_copy, cur
        if grad is not None:
            if pending >= 0:
                _scale_row(prev, grad[pending], c)
                _pending_fixups(pending, w, y, k_out, s_out, m_out, xy_out, g, zg, prev, grad)

    @_jit
    def _pending_fixups(p, w, y, k_out, s_out, m_out, xy_out, g, zg, prev, grad):
        """The two special entries of row ``p``'s unsmoothed gradient, once its bulk is written."""
        s, gy = s_out[p], _weight(w, y[p])
        z = zg[p] if zg is not None else 0.0
        _ce_fixups(
            w, y[p], k_out[p], s, m_out[p] + math.log1p(s), 0.0, gy, gy, g[p], z, xy_out[p] > -np.inf, prev, grad[p]
        )

    def _grad_buf(grad, buf):
        """The term buffer when a gradient is wanted, else None (no stores in the sweep)."""

    @overload(_grad_buf)
    def _grad_buf_impl(grad, buf):
        if isinstance(grad, types.NoneType):
            return lambda grad, buf: None
        return lambda grad, buf: buf

    def _spare_row(grad, width):
        """A row of ``grad``'s dtype for a pending write with no row pending; None without a gradient."""

    @overload(_spare_row)
    def _spare_row_impl(grad, width):
        if isinstance(grad, types.NoneType):
            return lambda grad, width: None
        dtype = grad.dtype
        return lambda grad, width: np.empty(width, dtype)

    def _copy_if(mask, copy):
        """The buffer for a masked copy of the next row when rows are masked, else None."""

    @overload(_copy_if)
    def _copy_if_impl(mask, copy):
        if isinstance(mask, types.NoneType):
            return lambda mask, copy: None
        return lambda mask, copy: copy
