"""Compiled CPU kernels for rows of float32 and float64: numba, single-threaded.

The algorithm is the one of :mod:`stablesoftmax._reductions` (Blanchard,
Higham & Higham 2021): per row the exact max ``m``, the sum ``s`` of the terms
``exp(x_i - m)`` other than the max term (excluded by index, so ``log1p``
keeps ``s`` when it is far below one ulp of 1), ``lse = m + log1p(s)``,
``log_softmax = (x - m) - log1p(s)``, ``softmax = exp(x - m) / (1 + s)``.
What the kernels add is speed:

* ``exp`` is written out so that LLVM vectorises it (4 doubles per AVX2
  register): ``d = n ln2 + r`` with ``n`` rounded by the 1.5 * 2**52 shifter
  trick, a polynomial for ``exp(r)`` on ``|r| <= ln2/2``, and ``2**n`` built by
  integer bit manipulation (no libm call, no float-to-int conversion, which
  AVX2 lacks for int64). Cephes, SLEEF and Tang's table-free variants all use
  this shape; the coefficients here are our own (Chebyshev interpolation in
  mpmath, see ``_exp_wide``).
* float32 input is computed in float64 (``x - m`` is then exact) with a
  degree-9 polynomial and a one-constant reduction, relative error <= 4.1e-14
  against mpmath over [-708, 0]: the float32 result is rounded once from a
  value far more accurate than its half ulp.
* float64 input uses a two-constant Cody-Waite reduction, a degree-11
  polynomial (relative error 1.7e-17) and correctly scaled subnormal results
  (max 1.002 ulp against mpmath at 40 000 points of [-745, 0]), and carries
  the rounding error of ``x - m`` (TwoSum), as the NumPy path does.
* Two sweeps per row: the max, then the sum of terms. The max of row ``i+1``
  is taken inside the sum sweep of row ``i``, so the read of the next row from
  memory overlaps the arithmetic of this one; the sum sweep reads the row from
  cache. The sum is vectorised in blocks (the order inside a block is the
  vector lanes'), and the block sums are added with Neumaier's compensated
  summation, so the summation error does not grow with ``K``.

Special values follow :mod:`stablesoftmax._contract` row by row; such rows
(max not finite) take a scalar path.

Importing this module imports numba (about 0.3 s); import it lazily, only
where a kernel will run. Kernels are compiled on first use and cached on disk.
Set ``STABLESOFTMAX_DISABLE_KERNELS=1`` to turn them off.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ._errors import DtypeError, ShapeError

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # numba is an optional dependency (extra "fast")
    numba = None

__all__ = ["available", "lse_rows", "lse_parts_rows", "softmax_rows", "softmax_parts_rows", "log_softmax_rows", "lse_vector"]

_DISABLE_ENV = "STABLESOFTMAX_DISABLE_KERNELS"
# Terms per vectorised partial sum; block sums are added with compensation.
# Inside a block each vector lane adds block/16 terms in a row, which costs
# float64 accuracy (blocks of 512 gave 2.4 eps on 1000 terms); float32 output
# does not see it, and there longer blocks save the per-block overhead.
_BLOCK_WIDE = 64
_BLOCK_NARROW = 1024


def available() -> bool:
    """True when numba imported and ``STABLESOFTMAX_DISABLE_KERNELS`` is not ``1``."""
    return numba is not None and os.environ.get(_DISABLE_ENV, "") != "1"


def lse_parts_rows(x: np.ndarray, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(m, s)`` per row of a C-contiguous 2-D float32/float64 array.

    ``m`` is the row max and ``s`` the sum of ``exp(x_i - m)`` over every
    entry but the (first) max, both float64, so that ``lse = m + log1p(s)``.
    Rows without mass give ``m = -inf, s = 0``; rows with ``+inf`` (and no
    NaN) ``m = +inf, s = 0``; rows with NaN ``m = s = NaN``. ``threads > 1``
    splits the rows over that many threads (worth it for large inputs only).
    """
    x = _check_rows(x)
    return _run(x, np.empty((x.shape[0], 0)), _LSE, threads)


def lse_rows(x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """logsumexp of each row of a C-contiguous 2-D float32/float64 array, as float64."""
    m, s = lse_parts_rows(x, threads=threads)
    return m + np.log1p(s)


def softmax_rows(x: np.ndarray, out: np.ndarray, *, threads: int = 1) -> None:
    """Write the softmax of each row of ``x`` into ``out`` (float64, or ``x``'s dtype)."""
    _run(_check_rows(x), _check_out(x, out), _SOFTMAX, threads)


def softmax_parts_rows(x: np.ndarray, out: np.ndarray, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`softmax_rows`, also returning the ``(m, s)`` of :func:`lse_parts_rows` from the same pass."""
    return _run(_check_rows(x), _check_out(x, out), _SOFTMAX, threads)


def log_softmax_rows(x: np.ndarray, out: np.ndarray, *, threads: int = 1) -> None:
    """Write the log-softmax of each row of ``x`` into ``out`` (float64, or ``x``'s dtype)."""
    _run(_check_rows(x), _check_out(x, out), _LOG_SOFTMAX, threads)


_LSE, _SOFTMAX, _LOG_SOFTMAX = 0, 1, 2  # ``kind`` inside the kernels


def _check_rows(x: np.ndarray) -> np.ndarray:
    """Reject what the kernels were not compiled for: the caller dispatches only these."""
    if numba is None:
        raise RuntimeError("stablesoftmax kernels need numba (pip install 'stablesoftmax[fast]').")
    if not (isinstance(x, np.ndarray) and x.dtype.char in "fd"):  # float32, float64
        raise DtypeError(f"x is {type(x).__name__} of dtype {getattr(x, 'dtype', None)}; kernels take float32 or float64 ndarrays.")
    if x.ndim != 2 or not x.flags.c_contiguous:
        raise ShapeError(f"x has shape {x.shape} (C-contiguous: {x.flags.c_contiguous}); kernels take C-contiguous 2-D rows.")
    return x


def _check_out(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if not (isinstance(out, np.ndarray) and out.shape == x.shape and out.flags.c_contiguous):
        raise ShapeError(f"out has shape {getattr(out, 'shape', None)}; it must be C-contiguous of x's shape {x.shape}.")
    if out.dtype.char != "d" and out.dtype != x.dtype:
        raise DtypeError(f"out has dtype {out.dtype}; allowed: float64 or x's dtype {x.dtype}.")
    return out


def _run(x: np.ndarray, out: np.ndarray, kind: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernel over all rows, or over ``threads`` bands of rows at once (it drops the GIL)."""
    n = x.shape[0]
    m, s = np.empty(n), np.empty(n)
    wide = x.dtype.char == "d"
    bands = 1 if threads == 1 else max(1, min(int(threads), n))
    if bands == 1:
        _rows_kernel(x, m, s, out, kind, wide)
        return m, s
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, n, bands + 1).astype(int)
    spans = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    with ThreadPoolExecutor(bands) as pool:
        list(pool.map(lambda r: _rows_kernel(x[r], m[r], s[r], out[r], kind, wide), spans))
    return m, s


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

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
    def _maxnum(typingctx, a, b):
        """The larger of ``a`` and ``b``, as ``llvm.maxnum``: LLVM vectorises it as a reduction.

        The nnan/nsz flags are what lets the reduction share a loop with the
        sum of terms. With a NaN operand the result is then either operand or
        NaN; every caller copes: a NaN or ignored NaN in a row still ends as a
        NaN sum or a non-finite max, and both make the row NaN.
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
    def _radd(a, b):
        return a + b

    # ------------------------------------------------------------------
    # exp(d) for d <= 0 (or NaN), vectorisable
    # ------------------------------------------------------------------

    _LOG2E = 1.4426950408889634
    _SHIFTER = 6755399441055744.0  # 1.5 * 2**52: x + shifter rounds x to an integer kept in the low bits
    _LN2 = 0.6931471805599453
    _LN2_HI = 0.6931471805598903  # ln 2 to 42 bits: n * _LN2_HI is exact for |n| < 2**11
    _LN2_LO = 5.497923018708371e-14  # ln 2 - _LN2_HI
    _TWO_M64 = 2.0**-64

    # exp(r) ~ sum F_j r^j on |r| <= 0.3467: Chebyshev interpolation at 10
    # nodes in mpmath (200 bits), rounded to double; max relative error 1.9e-14.
    _F = (
        1.0000000000000135, 1.0000000000000013, 0.4999999999943695, 0.16666666666615498,
        0.04166666704137147, 0.008333333367386076, 0.001388880162232969,
        0.00019841190531844625, 2.4884520306294873e-05, 2.7632695699976396e-06,
    )  # fmt: skip
    _F0, _F1, _F2, _F3, _F4, _F5, _F6, _F7, _F8, _F9 = _F
    # exp(r) ~ 1 + r + r^2 Q(r), Q of degree 9 interpolating (exp(r)-1-r)/r^2 at
    # 10 Chebyshev nodes on |r| <= 0.347; max relative error 1.7e-17 (0.08 ulp).
    _Q = (
        0.5000000000000001, 0.16666666666666669, 0.04166666666662374, 0.008333333333330032,
        0.0013888888917406447, 0.00019841269863201828, 2.4801520996825697e-05,
        2.7557268229963227e-06, 2.76202305675069e-07, 2.5100494788905042e-08,
    )  # fmt: skip
    _Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9 = _Q

    @numba.njit(cache=True, fastmath={"contract"})
    def _exp_narrow(d):
        """exp(d) to 4.1e-14 relative, for float32 work; 0 below about -708.4, NaN stays NaN."""
        # At -709 the exponent field of 2**n is 0, so the scale is +0.0 and the
        # term exactly 0 (terms below 2**-1022 are far below a float32 ulp).
        d = -709.0 if d < -709.0 else d
        z = d * _LOG2E + _SHIFTER
        nf = z - _SHIFTER
        r = d - nf * _LN2  # one constant: ln 2's rounding costs |n| * 2.3e-17 <= 2.4e-14
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
        return p * _f64_from_bits((_bits_from_f64(z) + 1023) << 52)

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
    # Row sweeps
    # ------------------------------------------------------------------

    @_jit
    def _row_max(row):
        m = row.dtype.type(-np.inf)
        for k in range(row.size):
            m = _maxnum(m, row[k])
        return np.float64(m)

    @_jit
    def _first_index(row, m):
        """Index of the first entry equal to ``m`` (blocks counted vectorised, then scanned)."""
        K = row.size
        for lo in range(0, K, 256):
            part = row[lo : lo + 256]
            c = 0
            for k in range(part.size):
                c += part[k] == m
            if c:
                for k in range(part.size):
                    if part[k] == m:
                        return lo + k
        return -1

    # The sweeps take views and loop from 0: with ``range(lo, hi)`` numba cannot
    # drop its negative-index wraparound and LLVM no longer vectorises the loop.
    @_jit
    def _block(row, nxt, m, mx, buf, store, wide):
        """Sum of the terms of ``row``, the max of ``nxt`` folded into ``mx``, terms into ``buf``."""
        s = 0.0
        if wide:
            if store:
                for k in range(row.size):
                    t, _, _ = _term_wide(np.float64(row[k]), m)
                    buf[k] = t
                    s = _radd(s, t)
                    mx = _maxnum(mx, nxt[k])
            else:
                for k in range(row.size):
                    t, _, _ = _term_wide(np.float64(row[k]), m)
                    s = _radd(s, t)
                    mx = _maxnum(mx, nxt[k])
        elif store:
            for k in range(row.size):
                t = _exp_narrow(np.float64(row[k]) - m)
                buf[k] = t
                s = _radd(s, t)
                mx = _maxnum(mx, nxt[k])
        else:
            for k in range(row.size):
                t = _exp_narrow(np.float64(row[k]) - m)
                s = _radd(s, t)
                mx = _maxnum(mx, nxt[k])
        return s, mx

    @_jit
    def _row_sum(row, nxt, m, buf, store, wide):
        """``(s, max(nxt))`` for a row with finite max ``m``; terms into ``buf`` if ``store``."""
        K = row.size
        km = _first_index(row, m)
        if km < 0:  # m is NaN (see _maxnum): the row is NaN
            return np.nan, _row_max(nxt)
        tot, comp = 0.0, 0.0
        mx = nxt[km]  # in the input dtype: no conversion in the sweep
        if store:
            buf[km] = 1.0
        block = _BLOCK_WIDE if wide else _BLOCK_NARROW
        for lo in range(0, K, block):
            hi = min(lo + block, K)
            if lo <= km < hi:  # leave the max term out by index: it is exactly 1
                b1, mx = _block(row[lo:km], nxt[lo:km], m, mx, buf[lo:km], store, wide)
                b2, mx = _block(row[km + 1 : hi], nxt[km + 1 : hi], m, mx, buf[km + 1 : hi], store, wide)
                b = b1 + b2
            else:
                b, mx = _block(row[lo:hi], nxt[lo:hi], m, mx, buf[lo:hi], store, wide)
            t = tot + b  # Neumaier's compensated addition of the block sums
            comp += (tot - t) + b if abs(tot) >= abs(b) else (b - t) + tot
            tot = t
        return tot + comp, np.float64(mx)

    @_jit
    def _has_nan(row):
        c = 0
        for k in range(row.size):
            c += row[k] != row[k]
        return c > 0

    @_jit
    def _special_row(row, m, out_row, kind):
        """A row whose max is not finite: the contract's values. Returns ``(m, s)``."""
        if _has_nan(row):
            for k in range(out_row.size):
                out_row[k] = np.nan
            return np.nan, np.nan
        if m == -np.inf:  # no mass: softmax 0, log_softmax -inf
            fill = 0.0 if kind == 1 else -np.inf
            for k in range(out_row.size):
                out_row[k] = fill
            return m, 0.0
        count = 0  # +inf entries: the limit is uniform over them
        for k in range(row.size):
            count += row[k] == np.inf
        at = 1.0 / count if kind == 1 else -math.log(count)
        off = 0.0 if kind == 1 else -np.inf
        for k in range(out_row.size):
            out_row[k] = at if row[k] == np.inf else off
        return m, 0.0

    @_jit
    def _write_row(row, m, s, err_wide, buf, out_row, kind):
        """Third sweep: softmax ``t / (1 + s)`` from ``buf``, or log_softmax ``(x - m) - log1p(s)``."""
        if kind == 1 and err_wide:  # a division, not a reciprocal: 0.5 ulp less in float64
            z = 1.0 + s
            for k in range(row.size):
                out_row[k] = buf[k] / z
        elif kind == 1:
            inv = 1.0 / (1.0 + s)
            for k in range(row.size):
                out_row[k] = buf[k] * inv
        elif err_wide:
            lg = math.log1p(s)
            for k in range(row.size):
                a = np.float64(row[k])
                d = a - m
                bv = d - a
                e = (a - (d - bv)) - (bv + m)
                e = 0.0 if d == -np.inf else e
                out_row[k] = (d - lg) + e
        else:
            lg = math.log1p(s)
            for k in range(row.size):
                out_row[k] = (np.float64(row[k]) - m) - lg

    @_jit
    def _rows_kernel(x, m_out, s_out, out, kind, wide):
        """Every row: ``(m, s)`` into ``m_out``/``s_out``; for kind 1/2 the output rows too."""
        n, K = x.shape
        if n == 0:
            return
        if K == 0:
            m_out[:] = -np.inf
            s_out[:] = 0.0
            return
        buf = np.empty(K if kind == 1 else 1)  # softmax keeps the row's terms for its third sweep
        m = _row_max(x[0])
        for i in range(n):
            row = x[i]
            nxt = x[i + 1] if i + 1 < n else row
            out_row = out[i]  # empty for logsumexp
            if math.isfinite(m):
                s, m_next = _row_sum(row, nxt, m, buf, kind == 1, wide)
                if kind:
                    _write_row(row, m, s, wide, buf, out_row, kind)
                m_i, s_i = m, s
            else:
                m_i, s_i = _special_row(row, m, out_row, kind)
                m_next = _row_max(nxt)
            if s_i != s_i:
                m_i = np.nan
            m_out[i], s_out[i] = m_i, s_i
            m = m_next

    @numba.njit(cache=True, nogil=True)
    def _vector_parts(x, wide):
        """``(m, s)`` of one contiguous vector: a single dispatch for the short-input path."""
        m_out, s_out = np.empty(1), np.empty(1)
        _rows_kernel(x.reshape((1, x.size)), m_out, s_out, np.empty((1, 0)), 0, wide)
        return m_out[0], s_out[0]


def lse_vector(x: np.ndarray) -> float:
    """logsumexp of a C-contiguous 1-D float32/float64 array, as a Python float.

    The same computation as :func:`lse_rows`, for short vectors where the call
    overhead of the general path would dominate.
    """
    m, s = _vector_parts(_check_vector(x), x.dtype.char == "d")
    return m + math.log1p(s) if math.isfinite(m) else m


def _check_vector(x: np.ndarray) -> np.ndarray:
    if x.dtype.char not in "fd" or x.ndim != 1 or not x.flags.c_contiguous or x.size == 0:
        raise ShapeError(f"x of shape {x.shape} and dtype {x.dtype}: lse_vector takes a non-empty contiguous 1-D float32/float64 array.")
    return x
