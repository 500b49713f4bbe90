"""What ``stablesoftmax battery`` computes, and the schema of ``results.json``.

``results.json`` is strict JSON (no bare NaN/Infinity). A number field holds
either a JSON number or one of the strings ``"nan"``, ``"inf"``, ``"-inf"``;
``null`` means "not computed" and always comes with a reason. Inputs are cast
to the run's dtype first; every value is reported as the exact float64 value of
what the function returned in that dtype. Schema ``stablesoftmax.battery/1``:

``schema, dtype, seed, ce_target``
    Version tag, the ``--dtype`` name, the ``--seed``, and ``y`` (1, lab 01).
``sum_rule``
    How ``sum`` and the stop-condition bound are defined (text).
``softmax`` : list, one entry per lab 01 case, in the lab's order
    ``name, label, n, input`` (``input`` is null when n > 16), and
    ``naive``/``stable``: ``has_nan, has_inf, sum, max, output`` (output null
    when n > 16) and ``warnings`` (RuntimeWarnings the call raised, recorded,
    in order, deduplicated). ``rel_diff`` (per element, null where naive is not
    finite; null when n > 16), ``max_rel_diff``, ``rel_diff_compared`` (how many
    elements were finite in naive). ``sum_error_eps``: ``|sum - 1| / eps``;
    ``sum_bound_eps``: n. ``logsumexp`` and ``cross_entropy`` (target ``y``):
    ``naive, stable, naive_warnings, stable_warnings``; cross-entropy has
    ``defined`` and a ``note`` when ``y`` is out of range.
``nan_by_dtype`` : {dtype: {naive_nan: [case], stable_nan: [case]}}
    The same eight cases at every supported dtype, NaN flags only.
``lab02`` : list, one entry per lab 02 task 1 input
    ``input`` and, for ``logsumexp``, ``log_softmax``, ``cross_entropy``:
    ``naive, stable, naive_warnings, stable_warnings``.
``fp32_break``
    Always float32 (the seed's phenomenon). ``rows``: ``name, logits, target,
    unfused_ce`` (``-log(softmax(x)[t])`` with the stable softmax: the seed's
    break), ``naive_ce``, ``stable_ce``, ``target_probability``,
    ``smallest_probability``, ``argmin_logit``, ``fails``, ``seed_expected``
    (the two values the seed says its code prints).
    ``smallest_probability_per_batch``, ``failing_rows``, ``warnings``,
    ``scipy_ce`` (``-scipy.special.log_softmax`` at the target, or null).
``scipy_parity``
    ``available`` (and ``reason`` when not). Always float64 (lab 01 block F).
    ``softmax_tol`` (absolute), ``logsumexp_tol`` (relative), ``rows``:
    ``input, softmax_max_abs_diff, logsumexp_rel_diff,
    log_softmax_max_rel_diff, cross_entropy_rel_diff, passed``; ``passed``.
``stop_conditions``
    Over every case in this file, the eight lab 01 inputs and the four lab 02
    inputs: ``naive_nan`` (cases, required ">= 2", met; ``softmax_cases`` are
    the lab 01 ones), ``stable_nan`` (cases, required "none", met),
    ``stable_sums`` (worst_case, worst_error_eps, met).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from .. import cross_entropy, log_softmax, logsumexp, naive, softmax
from .._reductions import reference_path
from ._cases import BREAK_DTYPE, BREAK_ROWS, CE_TARGET, DTYPES, LAB02_INPUTS, SOFTMAX_CASES, BreakRow, Case

__all__ = ["SCHEMA", "SUM_RULE", "SoftmaxPair", "run_battery", "softmax_pair", "num", "eps"]

SCHEMA = "stablesoftmax.battery/1"
SHOWN = 16  # rows up to this width keep their inputs and outputs in results.json
SOFTMAX_TOL = 1e-15  # lab 01 block F, absolute, on probabilities
LSE_TOL = 1e-12  # lab 02 acceptance, relative
SUM_RULE = (
    "sum is the exact sum of the returned probabilities (math.fsum of their float64 values); "
    "a stable row passes when |sum - 1| <= n * eps(dtype): each of the n probabilities is at most "
    "1, so each is within one ulp of 1 (eps) of its exact value once rounded to the dtype. The bound "
    "is generous (it grows with n, while a correctly rounded softmax stays near eps/2 whatever n is), "
    "so the observed error is reported in eps as well."
)


def run_battery(dtype: np.dtype, seed: int) -> dict[str, Any]:
    """Every block of the battery at ``dtype``; the whole ``results.json`` as a dict.

    It runs the library's reference (pure-NumPy) path, so that results.json is
    the same bytes whether or not the compiled extra is installed.
    """
    with reference_path():
        return _run_battery(dtype, seed)


def _run_battery(dtype: np.dtype, seed: int) -> dict[str, Any]:
    cases = [_softmax_case(c, dtype) for c in SOFTMAX_CASES]
    lab02 = [_lab02_row(z, dtype) for z in LAB02_INPUTS]
    return {
        "schema": SCHEMA,
        "dtype": dtype.name,
        "seed": seed,
        "ce_target": CE_TARGET,
        "sum_rule": SUM_RULE,
        "softmax": cases,
        "nan_by_dtype": {name: _nan_flags(dt) for name, dt in DTYPES.items()},
        "lab02": lab02,
        "fp32_break": _fp32_break(),
        "scipy_parity": _scipy_parity(seed),
        "stop_conditions": _stop_conditions(cases, lab02),
    }


# --------------------------------------------------------------------------
# Numbers and warnings
# --------------------------------------------------------------------------


def num(v: Any) -> float | str:
    """A float for JSON: finite as it is, otherwise "nan", "inf" or "-inf"."""
    f = float(v)
    if math.isnan(f):
        return "nan"
    return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")


def _nums(a: Any) -> list[float | str]:
    return [num(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def eps(dtype: np.dtype) -> float:
    """Machine epsilon of ``dtype`` (bfloat16 included)."""
    return float(ml_dtypes.finfo(dtype).eps)


# NumPy's error state for each side. The naive formulas also warn on underflow
# (NumPy's default ignores it), since underflow is half of what the labs break.
# The stable functions run under NumPy's defaults: a result rounding to a
# subnormal or to 0 there is correct rounding, not a failure.
NAIVE_ERRSTATE = {"all": "warn"}
STABLE_ERRSTATE = {"over": "warn", "divide": "warn", "invalid": "warn", "under": "ignore"}


def _captured(fn: Callable[..., Any], *args: Any, errstate: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """``fn(*args)`` with NumPy's floating-point warnings recorded, never hidden.

    The labs ask for the naive RuntimeWarnings to be reported (lab 02:
    "Don't suppress the warning; it's diagnostic"), so each is caught here and
    returned as text, in order and without repeats.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(**(errstate or NAIVE_ERRSTATE)):
            out = fn(*args)
    return out, list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))


def _cast(values: Any, dtype: np.dtype) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(dtype)


def _stable_ce(x: np.ndarray, target: Any) -> Any:
    """The library's fused cross-entropy per row: ``logsumexp(x) - x[target]``."""
    return cross_entropy(x, np.asarray(target), reduction="none")


# --------------------------------------------------------------------------
# Lab 01: the eight softmax cases
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftmaxPair:
    """One case run through both softmaxes: the cast input, outputs and warnings."""

    x: np.ndarray
    naive: np.ndarray
    naive_warnings: list[str]
    stable: np.ndarray
    stable_warnings: list[str]


def softmax_pair(case: Case, dtype: np.dtype) -> SoftmaxPair:
    """Naive and stable softmax of ``case`` cast to ``dtype`` (the plot reads this too)."""
    x = _cast(case.logits, dtype)
    naive_p, naive_w = _captured(naive.softmax, x)
    stable_p, stable_w = _captured(softmax, x, errstate=STABLE_ERRSTATE)
    return SoftmaxPair(x, np.asarray(naive_p), naive_w, np.asarray(stable_p), stable_w)


def _softmax_case(case: Case, dtype: np.dtype) -> dict[str, Any]:
    run = softmax_pair(case, dtype)
    x, naive_p, naive_w, stable_p, stable_w = run.x, run.naive, run.naive_warnings, run.stable, run.stable_warnings
    n = x.size
    stable = _summary(stable_p, stable_w, n)
    rel = _rel_diff(naive_p, stable_p)
    finite_rel = [r for r in rel if r is not None]
    return {
        "name": case.name,
        "label": case.label,
        "n": n,
        "input": _nums(x) if n <= SHOWN else None,
        "naive": _summary(naive_p, naive_w, n),
        "stable": stable,
        "rel_diff": rel if n <= SHOWN else None,
        "max_rel_diff": num(max(map(float, finite_rel), default=math.nan)),
        "rel_diff_compared": len(finite_rel),
        "sum_error_eps": num(abs(float(stable["sum"]) - 1.0) / eps(dtype)),
        "sum_bound_eps": n,
        "logsumexp": _pair(naive.logsumexp, logsumexp, x),
        "cross_entropy": _case_ce(x),
    }


def _summary(p: Any, warns: list[str], n: int) -> dict[str, Any]:
    a = np.asarray(p, dtype=np.float64)
    total = math.fsum(a) if np.isfinite(a).all() else float(np.sum(a))
    return {
        "has_nan": bool(np.isnan(a).any()),
        "has_inf": bool(np.isinf(a).any()),
        "sum": num(total),
        "max": num(np.max(a)),
        "output": _nums(a) if n <= SHOWN else None,
        "warnings": warns,
    }


def _rel_diff(naive_p: Any, stable_p: Any) -> list[float | str | None]:
    """``|naive - stable| / |stable|`` where naive is finite (0 where both are 0), else None."""
    out: list[float | str | None] = []
    for a, b in zip(np.asarray(naive_p, np.float64), np.asarray(stable_p, np.float64)):
        if not math.isfinite(a):
            out.append(None)
        elif b == 0:
            out.append(0.0 if a == 0 else "inf")
        else:
            out.append(num(abs(a - b) / abs(b)))
    return out


def _pair(naive_fn: Callable[..., Any], stable_fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Naive and stable results of one function on the same arguments, warnings kept."""
    n_out, n_w = _captured(naive_fn, *args)
    s_out, s_w = _captured(stable_fn, *args, errstate=STABLE_ERRSTATE)
    n_out, s_out = np.asarray(n_out), np.asarray(s_out)
    return {
        "naive": num(n_out) if n_out.ndim == 0 else _nums(n_out),
        "stable": num(s_out) if s_out.ndim == 0 else _nums(s_out),
        "naive_warnings": n_w,
        "stable_warnings": s_w,
    }


def _case_ce(x: np.ndarray) -> dict[str, Any]:
    if x.size <= CE_TARGET:
        note = f"y = {CE_TARGET} is out of range for a row of {x.size} class(es): cross-entropy is undefined"
        return {"defined": False, "note": note, "naive": None, "stable": None, "naive_warnings": [], "stable_warnings": []}
    return {"defined": True, **_pair(naive.cross_entropy, _stable_ce, x, CE_TARGET)}


def _nan_flags(dtype: np.dtype) -> dict[str, list[str]]:
    runs = [(case.name, softmax_pair(case, dtype)) for case in SOFTMAX_CASES]
    return {
        "naive_nan": [name for name, r in runs if np.isnan(r.naive.astype(np.float64)).any()],
        "stable_nan": [name for name, r in runs if np.isnan(r.stable.astype(np.float64)).any()],
    }


# --------------------------------------------------------------------------
# Lab 02 task 1, the float32 break, SciPy parity, stop conditions
# --------------------------------------------------------------------------


def _lab02_row(z: tuple[float, ...], dtype: np.dtype) -> dict[str, Any]:
    x = _cast(z, dtype)
    return {
        "input": _nums(x),
        "logsumexp": _pair(naive.logsumexp, logsumexp, x),
        "log_softmax": _pair(naive.log_softmax, log_softmax, x),
        "cross_entropy": _pair(naive.cross_entropy, _stable_ce, x, CE_TARGET),
    }


def _fp32_break() -> dict[str, Any]:
    x = np.array([r.logits for r in BREAK_ROWS], dtype=BREAK_DTYPE)
    t = np.array([r.target for r in BREAK_ROWS])
    p = np.asarray(softmax(x))
    p_t = np.take_along_axis(p, t[:, None], axis=-1)[:, 0]
    unfused, unfused_w = _captured(lambda: -np.log(p_t))  # the seed's ce_unsafe
    naive_ce, naive_w = _captured(naive.cross_entropy, x, t)
    stable_ce = np.asarray(_stable_ce(x, t))
    rows = [
        _break_row(spec, x[i], p[i], unfused[i], naive_ce[i], stable_ce[i]) for i, spec in enumerate(BREAK_ROWS)
    ]
    return {
        "dtype": BREAK_DTYPE.name,
        "rows": rows,
        "smallest_probability_per_batch": num(p.min()),
        "failing_rows": [row["name"] for row in rows if row["fails"]],
        "warnings": {"unfused": unfused_w, "naive": naive_w},
        "scipy_ce": _scipy_ce(x, t),
    }


def _break_row(spec: BreakRow, x: np.ndarray, p: np.ndarray, unfused: Any, naive_ce: Any, stable_ce: Any) -> dict[str, Any]:
    """One row of the break, with the seed's diagnostics: smallest p and the argmin logit."""
    return {
        "name": spec.name,
        "logits": _nums(x),
        "target": spec.target,
        "unfused_ce": num(unfused),
        "naive_ce": num(naive_ce),
        "stable_ce": num(stable_ce),
        "target_probability": num(p[spec.target]),
        "smallest_probability": num(p.min()),
        "argmin_logit": int(np.argmin(x)),
        "fails": not math.isfinite(float(unfused)),
        "seed_expected": {"unfused_ce": num(spec.seed_unsafe), "stable_ce": num(spec.seed_safe)},
    }


def _scipy_ce(x: np.ndarray, t: np.ndarray) -> list[float | str] | None:
    try:
        from scipy.special import log_softmax as sp_log_softmax
    except ImportError:
        return None
    return _nums(-np.take_along_axis(sp_log_softmax(x, axis=-1), t[:, None], axis=-1)[:, 0])


def _parity_inputs(seed: int) -> list[tuple[str, np.ndarray]]:
    """Every battery input at float64, and a seeded synthetic batch (lab 02 task 4)."""
    inputs = [(c.name, _cast(c.logits, np.dtype(np.float64))) for c in SOFTMAX_CASES]
    inputs += [(str(list(z)), _cast(z, np.dtype(np.float64))) for z in LAB02_INPUTS]
    batch = np.random.default_rng(seed).normal(0.0, 3.0, size=(16, 5))
    inputs.append((f"synthetic batch (16, 5), seed {seed}", batch))
    return inputs


def _scipy_parity(seed: int) -> dict[str, Any]:
    try:
        from scipy import special
    except ImportError:
        return {"available": False, "reason": "SciPy is not installed: lab 01 block F was skipped"}
    rows = [_parity_row(name, x, special) for name, x in _parity_inputs(seed)]
    return {
        "available": True,
        "softmax_tol": SOFTMAX_TOL,
        "logsumexp_tol": LSE_TOL,
        "rows": rows,
        "passed": all(r["passed"] for r in rows),
    }


def _parity_row(name: str, x: np.ndarray, special: Any) -> dict[str, Any]:
    sm = _max_diff(softmax(x), special.softmax(x, axis=-1), relative=False)
    lse = _max_diff(logsumexp(x), special.logsumexp(x, axis=-1), relative=True)
    lsm = _max_diff(log_softmax(x), special.log_softmax(x, axis=-1), relative=True)
    ce = math.nan
    if x.shape[-1] > CE_TARGET:
        ref = -special.log_softmax(x, axis=-1)[..., CE_TARGET]
        ce = _max_diff(_stable_ce(x, np.full(x.shape[:-1], CE_TARGET)), ref, relative=True)
    checked = [lse, lsm] + ([ce] if not math.isnan(ce) else [])
    return {
        "input": name,
        "softmax_max_abs_diff": num(sm),
        "logsumexp_rel_diff": num(lse),
        "log_softmax_max_rel_diff": num(lsm),
        "cross_entropy_rel_diff": None if math.isnan(ce) else num(ce),
        "passed": sm <= SOFTMAX_TOL and all(d <= LSE_TOL for d in checked),
    }


def _max_diff(got: Any, ref: Any, *, relative: bool) -> float:
    """Largest ``|got - ref|`` (over ``|ref|`` when relative and ``ref != 0``).

    Non-finite values must agree exactly (0 when they do, inf when not).
    """
    a, b = np.broadcast_arrays(np.asarray(got, np.float64), np.asarray(ref, np.float64))
    fin = np.isfinite(a) & np.isfinite(b)
    same_special = (a == b) | (np.isnan(a) & np.isnan(b))
    if not (fin | same_special).all():
        return math.inf
    d = np.abs(a[fin] - b[fin])
    if relative:
        scale = np.abs(b[fin])
        d = np.divide(d, scale, out=d.copy(), where=scale != 0)
    return float(d.max(initial=0.0))


def _lab02_nan(rows: list[dict[str, Any]], side: str) -> list[str]:
    """Lab 02 inputs where a ``side`` ("naive" or "stable") function returned NaN, named with the functions."""
    found = []
    for row in rows:
        fns = [fn for fn in ("logsumexp", "log_softmax", "cross_entropy") if "nan" in np.atleast_1d(row[fn][side]).tolist()]
        if fns:
            found.append(f"lab 02 {_label(row['input'])} ({', '.join(fns)})")
    return found


def _label(values: list[Any]) -> str:
    return "[" + ", ".join(f"{float(v):g}" if not isinstance(v, str) else v for v in values) + "]"


def _stop_conditions(cases: list[dict[str, Any]], lab02: list[dict[str, Any]]) -> dict[str, Any]:
    """The lab's stop conditions over every case in results.json: the lab 01 and lab 02 inputs."""
    softmax_nan = [c["name"] for c in cases if c["naive"]["has_nan"]]
    naive_nan = softmax_nan + _lab02_nan(lab02, "naive")
    stable_nan = [c["name"] for c in cases if c["stable"]["has_nan"]] + _lab02_nan(lab02, "stable")
    worst = max(cases, key=lambda c: float(c["sum_error_eps"]) / c["sum_bound_eps"])
    return {
        "naive_nan": {"required": ">= 2 cases", "cases": naive_nan, "softmax_cases": softmax_nan,
                      "met": len(naive_nan) >= 2},
        "stable_nan": {"required": "no case", "cases": stable_nan, "met": not stable_nan},
        "stable_sums": {
            "required": "|sum - 1| <= n * eps(dtype) for every case",
            "worst_case": worst["name"],
            "worst_error_eps": worst["sum_error_eps"],
            "met": all(float(c["sum_error_eps"]) <= c["sum_bound_eps"] for c in cases),
        },
    }
