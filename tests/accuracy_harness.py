"""The mpmath accuracy battery: how many ulps each function is from the exact answer.

Every case is a 1-D row cast to the dtype under test *first*; the reference
is then computed in mpmath (50 significant digits by default) from the cast
values exactly, so the measure charges an implementation only for its own
rounding, never for the rounding of its input (issue 2, item 5).

Errors are counted in units in the last place (ulps) of the dtype under test,
with the subnormal spacing below the normals:

* ``logsumexp``: ``|got - lse| / ulp(max(|lse|, max|x|))``. The inputs
  themselves are only known to half an ulp of ``max|x|``, so that is the
  scale the result can be held to.
* ``softmax``, ``log_softmax`` and ``cross_entropy``: elementwise,
  ``|got - ref| / ulp(ref)``, the relative accuracy of every element.
* Special values must match exactly (error 0 or ``inf``): ``-inf`` and the
  exact ``0`` of a masked or ``-inf`` entry, and ``+-inf`` where the exact
  value is past the dtype's largest finite number (round to nearest
  overflows there).

The same code measures any :class:`Implementation`, so
``benchmarks/accuracy.py`` sets SciPy and PyTorch beside stablesoftmax, and
``tests/test_accuracy.py`` holds stablesoftmax to the goals, on NumPy arrays
and on torch CPU tensors (``"stablesoftmax-torch"``) alike.

This is a test harness, not part of the shipped package: it lives in
``tests/`` and is imported as ``tests.accuracy_harness`` from the repository
root (``python -m pytest`` puts the root on ``sys.path``;
``benchmarks/accuracy.py`` does so itself). mpmath is a test dependency; it
is imported only when a reference is computed.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from numpy.typing import DTypeLike

__all__ = [
    "FUNCTIONS",
    "DTYPES",
    "Case",
    "Exact",
    "Implementation",
    "AccuracyRow",
    "battery",
    "reference",
    "ulp",
    "ulp_error",
    "ulp_errors",
    "IMPLEMENTATIONS",
    "implementation",
    "measure",
    "accuracy_rows",
]

FUNCTIONS = ("logsumexp", "softmax", "log_softmax", "cross_entropy")
"""The functions the battery measures, in table order."""

DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes the battery measures, narrowest first."""

RawRow = tuple[str, np.ndarray, "np.ndarray | None"]


class _Format(NamedTuple):
    """Precision in bits (hidden bit included), smallest normal and largest exponent."""

    prec: int
    emin: int
    emax: int


_FORMATS = {
    np.dtype(np.float16): _Format(11, -14, 15),
    np.dtype(ml_dtypes.bfloat16): _Format(8, -126, 127),
    np.dtype(np.float32): _Format(24, -126, 127),
    np.dtype(np.float64): _Format(53, -1022, 1023),
}


# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Case:
    """One row of the battery, already in the dtype under test.

    Attributes
    ----------
    name : str
        Unique within a battery; says how the row was made.
    x : ndarray, shape (n,)
        The logits, of the dtype under test.
    where : ndarray of bool, shape (n,), or None
        False entries are left out (``where=`` of the library functions).
    targets : tuple of int
        Class indices for ``cross_entropy``: unmasked, finite entries (the
        row's max, its min and one drawn at random). Empty for a row with
        no such entry.
    """

    name: str
    x: np.ndarray
    where: np.ndarray | None
    targets: tuple[int, ...]

    def masked(self) -> np.ndarray:
        """``x`` with its masked entries set to ``-inf``: the input a library without ``where=`` is given."""
        if self.where is None:
            return self.x
        return np.where(self.where, self.x, np.array(-np.inf, dtype=self.x.dtype))


@dataclass(frozen=True, eq=False)
class Exact:
    """Exact values of one function on one case, stored for a vectorised ulp count.

    ``hi + lo`` is the exact value divided by ``unit`` (its ulp in the dtype
    under test, a power of two), to about 106 bits: dividing by a power of
    two keeps float64's 53 bits even where the value is subnormal.

    Attributes
    ----------
    value : ndarray of float64
        The exact value rounded to float64 (for display), or the special value.
    hi, lo : ndarray of float64
        ``value / unit`` as an unevaluated sum; 0 where ``special``.
    unit : ndarray of float64
        One ulp of the dtype under test at the scale the error is measured in.
    special : ndarray of bool
        Entries a result must match exactly: ``+-inf`` and exact zeros.
    """

    value: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    unit: np.ndarray
    special: np.ndarray

    def take(self, index: Sequence[int], sign: float = 1.0) -> Exact:
        """The entries at ``index``, multiplied by ``sign`` (+1 or -1)."""
        i = np.asarray(index, dtype=np.intp)
        return Exact(sign * self.value[i], sign * self.hi[i], sign * self.lo[i], self.unit[i], self.special[i])


@dataclass(frozen=True)
class Implementation:
    """A library under measurement.

    Attributes
    ----------
    name : str
        Shown in tables.
    call : callable
        ``call(function, case)`` returns the library's result for ``case`` as
        a NumPy array of the library's output dtype: shape ``()`` for
        ``logsumexp``, ``(n,)`` for ``softmax``/``log_softmax`` and
        ``(len(case.targets),)`` for ``cross_entropy``.
    missing : callable
        ``missing(function, dtype)`` says why the pair cannot be measured
        (the library lacks the function, raises, or answers in another
        dtype), or returns None.
    """

    name: str
    call: Callable[[str, Case], np.ndarray]
    missing: Callable[[str, np.dtype], str | None]


@dataclass(frozen=True)
class AccuracyRow:
    """One line of the accuracy table.

    Attributes
    ----------
    library, function, dtype : str
        What was measured.
    max_ulp, median_ulp : float
        Over every element of every case (the median leaves out the special
        values, which are 0 or ``inf``). NaN when not measured.
    worst_case : str
        Name of the case holding the largest error ("" when not measured).
    detail : str
        The worst element: input, result, exact value and error.
    note : str
        Why the pair was not measured, or "" when it was.
    warned : str
        The first warning the library raised over the battery, as
        ``"<case>: <category>: <message>"``, or "".
    special_wrong : int
        How many special values (``+-inf``, exact zeros) the library got
        wrong; each counts as an infinite error in ``max_ulp``.
    finite_max_ulp, finite_worst_case : float, str
        The largest error, and its case, over the elements whose exact
        value is not special: the accuracy apart from the special values.
    """

    library: str
    function: str
    dtype: str
    max_ulp: float
    median_ulp: float
    worst_case: str
    detail: str = ""
    note: str = ""
    warned: str = ""
    special_wrong: int = 0
    finite_max_ulp: float = math.nan
    finite_worst_case: str = ""


# --------------------------------------------------------------------------
# The battery
# --------------------------------------------------------------------------

_LAB_ROWS = (
    [0.1, 0.2, 0.3, 0.4, 0.5],
    [-3.0, 0.0, 1.0, 2.0, 5.0],
    [1.0, 92.0, 3.0, 0.0, 2.0],
    [-100.0, -200.0, -300.0, -400.0, -500.0],
    [5.0] * 5,
    [1.0, -np.inf, 3.0, 0.0, 2.0],
    [42.0],
    [0.0] * 600,
    [0.0, 0.0, 0.0],
    [1.0, 2.0, 3.0],
    [1000.0, 1001.0, 1002.0],
    [-1000.0, -999.0, -998.0],
    [1.2, 4.7, 3.1, 0.5, 2.9],
    [10.0, 92.0, 30.0, -50.0, 40.0],
)
_SCALES = (1.0, 10.0, 100.0, 1e4)
# width: rows per scale. Full-width (100 000) rows are few: each costs
# 100 000 mpmath exponentials per dtype.
_WIDTHS = {1: 8, 2: 8, 5: 8, 600: 2, 10_000: 1}
_QUICK_WIDTHS = {1: 3, 2: 3, 5: 3, 600: 1}
_WIDE_SCALES = (1.0, 100.0)
_WIDE = 100_000


def battery(dtype: DTypeLike, /, *, seed: int = 0, quick: bool = False) -> list[Case]:
    """The accuracy battery for one dtype, deterministic for a given ``seed``.

    Parameters
    ----------
    dtype : dtype
        float16, bfloat16, float32 or float64. Rows are generated in float64
        and cast to ``dtype`` first; the rows tied to the dtype's limits and
        ulp spacing are made for it.
    seed : int, default 0
        Seed of the ``np.random.default_rng`` every random row comes from.
    quick : bool, default False
        A smaller battery: no rows of 10 000 or 100 000 entries, fewer
        Gaussian rows.

    Returns
    -------
    list of Case
        The fixed lab rows; Gaussian rows at scales 1, 10, 100 and 1e4 and
        widths 1 to 100 000; one-dominant rows (the others 20 to 40 below the
        max); rows whose other terms sum to just under or over 1; near-ties a
        few ulps apart; masked rows (junk, NaN and ``inf`` under the mask,
        fully masked); rows at the dtype's largest and smallest magnitudes.
    """
    dt = _dtype(dtype)
    rng = np.random.default_rng(seed)
    rows: list[RawRow] = [(f"lab {_short(r)}", np.array(r), None) for r in _LAB_ROWS]
    rows += _gaussian_rows(rng, quick)
    rows += _dominant_rows(rng)
    rows += _log1p_rows(rng)
    rows += _near_tie_rows(rng, dt)
    rows += _masked_rows(rng, dt)
    rows += _limit_rows(dt)
    return [_case(name, x, where, dt, rng) for name, x, where in rows]


def _gaussian_rows(rng: np.random.Generator, quick: bool) -> list[RawRow]:
    rows: list[RawRow] = []
    for scale in _SCALES:
        for width, count in (_QUICK_WIDTHS if quick else _WIDTHS).items():
            rows += [(f"gauss s={scale:g} n={width} #{i}", rng.normal(0.0, scale, width), None) for i in range(count)]
    if not quick:
        rows += [(f"gauss s={scale:g} n={_WIDE}", rng.normal(0.0, scale, _WIDE), None) for scale in _WIDE_SCALES]
    return rows


def _dominant_rows(rng: np.random.Generator) -> list[RawRow]:
    """One entry at ``m``, every other one 20 to 40 below: ``s`` is tiny, ``log1p`` matters."""
    rows: list[RawRow] = []
    for width in (2, 5, 600):
        for m in (0.0, 50.0, -1000.0, 1e4):
            x = m - rng.uniform(20.0, 40.0, width)
            x[rng.integers(width)] = m
            rows.append((f"dominant m={m:g} n={width}", x, None))
    return rows


def _log1p_rows(rng: np.random.Generator) -> list[RawRow]:
    """The terms other than the max sum to ``1 + delta``: ``log1p``'s argument is near 1."""
    rows: list[RawRow] = []
    for others in (2, 3, 8):
        for delta in (-0.1, -1e-3, -1e-7, -1e-15, 1e-15, 1e-7, 1e-3, 0.1):
            for m in (0.0, 2.5):
                w = rng.dirichlet(np.ones(others))
                x = np.concatenate([[m], m + np.log(w * (1.0 + delta))])
                rows.append((f"others sum to 1{delta:+.0e} n={others + 1} m={m:g}", x, None))
    return rows


def _near_tie_rows(rng: np.random.Generator, dt: np.dtype) -> list[RawRow]:
    """Entries a few ulps of ``dt`` apart (ties included) around a few bases."""
    fmt = _FORMATS[dt]
    rows: list[RawRow] = []
    for base in (1.0, -50.0, 1000.0, *rng.normal(0.0, 10.0, 2)):
        b = float(np.float64(base).astype(dt))
        step = math.ldexp(1.0, max(math.frexp(b)[1] - 1, fmt.emin) - fmt.prec + 1)
        for width in (2, 5, 600):
            x = b + step * rng.integers(-3, 4, width)
            rows.append((f"near-tie b={b:.6g} n={width}", x, None))
    return rows


def _masked_rows(rng: np.random.Generator, dt: np.dtype) -> list[RawRow]:
    """``where=`` rows; what sits under the mask (NaN, ``inf``, the dtype's max) must not matter."""
    big = float(ml_dtypes.finfo(dt).max)
    junk = np.array([np.nan, np.inf, -np.inf, big, 1e4])
    rows: list[RawRow] = []
    for i, (scale, width) in enumerate(((10.0, 600), (100.0, 5), (100.0, 5), (1.0, 50))):
        x, keep = rng.normal(0.0, scale, width), rng.random(width) > 0.3
        x[~keep] = rng.choice(junk, int((~keep).sum()))
        rows.append((f"masked gauss s={scale:g} n={width} #{i}", x, keep))
    rows.append(("masked max", np.array([1000.0, 1.0, 2.0, 3.0]), np.array([False, True, True, True])))
    rows.append(("masked all but one", np.array([np.nan, 5.0, np.inf]), np.array([False, True, False])))
    rows.append(("masked dominant", np.array([0.0, -25.0, -30.0, np.nan, big]), np.arange(5) < 3))
    rows.append(("masked all", np.array([1.0, 2.0, 3.0]), np.zeros(3, dtype=bool)))
    return rows


def _limit_rows(dt: np.dtype) -> list[RawRow]:
    """Rows at the dtype's largest and smallest magnitudes."""
    info, fmt = ml_dtypes.finfo(dt), _FORMATS[dt]
    big, tiny, sub = float(info.max), float(info.tiny), float(info.smallest_subnormal)
    step = math.ldexp(1.0, fmt.emax - fmt.prec + 1)  # the spacing just below big
    deep = -math.log(tiny)  # exp(-deep) is the smallest normal
    return [
        ("limit +-max", np.array([big, big / 2, big / 4, 0.0, -big / 2, -big]), None),
        ("limit top ties", np.array([big, big, big - step, big - 2 * step]), None),
        ("limit max and small", np.array([big, 1.0, 0.0, -1.0]), None),
        ("limit -max", np.array([-big, -(big - step), -big / 2]), None),
        ("limit max x600", np.full(600, big), None),
        ("limit tiny", np.array([tiny, 2 * tiny, sub, 0.0, -tiny, -sub]), None),
        ("limit subnormal softmax", np.array([0.0, -deep - 1, -deep - 4, math.log(sub) + 1]), None),
    ]


def _case(name: str, x64: np.ndarray, where: np.ndarray | None, dt: np.dtype, rng: np.random.Generator) -> Case:
    """Cast the row to ``dt`` and pick its cross-entropy targets: the max, the min and one at random."""
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and inf junk under the mask cast quietly
        x = np.asarray(x64, dtype=np.float64).astype(dt)
    finite = np.isfinite(x.astype(np.float64))
    idx = np.flatnonzero(finite if where is None else where & finite)
    if idx.size == 0:
        return Case(name, x, where, ())
    xi = x[idx].astype(np.float64)
    picks = (idx[np.argmax(xi)], idx[np.argmin(xi)], rng.choice(idx))
    return Case(name, x, where, tuple(dict.fromkeys(int(i) for i in picks)))


def _short(row: Sequence[float]) -> str:
    return f"zeros({len(row)})" if len(row) > 20 else "[" + ", ".join(f"{v:g}" for v in row) + "]"


# --------------------------------------------------------------------------
# Exact references
# --------------------------------------------------------------------------


def reference(case: Case, /, *, dps: int = 50) -> dict[str, Exact]:
    """Exact ``logsumexp``, ``softmax`` and ``log_softmax`` of a case, from mpmath.

    .. math:: m = \\max_i x_i, \\quad s = \\sum_{i \\ne k} e^{x_i - m}, \\quad
              \\operatorname{lse} = m + \\operatorname{log1p}(s)

    ``x_i - m`` is formed exactly and ``log_softmax`` is ``(x_i - m) -
    log1p(s)``, so the reference has no cancellation of its own even where
    ``x`` is near the dtype's largest value.

    Parameters
    ----------
    case : Case
        A row of :func:`battery`. Unmasked entries may be finite or ``-inf``.
    dps : int, default 50
        mpmath working precision in decimal digits.

    Returns
    -------
    dict of str to Exact
        Keyed by function name; ``logsumexp`` has shape ``(1,)``, the others
        ``(n,)``. The ``cross_entropy`` reference is ``-log_softmax`` at the
        targets.

    Raises
    ------
    ValueError
        If an unmasked entry is NaN or ``+inf``; the contract tests, not
        the accuracy battery, cover those.
    """
    mp = _mpmath()
    fmt = _FORMATS[_dtype(case.x.dtype)]
    x = case.x.astype(np.float64)
    used = (x != -np.inf) if case.where is None else case.where & (x != -np.inf)
    if np.isnan(x[used]).any() or (x[used] == np.inf).any():
        raise ValueError(
            f"case {case.name!r} has NaN or +inf among its unmasked entries; the battery holds finite rows."
        )
    if not used.any():  # every entry masked or -inf: the contract's -inf, zeros and -inf, exactly
        lse, sm, ls = [-math.inf], [0.0] * x.size, [-math.inf] * x.size
        return {"logsumexp": _exact(lse, fmt), "softmax": _exact(sm, fmt), "log_softmax": _exact(ls, fmt)}
    values, inverse = np.unique(x[used], return_inverse=True)
    with mp.workdps(dps):
        lse, sm, ls = _exact_rows(mp, values, np.bincount(inverse))
        scale = max(abs(lse), abs(mp.mpf(values[0])), abs(mp.mpf(values[-1])))
        return {
            "logsumexp": _exact([lse], fmt, scale),
            "softmax": _scatter(sm, inverse, used, 0.0, fmt),
            "log_softmax": _scatter(ls, inverse, used, -math.inf, fmt),
        }


def _exact_rows(mp: Any, values: np.ndarray, counts: np.ndarray) -> tuple[Any, list[Any], list[Any]]:
    """``lse`` and, per distinct value (sorted, ``counts`` copies each), ``softmax`` and ``log_softmax``."""
    m = mp.mpf(float(values[-1]))
    d = [mp.fsub(mp.mpf(float(v)), m, exact=True) for v in values]  # exact: no rounding before exp
    t = [mp.exp(di) for di in d]
    # s leaves out one copy of the max term (exactly 1) rather than subtracting 1, which cancels when s is tiny.
    s = mp.fsum([ti * int(c) for ti, c in zip(t[:-1], counts[:-1], strict=True)] + [int(counts[-1]) - 1])
    log1p_s, one_plus_s = mp.log1p(s), 1 + s
    return m + log1p_s, [ti / one_plus_s for ti in t], [di - log1p_s for di in d]


def _scatter(per_value: list[Any], inverse: np.ndarray, used: np.ndarray, fill: float, fmt: _Format) -> Exact:
    """Spread per-distinct-value references to the row; unused entries hold ``fill`` exactly."""
    short = _exact(per_value, fmt)
    full = _exact([fill], fmt)
    parts = {}
    for name in ("value", "hi", "lo", "unit", "special"):
        arr = np.repeat(getattr(full, name), used.size)
        arr[used] = getattr(short, name)[inverse]
        parts[name] = arr
    return Exact(**parts)


def _exact(values: Sequence[Any], fmt: _Format, scale: Any = None) -> Exact:
    """Store mpmath values (or exact Python floats) as an :class:`Exact`.

    ``scale`` (default: each value) is where the ulp is taken.
    """
    mp = _mpmath()
    # Half an ulp past the largest finite value: round to nearest gives inf from there on.
    overflow = mp.ldexp(mp.fsub(2, mp.ldexp(1, -fmt.prec), exact=True), fmt.emax)
    fixed = None if scale is None else _unit_exponent(_as_mpf(mp, scale), fmt)
    n = len(values)
    value, hi, lo, unit = np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n)
    special = np.zeros(n, dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, float) or not v or abs(v) >= overflow:
            special[i] = True
            value[i] = float(v) if isinstance(v, float) or not v else math.copysign(math.inf, v)
            continue
        e = _unit_exponent(v, fmt) if fixed is None else fixed
        value[i], hi[i], lo[i] = _split(v, e)
        unit[i] = math.ldexp(1.0, e)
    return Exact(value, hi, lo, unit, special)


def _split(v: Any, e: int) -> tuple[float, float, float]:
    """``(float(v), hi, lo)`` with ``hi + lo = v / 2**e`` to ~106 bits, in exact integer arithmetic."""
    sign, man, exp, _ = v._mpf_  # v = (-1)**sign * man * 2**exp exactly
    man, k = (-man if sign else man), exp - e  # v / 2**e = man * 2**k
    hi = _dyadic(man, k)
    a, b = hi.as_integer_ratio()  # hi = a / b, b a power of two
    shift = b.bit_length() - 1
    lo = _dyadic((man * b << k) - a, -shift) if k >= 0 else _dyadic(man * b - (a << -k), k - shift)
    return _dyadic(man, exp), hi, lo


def _dyadic(n: int, k: int) -> float:
    """``n * 2**k`` correctly rounded to float64 (Python's int / int rounds correctly)."""
    if n.bit_length() + k < -1100:  # below half the smallest subnormal, and too deep for exact integers
        return math.copysign(0.0, n)
    if n.bit_length() + k > 1024:
        return math.copysign(math.inf, n)
    return float(n << k) if k >= 0 else n / (1 << -k)


# --------------------------------------------------------------------------
# Units in the last place
# --------------------------------------------------------------------------


def ulp(value: Any, dtype: DTypeLike) -> Any:
    """One unit in the last place of ``dtype`` at ``|value|``.

    Parameters
    ----------
    value : float or mpmath.mpf
        Finite. Below the dtype's smallest normal the subnormal spacing is
        returned.
    dtype : dtype
        float16, bfloat16, float32 or float64.

    Returns
    -------
    mpmath.mpf
        A power of two: ``2**(max(floor(log2|value|), emin) - p + 1)`` with
        ``p`` the precision in bits and ``emin`` the smallest normal exponent.
        The exponent is read from the binary representation, never from a
        rounded logarithm.
    """
    mp = _mpmath()
    return mp.ldexp(1, _unit_exponent(_as_mpf(mp, value), _FORMATS[_dtype(dtype)]))


def ulp_error(got: Any, ref: Any, dtype: DTypeLike, scale: Any = None) -> float:
    """``|got - ref|`` in ulps of ``dtype`` at ``scale`` (default ``|ref|``).

    Parameters
    ----------
    got : float
        A computed result.
    ref : float or mpmath.mpf
        The exact value.
    dtype : dtype
        The dtype whose ulp is the unit.
    scale : float or mpmath.mpf, optional
        Where the ulp is taken; ``|ref|`` by default.

    Returns
    -------
    float
        The error in ulps. Special values must match exactly: 0 when they do
        (NaN matches NaN), ``inf`` when they do not.
    """
    mp = _mpmath()
    got = float(got)
    if not math.isfinite(got) or not mp.isfinite(ref):
        same = (math.isnan(got) and mp.isnan(ref)) or got == ref
        return 0.0 if same else math.inf
    ref = _as_mpf(mp, ref)
    scale = abs(ref) if scale is None else scale
    return float(abs(mp.mpf(got) - ref) / ulp(scale, dtype))


def ulp_errors(got: Any, ref: Exact) -> np.ndarray:
    """Elementwise error of ``got`` against ``ref``, in ``ref``'s ulps.

    Parameters
    ----------
    got : array_like
        Results, of ``ref``'s size (any float dtype; widened exactly to float64).
    ref : Exact
        The exact values.

    Returns
    -------
    ndarray of float64
        ``|got / unit - (hi + lo)|``; 0 or ``inf`` at special entries; ``inf``
        where ``got`` is NaN or infinite and the exact value is not.
    """
    g = np.asarray(got).astype(np.float64).reshape(ref.value.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN results: counted as an infinite error below
        err = np.abs(g / ref.unit - ref.hi - ref.lo)  # g / unit is exact: unit is a power of two
    err[np.isnan(err)] = np.inf
    same = (g == ref.value) | (np.isnan(g) & np.isnan(ref.value))
    return np.where(ref.special, np.where(same, 0.0, np.inf), err)


def _as_mpf(mp: Any, v: Any) -> Any:
    """``v`` as an mpf without rounding an mpf to the current precision (that could cross a power of two)."""
    if isinstance(v, mp.mpf):
        return v
    return mp.mpf(float(v)) if isinstance(v, (float, np.floating)) else mp.mpf(v)


def _unit_exponent(v: Any, fmt: _Format) -> int:
    """Exponent of one ulp at the mpf ``v``: ``max(floor(log2|v|), emin) - prec + 1``."""
    e = fmt.emin if not v else max(int(v.exp) + int(v.bc) - 1, fmt.emin)
    return e - fmt.prec + 1


# --------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------


def implementation(name: str) -> Implementation:
    """The adapter for one library: one of :data:`IMPLEMENTATIONS`.

    ``"stablesoftmax"`` is the library on NumPy arrays;
    ``"stablesoftmax-torch"`` is the same functions called on CPU torch
    tensors (the input copied into a tensor, the result read back from the
    tensor the library returns), so the torch backend is held to the same
    goals. ``"scipy"`` and ``"torch"`` are those libraries' own functions.

    SciPy and PyTorch have no ``where=``; they get masked entries as
    ``-inf``, which is what ``where=False`` means. Their pairs that raise,
    or answer in another dtype than the input's, are reported as missing.
    stablesoftmax's pairs are never probed: an error there is an error.

    Parameters
    ----------
    name : str
        The implementation.

    Returns
    -------
    Implementation

    Raises
    ------
    ImportError
        If the library it needs (SciPy, torch) is not installed.
    ValueError
        For an unknown name.
    """
    if name not in IMPLEMENTATIONS:
        allowed = ", ".join(repr(n) for n in IMPLEMENTATIONS)
        raise ValueError(f"implementation name={name!r} is unknown; allowed: {allowed}.")
    needs = "torch" if name == "stablesoftmax-torch" else name
    if needs != "stablesoftmax" and importlib.util.find_spec(needs) is None:
        raise ImportError(f"{needs} is not installed")
    if name == "stablesoftmax":
        return Implementation(name, _call_ours, _missing_ours)
    if name == "stablesoftmax-torch":
        return Implementation(name, _call_ours_torch, _missing_ours)
    call = {"scipy": _call_scipy, "torch": _call_torch}[name]
    return Implementation(name, call, functools.cache(functools.partial(_probe, call, name)))


IMPLEMENTATIONS = ("stablesoftmax", "stablesoftmax-torch", "scipy", "torch")
"""The names :func:`implementation` knows."""


def _call_ours(function: str, case: Case) -> np.ndarray:
    return _ours(function, case, lambda a: a, np.asarray)


def _call_ours_torch(function: str, case: Case) -> np.ndarray:
    import torch

    def to(a: np.ndarray) -> Any:
        return _to_torch(torch, a).clone()  # a copy: the cached case must not share memory with the call

    def back(out: Any) -> np.ndarray:
        if not isinstance(out, torch.Tensor) or out.device.type != "cpu":
            raise TypeError(f"stablesoftmax.{function} returned {type(out).__name__} for a CPU torch tensor.")
        return _from_torch(torch, out)

    return _ours(function, case, to, back)


def _ours(function: str, case: Case, to: Callable[[np.ndarray], Any], back: Callable[[Any], np.ndarray]) -> np.ndarray:
    """stablesoftmax's ``function`` on ``case``, its arrays passed through ``to`` and the result through ``back``.

    ``cross_entropy`` gets every target of the case at once: the row
    repeated, ``reduction="none"``.
    """
    import stablesoftmax

    fn = getattr(stablesoftmax, function)
    if function != "cross_entropy":
        return back(fn(to(case.x), where=None if case.where is None else to(case.where)))
    reps = len(case.targets)
    kwargs: dict[str, Any] = {"axis": -1, "reduction": "none"}
    x = case.x
    if case.where is not None and "where" in inspect.signature(fn).parameters:
        kwargs["where"] = to(np.repeat(case.where[None], reps, axis=0))
    else:
        x = case.masked()
    return back(fn(to(np.repeat(x[None], reps, axis=0)), to(np.array(case.targets)), **kwargs))


def _missing_ours(function: str, dtype: np.dtype) -> str | None:
    import stablesoftmax

    if hasattr(stablesoftmax, function):
        return None
    return f"stablesoftmax.{function} does not exist yet"


def _call_scipy(function: str, case: Case) -> np.ndarray:
    from scipy import special

    if function == "cross_entropy":
        raise NotImplementedError("SciPy has no cross-entropy")
    return np.asarray(getattr(special, function)(case.masked(), axis=-1))


def _call_torch(function: str, case: Case) -> np.ndarray:
    import torch

    x = _to_torch(torch, case.masked())
    if function == "cross_entropy":
        logits = x[None].expand(len(case.targets), -1)
        out = torch.nn.functional.cross_entropy(logits, torch.tensor(case.targets), reduction="none")
    else:
        out = getattr(torch, function)(x, dim=-1)
    return _from_torch(torch, out)


def _to_torch(torch: Any, x: np.ndarray) -> Any:
    if x.dtype == DTYPES[1]:
        return torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x))


def _from_torch(torch: Any, t: Any) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(DTYPES[1])
    return t.detach().numpy()


def _probe(call: Callable[[str, Case], np.ndarray], library: str, function: str, dtype: np.dtype) -> str | None:
    """Why ``library`` cannot do ``function`` in ``dtype`` (tried on a small row), or None."""
    case = Case("probe", np.array([0.0, 1.0, 2.0]).astype(dtype), None, (0, 2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call(function, case)
    except NotImplementedError as exc:  # the adapter's own word: the library has no such function
        return str(exc)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{library} raises: {first[:60]}"
    if out.dtype != dtype:
        return f"{library} returns {out.dtype} for {dtype} input"
    return None


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def measure(
    impl: Implementation, function: str, dtype: DTypeLike, /, *, seed: int = 0, quick: bool = False
) -> AccuracyRow:
    """Measure one function of one implementation in one dtype over the battery.

    Parameters
    ----------
    impl : Implementation
        From :func:`implementation`, or your own.
    function : str
        One of :data:`FUNCTIONS`.
    dtype : dtype
        One of :data:`DTYPES`; the input and the result are both of it.
    seed, quick
        Passed to :func:`battery`. References are computed once per
        ``(dtype, seed, quick)`` and reused.

    Returns
    -------
    AccuracyRow
        With ``note`` set, and NaN errors, when the pair cannot be measured.

    Raises
    ------
    TypeError
        If a result comes back in another dtype than the input's (for a
        library whose ``missing`` did not say so).

    Examples
    --------
    >>> from tests import accuracy_harness as accuracy
    >>> ours = accuracy.implementation("stablesoftmax")
    >>> row = accuracy.measure(ours, "log_softmax", "float32", quick=True)
    >>> row.max_ulp <= 0.5 + 1e-9    # computed wide, rounded once
    True
    """
    dt = _dtype(dtype)
    if function not in FUNCTIONS:
        raise ValueError(f"function={function!r} is unknown; allowed: {', '.join(FUNCTIONS)}.")
    why = impl.missing(function, dt)
    if why:
        return AccuracyRow(impl.name, function, dt.name, math.nan, math.nan, "", note=why)
    ordinary, worst, finite_worst, wrong, warned = [], (-1.0, "", ""), (-1.0, ""), 0, ""
    for case, ref, got, err, caught in _errors_per_case(impl, function, dt, seed, quick):
        ordinary.append(err[~ref.special])
        wrong += int(np.count_nonzero(err[ref.special]))  # special errors are 0 or inf
        warned = warned or caught
        if err.max() > worst[0]:
            worst = (float(err.max()), case.name, _detail(case, ref, got, err, function))
        if ordinary[-1].size and ordinary[-1].max() > finite_worst[0]:
            finite_worst = (float(ordinary[-1].max()), case.name)
    body = np.concatenate(ordinary)
    median = float(np.median(body)) if body.size else 0.0
    return AccuracyRow(
        impl.name,
        function,
        dt.name,
        worst[0],
        median,
        worst[1],
        worst[2],
        warned=warned,
        special_wrong=wrong,
        finite_max_ulp=finite_worst[0],
        finite_worst_case=finite_worst[1],
    )


def _errors_per_case(
    impl: Implementation, function: str, dt: np.dtype, seed: int, quick: bool
) -> Iterator[tuple[Case, Exact, np.ndarray, np.ndarray, str]]:
    """``(case, ref, result, errors, first warning)`` for every case the function applies to."""
    for case, refs in _references(dt.name, seed, quick):
        if function == "cross_entropy":
            if not case.targets:
                continue
            ref = refs["log_softmax"].take(case.targets, sign=-1.0)
        else:
            ref = refs[function]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = impl.call(function, case)
        if got.dtype != dt:
            raise TypeError(f"{impl.name}.{function} returned {got.dtype} for {dt} input on case {case.name!r}.")
        note = f"{case.name}: {caught[0].category.__name__}: {caught[0].message}" if caught else ""
        yield case, ref, got.reshape(-1), ulp_errors(got, ref), note


def _detail(case: Case, ref: Exact, got: np.ndarray, err: np.ndarray, function: str) -> str:
    """``"<case>: ..."`` describing the element with the largest error."""
    i = int(np.argmax(err))
    at = case.targets[i] if function == "cross_entropy" else i
    with np.printoptions(threshold=12, edgeitems=3, precision=17, linewidth=10**6):
        row = np.array2string(case.x.astype(np.float64), separator=", ")
        mask = "" if case.where is None else f", where={np.array2string(case.where, separator=', ')}"
    return (
        f"{case.name}: element {at} (x[{at}] = {float(case.x[at])!r}, n = {case.x.size}): "
        f"got {float(got[i])!r}, exact {float(ref.value[i])!r}, {err[i]:.3g} ulp; x = {row}{mask}"
    )


def accuracy_rows(
    impl: Implementation,
    /,
    *,
    functions: Sequence[str] = FUNCTIONS,
    dtypes: Sequence[DTypeLike] = DTYPES,
    seed: int = 0,
    quick: bool = False,
) -> list[AccuracyRow]:
    """The accuracy table of one implementation: one row per function and dtype.

    Parameters
    ----------
    impl : Implementation
        What to measure.
    functions : sequence of str, default FUNCTIONS
    dtypes : sequence of dtype, default DTYPES
    seed, quick
        Passed to :func:`battery`.

    Returns
    -------
    list of AccuracyRow
        Function-major, in the order given.
    """
    return [measure(impl, f, d, seed=seed, quick=quick) for f in functions for d in dtypes]


@functools.cache
def _references(dtype_name: str, seed: int, quick: bool) -> tuple[tuple[Case, dict[str, Exact]], ...]:
    return tuple((case, reference(case)) for case in battery(dtype_name, seed=seed, quick=quick))


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _dtype(dtype: DTypeLike) -> np.dtype:
    names = {d.name: d for d in DTYPES}
    dt = names[dtype] if isinstance(dtype, str) and dtype in names else np.dtype(dtype)
    if dt not in _FORMATS:
        raise TypeError(f"dtype={dt} is not measured; allowed: float16, bfloat16, float32, float64.")
    return dt


def _mpmath() -> Any:
    import mpmath  # a test/lab dependency, imported only when a reference is needed

    return mpmath
