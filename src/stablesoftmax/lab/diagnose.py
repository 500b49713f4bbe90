r"""``stablesoftmax diagnose``: find the slices of a logits array that turn a loss into inf or NaN.

:func:`diagnose` scans logits (an array, or a file through the command) and
says, for each dtype asked about, which slices the textbook softmax and
cross-entropy would break on, before a training run finds out.

What "naive in dtype D" means
-----------------------------
The logits are cast to D (``x.astype(D)``, as the training code would hold
them). Then every elementary operation is computed in the *work* precision
of D and its result rounded to D: the work precision is float32 for float16
and bfloat16 (what PyTorch does on CPU and GPU, and what NumPy's float16 and
ml_dtypes' bfloat16 ufuncs do), and D itself for float32 and float64. Sums
accumulate in the work precision and are rounded to D once, as ``torch.sum``
does for 16-bit types. Subnormals are kept (IEEE default, NumPy and PyTorch
on CPU); kernels that flush subnormals to zero fail earlier than reported.

Two naive programs are checked:

* **Overflow** -- ``exp(x) / sum(exp(x))`` without the max shift: a slice
  overflows when ``exp`` of its largest entry rounds to ``inf`` in D, that is
  when ``max(x)`` exceeds about :math:`\log(\text{finfo(D).max})`: 11.09 in
  float16, 88.72 in bfloat16 and float32, 709.78 in float64. Logits that do
  not fit in D at all (cast to ``inf``) count here too.
* **Underflow** -- the max-shifted softmax followed by a log,
  ``-log(softmax(x)[target])`` (the "stable softmax, then log" of
  ``shared/seeds/break-ce-via-log-softmax.txt``): a slice underflows when the
  target's probability rounds to exactly 0 in D, so the loss is ``inf``.
  Without a target, when any probability of a (not ``-inf``) entry rounds to
  0. ``exp(x - max)`` rounds to 0 once ``x - max`` is below
  :math:`\log(\text{smallest subnormal} / 2)`: -17.33 in float16, -92.88 in
  bfloat16, -103.97 in float32, -745.13 in float64.

Both are decided by simulating those programs exactly: first on each slice's
max and target (or smallest) entry, which settles nearly every slice, then
on the whole slice where the sum in the denominator could tip the result.

The stable side is the library's: ``log_softmax`` for the smallest
probability and ``cross_entropy`` (``logsumexp(x) - x[target]``) for the
loss, in float64 on the logits as given; by its contract a fully masked
slice has loss 0. ``-inf`` entries are masked classes: they are left out
of the min, spread and argmin, and a probability of 0 there is no underflow.

Data problems are the same in every dtype: slices holding NaN, holding
``+inf``, fully masked (every entry ``-inf``), and targets that point at a
``-inf`` logit.

The picture
-----------
``--plot FILE.png`` draws each slice at its max (x) and spread, max - min (y),
against each dtype's cliffs, from its ``finfo``: ``log(finfo.max)`` where
``exp`` overflows, ``-log(smallest_subnormal / 2)`` where the smallest
probability rounds to 0 (the thresholds above), and ``-log(finfo.tiny)``
where it turns subnormal, which kernels that flush subnormals already make 0.
Each failing slice gets one marker, coloured by the widest dtype it breaks;
at most ``PLOT_FAILING`` markers and about ``PLOT_PASSING`` dots are drawn.

Files and memory
----------------
The command reads ``.npy`` and ``.safetensors`` through memory maps, one
window of about ``CHUNK_BYTES`` (8 MiB) at a time along the outermost axis
in memory, so a file of any size is diagnosed in bounded memory (a 2 GB
float32 file in under 60 MB; ``benchmarks/diagnose_memory.py``). That axis
must not be the classes axis: C-order files with classes on axis 0, and
Fortran-order files with classes on the last axis, are read whole, as are
``.npz``, ``.pt``/``.pth``, ``.csv``/``.tsv`` and ``.json``. Only the
``top`` worst slices are kept with their details.

JSON schema (``Report.to_json``; ``"schema": "stablesoftmax.diagnose/1"``)
--------------------------------------------------------------------------
Floats that are not finite are written as the strings ``"inf"``, ``"-inf"``
and ``"nan"``, so the output is strict JSON. ``null`` means "not defined"
(no target, or a slice with no finite entry)::

    {
      "schema": str,
      "source": {"name": str, "shape": [int], "dtype": str, "axis": int,
                 "slices": int, "classes": int, "target": bool,
                 "ignore_index": int | null},
      "data": {"nan": int, "posinf": int, "masked": int, "target_masked": int,
               "ignored": int, "max_logit": float, "min_logit": float,
               "max_spread": float, "worst": [slice]},
      "dtypes": {D: {"dtype": str, "overflow_above": float, "underflow_below": float,
                     "overflow": int, "underflow": int, "failing": int,
                     "worst": [slice]}},
      "verdict": {"status": "clean" | "fail", "message": str}
    }
    slice = {"index": [int], "problems": [str], "max": float, "min": float,
             "spread": float, "argmin": int, "min_prob": float,
             "min_log_prob": float, "target": int, "target_logit": float,
             "stable_loss": float, "naive_loss": float,
             "naive_unshifted_loss": float, "naive_prob": float}

``ignored`` counts the slices whose target equals ``ignore_index`` (null
without a target): the loss leaves them out, so their target is neither
range-checked nor looked at, while their logits are checked like any other.
``problems`` holds names from ``nan``, ``posinf``, ``masked``,
``target_masked``, ``overflow`` and ``underflow``. ``naive_loss`` is the
second program's ``-log(softmax(x)[target])`` in D, ``naive_unshifted_loss``
the first's (NaN once ``exp`` overflows). ``naive_prob`` is the
naive target probability in D (the smallest one without a target);
``min_prob`` the exact smallest probability, which may itself be 0 in
float64, so ``min_log_prob`` is given too. ``worst`` lists at most ``top``
slices, the furthest past D's threshold first (data problems: first found).

Examples
--------
>>> import numpy as np
>>> from stablesoftmax.lab.diagnose import diagnose
>>> x = np.array([[1.2, 4.7, 3.1, 0.5, 2.9], [10.0, 92.0, 30.0, -50.0, 40.0]], dtype=np.float32)
>>> report = diagnose(x, target=[2, 3], dtypes=("float32",))
>>> report.dtypes["float32"].underflow, report.dtypes["float32"].worst[0].naive_loss
(1, inf)
>>> report.dtypes["float32"].worst[0].stable_loss
142.0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from .. import (
    ArgumentError,
    AxisError,
    DtypeError,
    InputFileError,
    ShapeError,
    StableSoftmaxError,
    TargetError,
    cross_entropy,
    log_softmax,
    reference_path,
)
from . import _outdir, _plot, _readers

__all__ = [
    "diagnose",
    "Report",
    "DataReport",
    "DtypeReport",
    "SliceReport",
    "Verdict",
    "SCHEMA",
    "DTYPES",
    "add_parser",
    "run",
    "cliff",
    "draw_plot",
]

SCHEMA = "stablesoftmax.diagnose/1"
DTYPES = ("float16", "bfloat16", "float32", "float64")
PROBLEMS = ("nan", "posinf", "masked", "target_masked", "overflow", "underflow")
CHUNK_BYTES = 8 * 2**20  # logits read per window: small enough for a 256 MB budget with work copies
LARGE_INPUT = 64 * 2**20  # inputs at least this big show progress
PLOT_PASSING = 100_000  # --plot draws at most about this many slices that stay finite, evenly spaced
PLOT_FAILING = 100_000  # and marks at most this many failing ones: the first found
_PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}  # significand bits
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
IGNORE_INDEX = -100  # as cross_entropy's default: the padding label of most language-model batches
_NUMPY_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


@dataclass
class SliceReport:
    """One slice that fails (see the module docstring's schema for each field)."""

    index: tuple[int, ...]
    problems: list[str]
    max: float
    min: float | None
    spread: float | None
    argmin: int | None
    min_prob: float | None
    min_log_prob: float | None
    target: int | None = None
    target_logit: float | None = None
    stable_loss: float | None = None
    naive_loss: float | None = None
    naive_unshifted_loss: float | None = None
    naive_prob: float | None = None


@dataclass
class DtypeReport:
    """What the naive programs do in one dtype: thresholds, counts, worst slices."""

    dtype: str
    overflow_above: float
    underflow_below: float
    overflow: int = 0
    underflow: int = 0
    failing: int = 0
    worst: list[SliceReport] = field(default_factory=list)


@dataclass
class DataReport:
    """Problems of the data itself, the same in every dtype."""

    nan: int = 0
    posinf: int = 0
    masked: int = 0
    target_masked: int = 0
    ignored: int = 0  # slices whose target is the ignore index: counted, not a problem
    max_logit: float = -math.inf
    min_logit: float = math.inf
    max_spread: float = 0.0
    worst: list[SliceReport] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return self.nan + self.posinf + self.masked + self.target_masked


@dataclass
class Verdict:
    status: str
    message: str


@dataclass
class Report:
    """The result of :func:`diagnose`. ``str(report)`` is the human report."""

    source: dict[str, Any]
    data: DataReport
    dtypes: dict[str, DtypeReport]
    verdict: Verdict

    def failed(self, kind: str) -> bool:
        """Whether any dtype shows ``kind``: ``"overflow"``, ``"underflow"`` or ``"any"`` problem."""
        over = any(d.overflow for d in self.dtypes.values())
        under = any(d.underflow for d in self.dtypes.values())
        return {"overflow": over, "underflow": under, "any": over or under or self.data.problems > 0}[kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python containers; floats stay floats (``inf`` and NaN included)."""
        d = asdict(self)
        for part in [d["data"], *d["dtypes"].values()]:
            for s in part["worst"]:
                s["index"] = list(s["index"])
        return {"schema": SCHEMA, **d}

    def to_json(self, **kwargs: Any) -> str:
        """Strict JSON: ``inf``, ``-inf`` and NaN become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
        return json.dumps(_jsonable(self.to_dict()), allow_nan=False, **kwargs)

    def __str__(self) -> str:
        return format_report(self)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


# --------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------


def diagnose(
    logits: Any,
    /,
    *,
    target: Any = None,
    axis: int = -1,
    dtypes: Sequence[str] = DTYPES,
    top: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> Report:
    """Find the slices where naive softmax or cross-entropy gives ``inf`` or NaN.

    Parameters
    ----------
    logits : array_like
        Logits of shape ``[*batch, num_classes]`` (classes on ``axis``); NumPy,
        PyTorch or any array-API array, or a nested sequence.
    target : array_like of int, optional
        Class indices of shape ``batch`` (``logits``' shape without ``axis``).
        Without it, a slice underflows when any probability rounds to 0.
    axis : int, default -1
        The classes axis.
    dtypes : sequence of str, default all four
        Dtypes the naive programs are simulated in, from ``DTYPES``.
    top : int, default 10
        How many of the worst slices each part of the report lists.
    ignore_index : int, default -100
        A target equal to this marks a slice the loss leaves out, as in
        ``cross_entropy``: it is not range-checked, its target is not looked
        at (no underflow, no "target on -inf"), and it is counted in
        ``data.ignored``. Its logits are still checked for NaN, ``+inf``,
        full masking and overflow, which the naive code meets before any mask.

    Returns
    -------
    Report
        Per dtype: overflow and underflow counts and the worst slices, with
        the stable loss next to the naive one; data problems; a verdict.

    Notes
    -----
    See the module docstring for what "naive in dtype D" means and for the
    thresholds. For files use the ``stablesoftmax diagnose`` command, which
    reads ``.npy`` files in windows with bounded memory.
    """
    arr = _as_numpy(logits, "logits")
    if arr.dtype.kind in "iub":  # as the library computes on them: float64
        arr = arr.astype(np.float64)
    if arr.ndim == 0 or arr.size == 0:
        raise ShapeError(f"logits has shape {arr.shape}; expected at least one slice of at least one class.")
    return _scan(_readers.from_memory(arr, "logits"), target, axis, dtypes, top, "target", ignore_index)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array in its own dtype (torch bfloat16 through ml_dtypes); no copy when it is one."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            bits: np.ndarray = t.contiguous().view(torch.int16).numpy()  # Tensor.numpy gives an ndarray
            return bits.view(BFLOAT16)
        if t.is_complex() or (t.dtype.is_floating_point and t.element_size() == 1):
            raise DtypeError(f"{name} has dtype {t.dtype}; allowed: {_readers.EXPECTED_DTYPES}.")
        arr: np.ndarray = t.numpy()
        return arr
    if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
        try:
            x = np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # not on the host, or not DLPack-able: np.asarray below says what it can
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name} could not be read as an array ({exc}); give a rectangular numeric array.") from None
    ok = arr.dtype == BFLOAT16 or arr.dtype.kind in "iub" or (arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4, 8))
    if not ok:
        raise DtypeError(f"{name} has dtype {arr.dtype}; allowed: {_readers.EXPECTED_DTYPES}.")
    return arr


def _axis(axis: Any, ndim: int) -> int:
    """``axis`` as a non-negative int below ``ndim``."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise AxisError(f"axis={axis!r} is not an int; diagnose takes one classes axis, e.g. axis=-1.")
    if not -ndim <= axis < ndim:
        raise AxisError(f"axis={axis!r} is out of range for an array of {ndim} dimensions; allowed: [{-ndim}, {ndim}).")
    return int(axis) % ndim


def _scan(
    src: _readers.Array,
    target: Any,
    axis: int,
    dtypes: Sequence[str],
    top: int,
    target_name: str,
    ignore_index: int = IGNORE_INDEX,
    progress: Any = None,
    max_bytes: int | None = None,
    points: _Points | None = None,
) -> Report:
    names = _check_dtypes(dtypes)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ArgumentError(f"top={top!r} is not allowed; it must be an integer >= 0.")
    if (
        isinstance(ignore_index, bool)
        or not isinstance(ignore_index, (int, np.integer))
        or not (-(2**63) <= ignore_index < 2**63)
    ):
        raise ArgumentError(f"ignore_index={ignore_index!r} is not allowed; it must be an integer (int64), e.g. -100.")
    ax = _axis(axis, len(src.shape))
    batch, k = src.shape[:ax] + src.shape[ax + 1 :], src.shape[ax]
    tgt = None if target is None else _check_target(target, batch, k, ax, target_name, int(ignore_index))
    scan = _Scanner(names, k, top, int(ignore_index))
    if points is not None:
        points.start(names, math.prod(batch))
        scan.points = points
    for start, block in _blocks(src, ax, progress, max_bytes):
        _feed(scan, block, ax, src.stream_axis, start, tgt)
    source = {
        "name": src.name,
        "shape": list(src.shape),
        "dtype": _dtype_name(src.dtype),
        "axis": ax,
        "slices": math.prod(batch),
        "classes": k,
        "target": tgt is not None,
        "ignore_index": int(ignore_index) if tgt is not None else None,
    }
    return scan.report(source)


def _check_dtypes(dtypes: Sequence[str]) -> list[str]:
    names = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    bad = [d for d in names if d not in DTYPES]
    if bad or not names or len(set(names)) != len(names):
        raise ArgumentError(f"dtypes={tuple(names)!r} is not allowed; give distinct names from {', '.join(DTYPES)}.")
    return names


def _check_target(target: Any, batch: tuple[int, ...], k: int, axis: int, name: str, ignore: int) -> np.ndarray:
    """``target`` as an int64 array of shape ``batch`` with entries in ``[0, k)`` or equal to ``ignore``."""
    t = np.asarray(target.detach().cpu().numpy() if hasattr(target, "detach") else target)
    if t.dtype.kind not in "iu":
        raise TargetError(f"{name} has dtype {t.dtype}; class indices must be integers.")
    if t.shape != batch:
        raise ShapeError(f"{name} has shape {t.shape}; expected {batch}, the logits' shape without axis {axis}.")
    # NumPy compares a uint64 with a negative ignore index exactly: 2**64 - 100 is out of range, not -100
    bad = np.flatnonzero(((t < 0) | (t >= k)) & (t != ignore))
    if bad.size:
        where = np.unravel_index(int(bad[0]), batch) if batch else ()
        raise TargetError(
            f"{name} holds {int(t.flat[bad[0]])} at slice {tuple(int(i) for i in where)} "
            f"({bad.size} out of range); class indices must lie in [0, {k}) "
            f"or equal the ignore index {ignore}."
        )
    return t.astype(np.int64, copy=False)


def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == BFLOAT16 else str(dtype)


def _blocks(
    src: _readers.Array, axis: int, progress: Any, max_bytes: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Windows of the array along its stream axis; the whole array when that axis holds the classes.

    ``progress``, a tqdm bar or None, advances by the bytes of each window read.
    """
    n = src.shape[src.stream_axis]
    if len(src.shape) < 2 or src.stream_axis == axis:
        if src.streamed and max_bytes is not None and src.nbytes > max_bytes:
            order = "Fortran" if src.stream_axis else "C"
            raise InputFileError(
                f"LOGITS {src.name}: is a {order}-order file with the classes on axis {axis}, which is read "
                f"whole: {src.nbytes} bytes, over the limit of {max_bytes} bytes held in memory; expected at most "
                f"{max_bytes} bytes (raise it with --max-bytes {src.nbytes}, or save the array with the classes "
                "on the last axis, C order, to be read in windows)."
            )
        yield 0, src.whole()
        if progress is not None:
            progress.update(src.nbytes)
        return
    row_bytes = src.nbytes // n
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield start, src.read(start, stop)
        if progress is not None:
            progress.update((stop - start) * row_bytes)


def _feed(scan: _Scanner, block: np.ndarray, axis: int, stream_axis: int, start: int, tgt: np.ndarray | None) -> None:
    """Split a window into ``(n, K)`` slices and hand them to the scanner with their global indices."""
    batch, k = block.shape[:axis] + block.shape[axis + 1 :], block.shape[axis]
    x = np.moveaxis(np.asarray(block), axis, -1).reshape(-1, k)
    sb = stream_axis - (stream_axis > axis)  # the stream axis among the batch axes
    t = None
    if tgt is not None:
        t = tgt[(slice(None),) * sb + (slice(start, start + block.shape[stream_axis]),)] if tgt.ndim else tgt
        t = t.reshape(-1)

    def locate(i: int) -> tuple[int, ...]:
        coords = [int(c) for c in np.unravel_index(i, batch)] if batch else []
        if coords and stream_axis != axis:  # otherwise the window is the whole array
            coords[sb] += start
        return tuple(coords)

    scan.add(x, t, locate)


# --------------------------------------------------------------------------
# The naive programs, simulated in D
# --------------------------------------------------------------------------


def _work(d: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if d.itemsize == 2 else d


def _exp_shifted(v: np.ndarray, m: np.ndarray, d: np.dtype) -> np.ndarray:
    """``exp(v - m)`` in D, each operation rounded to D; ``v`` and ``m`` already in D."""
    w = _work(d)
    diff = (v.astype(w) - m.astype(w)).astype(d)
    e: np.ndarray = np.exp(diff.astype(w)).astype(d)
    return e


def _naive_probs(x: np.ndarray, d: np.dtype) -> np.ndarray:
    """The textbook max-shifted softmax of rows ``x`` (already in D), every step rounded to D."""
    w = _work(d)
    m = x.astype(w).max(axis=-1, keepdims=True).astype(d)
    e = _exp_shifted(x, m, d)
    s = e.astype(w).sum(axis=-1, keepdims=True).astype(d)
    p: np.ndarray = (e.astype(w) / s.astype(w)).astype(d)
    return p


def _naive_unshifted_probs(x: np.ndarray, d: np.dtype) -> np.ndarray:
    """The textbook softmax without the max shift, ``exp(x) / sum(exp(x))``, every step rounded to D."""
    w = _work(d)
    e = np.exp(x.astype(w)).astype(d)
    s = e.astype(w).sum(axis=-1, keepdims=True).astype(d)
    p: np.ndarray = (e.astype(w) / s.astype(w)).astype(d)
    return p


def _naive_loss(p: np.ndarray, d: np.dtype) -> float:
    """``-log(p)`` in D, as a float; ``+ 0.0`` turns the ``-0.0`` of ``-log(1)`` into 0."""
    return float(-np.log(p.astype(_work(d))).astype(d)) + 0.0


def _limits(name: str) -> tuple[float, float]:
    """``(log(finfo.max), log(smallest_subnormal / 2))`` of a dtype."""
    fi = _finfo(_NUMPY_DTYPES[name])
    return math.log(float(fi.max)), math.log(float(fi.smallest_subnormal)) - math.log(2.0)


def _finfo(d: np.dtype) -> np.finfo[np.floating[Any]]:
    """``ml_dtypes.finfo(d)``, which knows bfloat16 too: a subclass of ``numpy.finfo``, typed as one here
    because ml_dtypes leaves its constructor unannotated."""
    finfo: Callable[[np.dtype], np.finfo[np.floating[Any]]] = ml_dtypes.finfo
    return finfo(d)


# --------------------------------------------------------------------------
# The scanner: counts every slice, keeps details of the worst few
# --------------------------------------------------------------------------


# Where the scanner's i-th slice of a window sits in the logits: its index among the batch axes.
_Locate = Callable[[int], tuple[int, ...]]


class _Scanner:
    def __init__(self, dtypes: list[str], k: int, top: int, ignore: int = IGNORE_INDEX) -> None:
        self.k, self.top, self.ignore = k, top, ignore
        self.dtypes = {n: DtypeReport(n, *_limits(n)) for n in dtypes}
        self.data = DataReport()
        self.best: dict[str, list[tuple[float, tuple[int, ...], SliceReport]]] = {n: [] for n in dtypes}
        self.points: _Points | None = None  # every slice's max and spread, for --plot

    def add(self, x: np.ndarray, t: np.ndarray | None, locate: _Locate) -> None:
        if x.dtype == BFLOAT16:
            x = x.astype(np.float32)  # exact; NumPy reductions on bfloat16 are slow and warn on NaN
        elif x.dtype.kind in "iub":
            x = x.astype(np.float64)
        ignored = None if t is None else t == self.ignore
        if ignored is not None:
            self.data.ignored += int(ignored.sum())
        st = _row_stats(x, t, ignored)
        self._data(x, t, st, locate)
        flags = _window_flags(x, t, st, list(self.dtypes), self.k)
        if self.points is not None:
            self.points.add(st, flags)
        for name, f in flags.items():
            rep = self.dtypes[name]
            rep.overflow += int(f.over.sum())
            rep.underflow += int(f.under.sum())
            fail = f.over | f.under
            rep.failing += int(fail.sum())
            self._keep(name, x, t, np.flatnonzero(fail), _margin(st, f.over, f.under, rep), f.over, f.under, locate)

    def _data(self, x: np.ndarray, t: np.ndarray | None, st: _Stats, locate: _Locate) -> None:
        d = self.data
        flags = {"nan": st.nan, "posinf": st.posinf, "masked": st.masked, "target_masked": st.tmask}
        for key, f in flags.items():
            setattr(d, key, getattr(d, key) + int(f.sum()))
        fin = st.finite
        if fin.any():
            d.max_logit = max(d.max_logit, float(st.mx[fin].max()))
            d.min_logit = min(d.min_logit, float(st.fmin[fin].min()))
            d.max_spread = max(d.max_spread, float(st.spread[fin].max()))
        bad = st.nan | st.posinf | st.masked | st.tmask
        for i in np.flatnonzero(bad)[: self.top - len(d.worst)]:
            problems = [k for k, f in flags.items() if f[i]]
            d.worst.append(
                _details(x[i], None if t is None else int(t[i]), None, locate(int(i)), problems, self.ignore)
            )

    def _keep(
        self,
        name: str,
        x: np.ndarray,
        t: np.ndarray | None,
        idx: np.ndarray,
        margin: np.ndarray,
        over: np.ndarray,
        under: np.ndarray,
        locate: _Locate,
    ) -> None:
        """Details of the chunk's failing slices that enter the ``top`` worst, furthest past the cliff first."""
        if not idx.size or not self.top:
            return
        order = idx[np.argsort(-margin[idx], kind="stable")][: self.top]
        best = self.best[name]
        for i in order:
            key = float(margin[i])
            if len(best) == self.top and key <= best[-1][0]:
                break  # sorted: nothing later in this chunk gets in
            problems = [p for p, f in (("overflow", over), ("underflow", under)) if f[i]]
            s = _details(
                x[i], None if t is None else int(t[i]), _NUMPY_DTYPES[name], locate(int(i)), problems, self.ignore
            )
            best.append((key, s.index, s))
            best.sort(key=lambda b: (-b[0], b[1]))
            del best[self.top :]

    def report(self, source: dict[str, Any]) -> Report:
        for name, rep in self.dtypes.items():
            rep.worst = [b[2] for b in self.best[name]]
        if self.data.max_logit == -math.inf:  # no slice with a finite max: nothing to range over
            self.data.max_logit = self.data.min_logit = self.data.max_spread = math.nan
        return Report(source, self.data, self.dtypes, _verdict(self.data, self.dtypes))


class _Points:
    """Each slice's max and spread for ``--plot``, with the widest dtype it breaks in; bounded in memory.

    Every failing slice is kept, up to ``PLOT_FAILING``; of those that stay
    finite, every ``stride``-th, so that at most about ``PLOT_PASSING`` dots
    are drawn for a batch of any size. Slices with no finite max (NaN,
    ``+inf``, fully masked) have no place on the axes and are only counted.
    """

    def __init__(self) -> None:
        self.dtypes: list[str] = []
        self.stride, self.passed, self.failing, self.kept_failing, self.off_chart = 1, 0, 0, 0, 0
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def start(self, dtypes: list[str], slices: int) -> None:
        self.dtypes = sorted(dtypes, key=DTYPES.index)  # narrowest range first
        self.stride = max(1, -(-slices // PLOT_PASSING))

    def add(self, st: _Stats, flags: dict[str, _Flags]) -> None:
        n = st.mx.shape[0]
        widest = np.full(n, -1, dtype=np.int8)
        for i, name in enumerate(self.dtypes):  # a wider dtype that breaks overwrites a narrower one
            widest[flags[name].over | flags[name].under] = i
        fail = widest >= 0  # only slices with a finite max can overflow or underflow: all on the chart
        kept = fail & (np.cumsum(fail) <= PLOT_FAILING - self.kept_failing)
        passing = st.finite & ~fail
        dots = passing & ((self.passed + np.cumsum(passing) - 1) % self.stride == 0)  # every stride-th of them
        keep = kept | dots
        self.parts.append((st.mx[keep].astype(np.float64), st.spread[keep].astype(np.float64), widest[keep]))
        self.failing += int(fail.sum())
        self.kept_failing += int(kept.sum())
        self.off_chart += int((~st.finite).sum())
        self.passed += int(passing.sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Max, spread and widest failing dtype (-1: none) of the kept slices."""
        if not self.parts:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int8)
        mx, spread, widest = zip(*self.parts, strict=True)
        return np.concatenate(mx), np.concatenate(spread), np.concatenate(widest)


@dataclass
class _Stats:
    """Per-slice reductions of one window: everything the flags need."""

    mx: np.ndarray
    fmin: np.ndarray
    spread: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    masked: np.ndarray
    finite: np.ndarray
    tmask: np.ndarray
    v: np.ndarray  # the entry whose probability decides underflow: the target, or the smallest
    check: np.ndarray  # slices where underflow is defined


def _row_stats(x: np.ndarray, t: np.ndarray | None, ignored: np.ndarray | None = None) -> _Stats:
    """The reductions of every slice; slices whose target is ``ignored`` have no target to check."""
    mx, mn = x.max(axis=1), x.min(axis=1)  # NaN propagates through both: a NaN max marks a NaN slice
    nan = np.isnan(mx)
    finite = np.isfinite(mx)
    fmin = mn.copy()
    holes = finite & (mn == -np.inf)  # masked entries: leave them out of the min
    if holes.any():
        fmin[holes] = np.where(x[holes] == -np.inf, np.inf, x[holes]).min(axis=1)
    spread = np.full(mx.shape, np.nan)
    np.subtract(mx, fmin, out=spread, where=finite, dtype=np.float64)
    if t is None:
        tmask, v, check = np.zeros_like(finite), fmin, finite
    else:
        skip = np.zeros_like(finite) if ignored is None else ignored
        v = x[np.arange(x.shape[0]), np.where(skip, 0, t)]  # any index for an ignored slice: never checked
        tmask = finite & (v == -np.inf) & ~skip
        check = finite & ~tmask & ~skip
    return _Stats(mx, fmin, spread, nan, mx == np.inf, mx == -np.inf, finite, tmask, v, check)


@dataclass
class _Flags:
    """One dtype's flags for one window; ``e`` is the naive ``exp(v - max)`` in D, ``unsure`` the
    slices whose underflow the first stage could not settle."""

    over: np.ndarray
    under: np.ndarray
    e: np.ndarray
    unsure: np.ndarray


def _window_flags(x: np.ndarray, t: np.ndarray | None, st: _Stats, names: list[str], k: int) -> dict[str, _Flags]:
    """Overflow and underflow of every slice of a window, per dtype, exactly as the naive code gives them.

    Three stages, each only on the slices the previous one left unsure: the
    max and the target (or smallest) entry alone; then a float32 reference
    sum with an error bound; then the whole naive program in D.
    """
    flags = {n: _first_stage(st, _NUMPY_DTYPES[n], k) for n in names}
    need = np.zeros(x.shape[0], dtype=bool)
    for f in flags.values():
        need |= f.unsure
    s_ref = _reference_sums(x, st.mx, need) if need.any() else np.zeros(x.shape[0])
    size = np.maximum(np.abs(st.mx.astype(np.float64)), np.abs(st.fmin.astype(np.float64)))
    for name, f in flags.items():
        d = _NUMPY_DTYPES[name]
        rest = _second_stage(f, s_ref, size, d, k) if f.unsure.any() else np.empty(0, dtype=np.intp)
        if rest.size:
            f.under[rest] = _underflows(x[rest], None if t is None else t[rest], d)
    return flags


def _first_stage(st: _Stats, d: np.dtype, k: int) -> _Flags:
    """Overflow, and underflow where ``exp(v - max)`` alone settles it: the sum lies in ``[1, K]``."""
    w = _work(d)
    # A simulation whose job is to produce inf, 0 and NaN exactly as the naive code does:
    # its overflow, underflow and invalid operations are the result, not a bug.
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        m = st.mx.astype(d)
        over = st.finite & np.isinf(np.exp(m.astype(w)).astype(d))
        ok = st.check & np.isfinite(m)
        e = _exp_shifted(st.v.astype(d), m, d)
        # a probability that stays > 0 when divided by (just over) K stays > 0 for every sum
        bound = np.asarray(np.nextafter(w.type(k * (1 + 2.0**-10)), np.inf, dtype=w)).astype(d)
        low = (e.astype(w) / bound.astype(w)).astype(d)
        under = ok & (e == 0)  # NumPy warns comparing a 16-bit NaN; those slices are not `ok`
        unsure = ok & (e > 0) & (low == 0)
    return _Flags(over, under, e.astype(np.float64), unsure)


def _second_stage(f: _Flags, s_ref: np.ndarray, size: np.ndarray, d: np.dtype, k: int) -> np.ndarray:
    """Settle unsure slices from a float32 reference sum and a bound on how far the naive D sum is from it.

    Each naive term ``round_D(exp(round_D(x_D - m_D)))`` is within a factor
    ``exp(4.02 u_D A + 2 u_D + 2 u_w)`` of ``exp(x - m)`` (``A`` bounds ``|x|``,
    ``u`` is a unit roundoff), plus half a subnormal; both sums add at most
    ``(log2 K + 8) u`` of relative error (pairwise summation). Returns the
    slices still unsure, which are simulated in full; settles the others in ``f.under``.
    """
    idx = np.flatnonzero(f.unsure)
    ud, u32 = 2.0 ** -_PRECISION[_dtype_name(d)], 2.0**-24
    fi = _finfo(d)
    tiny, big = float(fi.smallest_subnormal), float(fi.max)
    log_r = 4.1 * (ud + u32) * size[idx] + 4 * ud + 2 * (math.log2(k) + 16) * u32
    trust = log_r < 30.0  # past this the bound says nothing (and exp would overflow): simulate those slices
    log_r = np.minimum(log_r, 30.0)
    slack = k * (tiny + 1.5e-45)  # every term may round to or from a subnormal, in D or in float32
    s = s_ref[idx]
    s_lo = np.maximum(s * np.exp(-log_r) - slack, 1.0)  # the max term is exactly 1
    s_hi = s * np.exp(log_r) + slack
    half = tiny / 2  # exp or a quotient at most this rounds to 0 (ties to even)
    e = f.e[idx]
    zero = trust & (e / s_lo < half * (1 - 1e-6))
    safe = trust & (e / s_hi > half * (1 + 1e-6)) & (s_hi < big * (1 - 2.0**-8))  # the sum must not overflow D
    f.under[idx[zero]] = True
    return idx[~zero & ~safe]


def _reference_sums(x: np.ndarray, mx: np.ndarray, need: np.ndarray) -> np.ndarray:
    """``sum(exp(x - max))`` in float32 for the rows in ``need``, in pieces through one reused buffer."""
    out = np.zeros(x.shape[0])
    step = max(1, CHUNK_BYTES // (4 * x.shape[1]))
    buf = np.empty(min(step, x.shape[0]) * x.shape[1], dtype=np.float32)  # reused: fresh pages cost a fault each
    for a in range(0, x.shape[0], step):
        rows = np.flatnonzero(need[a : a + step])
        if not rows.size:
            continue
        whole = 2 * rows.size > min(step, x.shape[0] - a)  # most rows: a view beats a gathered copy
        xb, m = (x[a : a + step], mx[a : a + step]) if whole else (x[a + rows], mx[a + rows])
        diff = buf[: xb.size].reshape(xb.shape)
        if x.dtype.itemsize == 8:  # the difference in float64, so a huge max cannot overflow float32
            diff[...] = xb - m[:, None]
        else:
            np.subtract(xb, m[:, None].astype(np.float32), out=diff, dtype=np.float32)
        with np.errstate(under="ignore"):  # terms below float32's subnormals: in the error bound's slack
            sums = np.exp(diff, out=diff).sum(axis=1)
        out[a + rows] = sums[rows] if whole else sums
    return out


def _margin(st: _Stats, over: np.ndarray, under: np.ndarray, rep: DtypeReport) -> np.ndarray:
    """How far past D's cliff each failing slice is, in nats: the worst slices come first."""
    margin = np.full(over.shape, -np.inf)
    margin[over] = st.mx[over].astype(np.float64) - rep.overflow_above
    gap = st.mx[under].astype(np.float64) - st.v[under]
    margin[under] = np.maximum(margin[under], gap + rep.underflow_below)
    return margin


def _underflows(x: np.ndarray, t: np.ndarray | None, d: np.dtype) -> np.ndarray:
    """Whether the full naive softmax in D gives the target (or any unmasked entry) probability 0."""
    out = np.zeros(x.shape[0], dtype=bool)
    step = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    # the naive program, simulated: its inf, 0 and NaN are the result
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for a in range(0, x.shape[0], step):
            xb = x[a : a + step]
            p = _naive_probs(xb.astype(d), d)
            if t is None:
                out[a : a + step] = ((p == 0) & (xb != -np.inf)).any(axis=1)
            else:
                out[a : a + step] = p[np.arange(xb.shape[0]), t[a : a + step]] == 0
    return out


def _details(
    row: np.ndarray,
    t: int | None,
    d: np.dtype | None,
    index: tuple[int, ...],
    problems: list[str],
    ignore: int = IGNORE_INDEX,
) -> SliceReport:
    """The per-slice numbers: stable (float64, the library) and, for a dtype, naive.

    An ignored slice (``t == ignore``) shows its target and no loss: the loss leaves it out.
    """
    x = row.astype(np.float64)
    keep = np.flatnonzero(x != -np.inf)
    s = SliceReport(index, problems, float(x.max()), None, None, None, None, None)
    if keep.size:
        j = int(keep[np.argmin(x[keep])])
        s.min, s.argmin = float(x[j]), j
        s.spread = s.max - s.min
        with reference_path():  # a few slices: no kernels to compile, and the same bytes with or without numba
            s.min_log_prob = float(np.asarray(log_softmax(x))[keep].min())  # 1-d x: an array already
        s.min_prob = math.exp(s.min_log_prob) if not math.isnan(s.min_log_prob) else math.nan
    if t is not None and t == ignore:
        s.target = t
        return s
    if t is not None:
        s.target, s.target_logit = t, float(x[t])
        s.stable_loss = _stable_loss(x, t)
    if d is not None:
        # the naive program, simulated: its inf, 0 and NaN are the result
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            p = _naive_probs(row.astype(d)[None], d)[0]
            if t is not None:
                s.naive_prob = float(p[t])
                s.naive_loss = _naive_loss(p[t], d)
                s.naive_unshifted_loss = _naive_loss(_naive_unshifted_probs(row.astype(d), d)[t], d)
            elif keep.size:
                s.naive_prob = float(p[keep].min())
    return s


def _stable_loss(x: np.ndarray, t: int) -> float:
    """The library's cross-entropy of one float64 slice (0 for a fully masked one, by its contract)."""
    with reference_path():
        return float(cross_entropy(x, np.array(t), reduction="none"))


# --------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------


def _verdict(data: DataReport, dtypes: dict[str, DtypeReport]) -> Verdict:
    """One line: what was found, then what to do about it."""
    found = [
        f"{getattr(data, key)} slice(s) {words}"
        for key, words in (
            ("nan", "hold NaN"),
            ("posinf", "hold +inf"),
            ("masked", "are fully masked (all -inf)"),
            ("target_masked", "have their target on a -inf logit"),
        )
        if getattr(data, key)
    ]
    for rep in dtypes.values():
        parts = [f"{n} {kind}" for n, kind in ((rep.overflow, "overflow"), (rep.underflow, "underflow")) if n]
        if parts:
            found.append(f"{rep.dtype}: {', '.join(parts)}")
    if not found:
        return Verdict(
            "clean",
            f"clean: naive softmax and cross-entropy stay finite in {', '.join(dtypes)}; "
            "no NaN, inf or fully masked slices.",
        )
    return Verdict("fail", f"FAIL: {'; '.join(found)}. Fix: {'; '.join(_advice(data, dtypes))}.")


def _advice(data: DataReport, dtypes: dict[str, DtypeReport]) -> list[str]:
    advice = []
    if data.nan or data.posinf:
        advice.append("find where NaN/inf enters upstream: the logits are already broken")
    if data.masked or data.target_masked:
        advice.append("check the mask and the labels")
    if any(r.underflow for r in dtypes.values()):
        advice.append("use log_softmax / cross_entropy, never log(softmax)")
    if any(r.overflow for r in dtypes.values()):
        advice.append("subtract the max before exp (stablesoftmax.softmax / logsumexp)")
    narrow_fail = any(r.failing for r in dtypes.values() if r.dtype in ("float16", "bfloat16"))
    if narrow_fail and "float32" in dtypes and not dtypes["float32"].failing:
        advice.append("compute in float32")
    cliff = -_limits("float32")[1]  # a spread float32's softmax cannot hold is no sane model's output
    if data.max_spread > cliff:
        advice.append(
            f"logits spread reaches {data.max_spread:.4g}, beyond the {cliff:.2f} float32 softmax "
            "can represent; check the initialisation or learning rate"
        )
    return advice


# --------------------------------------------------------------------------
# The human report
# --------------------------------------------------------------------------


def _num(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def format_report(r: Report) -> str:
    """The human report: source, data problems, counts per dtype, worst slices, verdict."""
    src, d = r.source, r.data
    shape = "(" + ", ".join(map(str, src["shape"])) + ("," if len(src["shape"]) == 1 else "") + ")"
    lines = [
        f"logits   {src['name']}: {src['dtype']}, shape {shape}, classes on axis {src['axis']}",
        f"         {src['slices']} slice(s) of {src['classes']} class(es); target: "
        + (f"yes, {d.ignored} slice(s) ignored (target {src['ignore_index']})" if src["target"] else "none"),
        f"range    max logit {_num(d.max_logit)}, min {_num(d.min_logit)}, "
        f"largest spread (max - min) {_num(d.max_spread)}",
        f"data     NaN: {d.nan}, +inf: {d.posinf}, fully masked: {d.masked}, target on -inf: {d.target_masked}",
    ]
    if d.worst:
        lines += ["", "data problems (every dtype):", *_table(d.worst, src["target"], naive=False)]
    lines += ["", f"naive softmax   {'overflow':>9} {'underflow':>9}   exp overflows above  exp rounds to 0 below"]
    for rep in r.dtypes.values():
        lines.append(
            f"  {rep.dtype:<13} {rep.overflow:>9} {rep.underflow:>9}   {rep.overflow_above:>19.2f}"
            f"  {rep.underflow_below:>21.2f}"
        )
    for rep in r.dtypes.values():
        if rep.worst:
            lines += [
                "",
                f"worst slices in {rep.dtype} ({len(rep.worst)} of {rep.failing} failing):",
                *_table(rep.worst, src["target"], naive=True),
            ]
    lines += ["", f"verdict  {r.verdict.message}"]
    return "\n".join(lines) + "\n"


def _table(slices: list[SliceReport], has_target: bool, naive: bool) -> list[str]:
    cols = ["slice", "problems", "max", "min", "spread", "argmin", "min prob"]
    if has_target:
        cols += ["target", "stable loss"] + (["naive loss", "no-shift loss"] if naive else [])
    else:
        cols += ["naive min p"] if naive else []
    rows = []
    for s in slices:
        row = [
            str(list(s.index)),
            ",".join(s.problems),
            _num(s.max),
            _num(s.min),
            _num(s.spread),
            _num(s.argmin, "d"),
            _num(s.min_prob, ".3g"),
        ]
        if has_target:
            row += [str(s.target), _num(s.stable_loss)]
            row += [_num(s.naive_loss), _num(s.naive_unshifted_loss)] if naive else []
        elif naive:
            row += [_num(s.naive_prob, ".3g")]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cols).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


EPILOG = """\
examples:
  stablesoftmax diagnose logits.npy --target labels.npy
  stablesoftmax diagnose batch.npz --key logits --target-key labels --dtype float16,float32
  stablesoftmax diagnose logits.safetensors --json --fail-on underflow
  stablesoftmax diagnose batch.pt --max-bytes 2G     # a .pt larger than the default limit
  stablesoftmax diagnose logits.npy --plot cliffs.png  # each slice's spread against each dtype's cliffs

reads .npy (streamed in windows, any size), .npz, .safetensors, .pt/.pth (torch),
.csv/.tsv and .json. Only regular files are read (no FIFO, device or directory).
limits: data read whole (.npz member, .pt, .npy with the classes on its outer
axis) at most --max-bytes (default 128M); .csv/.tsv/.json and the .safetensors
header at most --max-text-bytes (default 4M).

exit codes: 0 the report was written, whatever its verdict (diagnose reports,
it does not gate: a FAIL in float16 is news, not an error, for a float32 run);
1 --fail-on found what it names (the CI gate); 2 bad input or a refused file.
With --json, errors are one JSON object on one line of stderr.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``diagnose`` subcommand to the ``stablesoftmax`` command."""
    p = subparsers.add_parser(
        "diagnose",
        help="find the logits slices that make a naive loss inf or NaN",
        description="Find the slices of a logits file where naive softmax overflows, where -log(softmax)\n"
        "underflows to inf, and where the data is already NaN, inf or fully masked.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logits", metavar="LOGITS", help="logits file (" + ", ".join(_readers.EXTENSIONS) + ")")
    p.add_argument(
        "--key",
        help="the logits array inside a .npz, .safetensors, .pt or .json (default: the only "
        "array, or the one named 'logits')",
    )
    p.add_argument("--target", metavar="FILE", help="file of integer class indices, shape = logits without --axis")
    p.add_argument("--target-key", metavar="NAME", help="class indices stored in LOGITS (or in --target) under NAME")
    p.add_argument(
        "--ignore-index",
        type=int,
        default=IGNORE_INDEX,
        metavar="N",
        help=f"a target equal to N is padding: left out of the target checks and counted "
        f"(default {IGNORE_INDEX}, as cross_entropy)",
    )
    p.add_argument("--axis", type=int, default=-1, help="the classes axis (default -1)")
    p.add_argument(
        "--dtype",
        metavar="D[,D...]",
        help=f"dtypes to simulate the naive code in (default: {','.join(DTYPES)}); given twice, the last wins",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema stablesoftmax.diagnose/1)")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw each slice's spread against every dtype's cliffs, failing slices marked (needs matplotlib)",
    )
    p.add_argument("--top", type=int, default=5, metavar="N", help="list the N worst slices per dtype (default 5)")
    p.add_argument(
        "--fail-on",
        choices=("overflow", "underflow", "any"),
        help="exit 1 when this is found (default: exit 0 whenever the report is written)",
    )
    p.add_argument(
        "--max-bytes",
        default=None,
        metavar="SIZE",
        help=f"most bytes of data read whole into memory (default {_size_text(_readers.MAX_BYTES)}); "
        "a number of bytes, or with K, M, G",
    )
    p.add_argument(
        "--max-text-bytes",
        default=None,
        metavar="SIZE",
        help=f"largest .csv/.tsv/.json file, and .safetensors header (default {_size_text(_readers.MAX_TEXT_BYTES)})",
    )
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``stablesoftmax diagnose``; returns the exit code."""
    dtypes = [d.strip() for d in (args.dtype or ",".join(DTYPES)).split(",") if d.strip()]
    plot = _plot_path(args.plot) if args.plot is not None else None  # checked before any data is read
    points = _Points() if plot is not None else None
    limits = _readers.Limits(
        max_bytes=_size(args.max_bytes, "--max-bytes", _readers.MAX_BYTES),
        max_text_bytes=_size(args.max_text_bytes, "--max-text-bytes", _readers.MAX_TEXT_BYTES),
    )
    src = _readers.open_array(args.logits, args.key, role="logits", what="LOGITS", limits=limits)
    target, tname = _read_target(args, src, limits)
    with _progress_bar(os.path.basename(args.logits), src.nbytes) as bar:
        report = _scan(
            src, target, args.axis, dtypes, args.top, tname, args.ignore_index, bar, limits.max_bytes, points
        )
    if plot is not None and points is not None:
        draw_plot(points, report, plot)
    if args.json:
        sys.stdout.write(report.to_json(indent=2) + "\n")
    else:
        sys.stdout.write(str(report))
        if report.verdict.status == "fail" and not args.fail_on:
            sys.stdout.write(
                "exit     0: diagnose reports, it does not gate; "
                "--fail-on overflow|underflow|any exits 1 on what it names\n"
            )
    return 1 if args.fail_on and report.failed(args.fail_on) else 0


def _plot_path(text: str) -> Path:
    """``--plot``'s file, refused before the scan: not .png, in no directory, or without matplotlib."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise ArgumentError(f"--plot {text!r} is not allowed; give a file name ending in .png, e.g. --plot batch.png")
    if not path.parent.is_dir():
        raise ArgumentError(
            f"--plot {text!r}: the directory {str(path.parent)!r} does not exist; "
            "expected a .png path in an existing directory"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise StableSoftmaxError(
            "--plot draws with matplotlib, which is not installed; install it with: pip install 'stablesoftmax[lab]'"
        ) from None
    return path


def cliff(dtype: str) -> _plot.Cliff:
    """Where the naive programs break in ``dtype``, from its ``finfo`` (the report's thresholds, and tiny's)."""
    overflow, underflow = _limits(dtype)
    return _plot.Cliff(dtype, overflow, -underflow, -math.log(float(_finfo(_NUMPY_DTYPES[dtype]).tiny)))


def draw_plot(points: _Points, report: Report, path: Path) -> _plot.SpreadChart:
    """Write the ``--plot`` picture to ``path``; returns what it drew."""
    mx, spread, widest = points.arrays()
    chart = _plot.spread_chart(mx, spread, widest, [cliff(d) for d in points.dtypes], _plot_title(points, report))
    _outdir.write(path, chart.png, flag="--plot")
    return chart


def _plot_title(points: _Points, report: Report) -> str:
    src = report.source
    broken = [d for d in points.dtypes if report.dtypes[d].failing]
    lines = [
        f"{src['name']}: {src['slices']} slice(s) of {src['classes']} class(es); "
        + (f"{points.failing} break in {', '.join(broken)}" if broken else f"none breaks in {', '.join(points.dtypes)}")
    ]
    notes = []
    if points.kept_failing < points.failing:
        notes.append(f"the first {points.kept_failing} failing slices are marked")
    if points.stride > 1:
        notes.append(f"grey: one in {points.stride} of the {points.passed} slices that stay finite")
    if points.off_chart:
        notes.append(f"{points.off_chart} slice(s) with NaN, +inf or no finite logit are not drawn")
    if src["target"]:
        notes.append("with targets, a slice breaks when its target's logit, not its min, is that far below its max")
    return "\n".join(lines + ["; ".join(notes)] if notes else lines)


def _progress_bar(name: str, nbytes: int, stream: Any = None) -> Any:
    """A tqdm bar over the bytes to scan, on ``stream`` (stderr) when it is a terminal.

    Off the terminal (a log, a pipe, a CI job) it stays silent: ``disable=None``
    is tqdm's "no bar unless a TTY". A small input finishes before a bar would
    tell anything, so it gets none either. The bar is cleared when done, so the
    report stands alone.
    """
    return tqdm(
        total=nbytes,
        desc=f"diagnose {name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=stream or sys.stderr,
        leave=False,
        disable=None if nbytes >= LARGE_INPUT else True,
    )


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _size(text: str | None, flag: str, default: int) -> int:
    """A byte count from the command line: digits, optionally followed by K, M, G or T (powers of 1024)."""
    if text is None:
        return default
    found = re.fullmatch(r"\s*(\d{1,19})\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    value = int(found.group(1)) * _UNITS[found.group(2).upper()] if found else 0
    if value < 1:
        raise ArgumentError(f"{flag} {text!r} is not allowed; give a positive number of bytes, e.g. 500M or 2G.")
    return value


def _size_text(n: int) -> str:
    unit = next(u for u in ("T", "G", "M", "K", "") if n % _UNITS[u] == 0)
    return f"{n // _UNITS[unit]}{unit}"


def _read_target(
    args: argparse.Namespace, src: _readers.Array, limits: _readers.Limits
) -> tuple[np.ndarray | None, str]:
    if args.target is None and args.target_key is None:
        return None, "target"
    path, what = (args.target, "--target") if args.target else (args.logits, "LOGITS")
    arr = _readers.open_array(path, args.target_key, role="target", what=what, limits=limits)
    name = f"{what} {path}" + (f"[{args.target_key!r}]" if args.target_key else "")
    ndim = len(src.shape)
    axis = _axis(args.axis, ndim)
    slices = math.prod(src.shape) // src.shape[axis]
    if math.prod(arr.shape) != slices:  # checked before reading, so a wrong file is never read whole
        raise ShapeError(
            f"{name} has shape {arr.shape} ({math.prod(arr.shape)} entries); expected one class index "
            f"per slice of the logits of shape {src.shape} along axis {args.axis}."
        )
    if arr.streamed and arr.nbytes > limits.max_bytes:  # class indices are read whole
        raise InputFileError(
            f"{name}: holds {arr.nbytes} bytes of class indices, read whole, over the limit of "
            f"{limits.max_bytes} bytes; expected at most that "
            f"(raise it with --max-bytes {arr.nbytes})."
        )
    t = np.asarray(arr.whole())
    if t.ndim == 2 and 1 in t.shape and ndim == 2:
        t = t.reshape(-1)  # a column or a row of a text table
    return t, name
