"""The learner's predictions: the TOML file, its template, and where they missed.

Lab 01 block D: write down, before running, whether naive and stable softmax
will return NaN on each case and what the cross-entropy (``y = 1``) will be.
The file looks like the template :func:`template` writes::

    dtype = "float32"            # optional: the --dtype these are for

    [cases."large positive"]
    naive_nan = true
    stable_nan = false
    ce = 0.0                     # a number, inf, nan, or "undefined"
    why = "exp(92) overflows float32"   # optional

Every case is optional; a missing one shows as "-" in the report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .._errors import InputFileError
from ._cases import CE_TARGET, DTYPES, SOFTMAX_CASES

__all__ = ["Prediction", "Predictions", "Divergence", "load", "template", "divergences", "CE_ABS", "CE_REL"]

FIELDS = ("naive_nan", "stable_nan", "ce", "why")
CASE_NAMES = tuple(c.name for c in SOFTMAX_CASES)
# A by-hand CE estimate agrees when it is within 5 % or 0.05 nats of the result.
CE_REL, CE_ABS = 0.05, 0.05


@dataclass(frozen=True)
class Prediction:
    """One case's predictions; None where the learner left a field out."""

    naive_nan: bool | None = None
    stable_nan: bool | None = None
    ce: float | str | None = None  # a float, or "undefined"
    why: str = ""


@dataclass(frozen=True)
class Predictions:
    """The whole file: its name (for the report), its dtype and the cases."""

    source: str
    dtype: str | None
    cases: dict[str, Prediction]


@dataclass(frozen=True)
class Divergence:
    """One place a prediction and the result disagree, with the reason."""

    case: str
    field: str
    predicted: str
    actual: str
    why: str


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------


def load(path: Path, run_dtype: str) -> Predictions:
    """Parse and check a predictions file; InputFileError names the line and the field."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as the `tomli` backport
        import tomli as tomllib

    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"--predictions {path}: not valid TOML: {exc}") from None
    for key in data:
        if key not in ("dtype", "cases"):
            raise _err(path, text, key, None, f"unknown key {key!r}; allowed: dtype, cases")
    dtype = data.get("dtype")
    if dtype is not None and dtype != run_dtype:
        msg = f"dtype = {dtype!r} but --dtype is {run_dtype!r}; predictions depend on the dtype, make them agree"
        raise _err(path, text, "dtype", None, msg)
    cases = data.get("cases", {})
    if not isinstance(cases, dict):
        raise _err(path, text, "cases", None, "cases must be a table of [cases.\"NAME\"] tables")
    return Predictions(path.name, dtype, {name: _case(path, text, name, v) for name, v in cases.items()})


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"--predictions {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"--predictions {path}: cannot be read as UTF-8 text: {exc}") from None


def _case(path: Path, text: str, name: str, raw: Any) -> Prediction:
    if name not in CASE_NAMES:
        allowed = ", ".join(repr(n) for n in CASE_NAMES)
        raise _err(path, text, name, None, f"unknown case {name!r}; allowed: {allowed}")
    if not isinstance(raw, dict):
        raise _err(path, text, name, None, f"cases.{name!r} must be a table")
    for field, value in raw.items():
        if field not in FIELDS:
            raise _err(path, text, name, field, f"cases.{name!r}.{field} is not a field; allowed: {', '.join(FIELDS)}")
        if field.endswith("_nan") and not isinstance(value, bool):
            raise _err(path, text, name, field, f"cases.{name!r}.{field} = {value!r} must be true or false")
        if field == "ce" and not _ce_ok(value):
            msg = f"cases.{name!r}.ce = {value!r} must be a number, inf, nan or \"undefined\""
            raise _err(path, text, name, field, msg)
        if field == "why" and not isinstance(value, str):
            raise _err(path, text, name, field, f"cases.{name!r}.why = {value!r} must be a string")
    ce = raw.get("ce")
    ce = ce if ce is None or isinstance(ce, str) else float(ce)
    return Prediction(raw.get("naive_nan"), raw.get("stable_nan"), ce, raw.get("why", ""))


def _ce_ok(value: Any) -> bool:
    return value == "undefined" or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _err(path: Path, text: str, key: str, field: str | None, msg: str) -> InputFileError:
    return InputFileError(f"--predictions {path}: line {_line_of(text, key, field)}: {msg}")


def _line_of(text: str, key: str, field: str | None) -> int:
    """The line of ``field`` inside the table that names ``key`` (or of ``key`` itself)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if key in line), 0)
    if field is None:
        return start + 1
    for i in range(start + 1, len(lines)):
        s = lines[i].strip()
        if s.startswith("["):
            break
        if re.match(rf"{re.escape(field)}\s*=", s):
            return i + 1
    return start + 1


# --------------------------------------------------------------------------
# The template and the comparison
# --------------------------------------------------------------------------


def template(dtype: str) -> str:
    """A predictions file with every case and field left for the learner to fill in."""
    out = [
        "# Predictions for `stablesoftmax battery` (lab 01 block D). Fill these in",
        "# BEFORE you look at results.json, then run:",
        f"#   stablesoftmax battery --dtype {dtype} --predictions predictions.toml --force",
        "# naive_nan / stable_nan: true or false. Does softmax(x) contain a NaN?",
        f"# ce: the cross-entropy with y = {CE_TARGET}, logsumexp(x) - x[{CE_TARGET}]: a number, inf, nan or \"undefined\".",
        "# why: one line of reasoning (optional). Delete a field to leave it unpredicted.",
        "",
        f'dtype = "{dtype}"',
    ]
    for case in SOFTMAX_CASES:
        out += ["", f"# x = {case.label}", f'[cases."{case.name}"]']
        out += ["naive_nan = false", "stable_nan = false", "ce = nan", 'why = ""']
    return "\n".join(out) + "\n"


def divergences(preds: Predictions, results: dict[str, Any]) -> list[Divergence]:
    """Every field where a prediction and the result disagree, in case order."""
    dtype = DTYPES[results["dtype"]]
    found: list[Divergence] = []
    for row in results["softmax"]:
        p = preds.cases.get(row["name"])
        if p is None:
            continue
        logits = next(c.logits for c in SOFTMAX_CASES if c.name == row["name"])
        for kind in ("naive", "stable"):
            guess, got = getattr(p, f"{kind}_nan"), row[kind]["has_nan"]
            if guess is not None and guess != got:
                why = _nan_why(kind, got, logits, dtype)
                found.append(Divergence(row["name"], f"{kind} NaN?", _yes(guess), _yes(got), why))
        if p.ce is not None and not _ce_agrees(p.ce, row["cross_entropy"]):
            actual = _ce_text(row["cross_entropy"])
            found.append(Divergence(row["name"], "CE", _ce_text_pred(p.ce), actual, _ce_why(row, logits, dtype)))
    return found


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _nan_why(kind: str, got: bool, logits: tuple[float, ...], dtype: np.dtype) -> str:
    """Why a naive or stable row did or did not return NaN, from exp's range in ``dtype``."""
    if kind == "stable":
        if got:
            return "stable softmax returned NaN on a NaN-free input: a bug in stablesoftmax, please report it."
        return ("the -max shift makes the largest term exp(0) = 1 exactly, so the sum is at least 1: "
                "nothing overflows and there is no 0/0.")
    fi = ml_dtypes.finfo(dtype)
    lo, hi = math.log(float(fi.smallest_subnormal)), math.log(float(fi.max))
    m = float(np.asarray(logits, np.float64).astype(dtype).astype(np.float64).max())
    name = dtype.name
    if got and m > hi:
        return f"exp({m:g}) overflows {name} (exp is finite only up to x ~ {hi:.2f}), the sum is inf and inf/inf is NaN."
    if got and m < lo:
        return f"every exp(x_i) underflows to 0 in {name} (exp(x) is 0 below x ~ {lo:.2f}), so the row is 0/0 = NaN."
    if got:
        return f"the naive row holds a NaN although max(x) = {m:g} is inside exp's range in {name}."
    why = f"max(x) = {m:g} lies inside exp's finite range in {name} ({lo:.2f} < x < {hi:.2f}): no inf/inf, no 0/0"
    if math.exp(m) < float(fi.smallest_normal):
        why += f"; exp({m:g}) = {math.exp(m):.2g} survives as a {name} subnormal (gradual underflow), so the sum is not 0"
    return why + "."


def _ce_agrees(guess: float | str, ce: dict[str, Any]) -> bool:
    if not ce["defined"] or guess == "undefined":
        return guess == "undefined" and not ce["defined"]
    actual, g = float(ce["stable"]), float(guess)
    if not (math.isfinite(actual) and math.isfinite(g)):
        return g == actual or (math.isnan(g) and math.isnan(actual))
    return abs(g - actual) <= max(CE_ABS, CE_REL * abs(actual))


def _ce_text(ce: dict[str, Any]) -> str:
    return "undefined" if not ce["defined"] else _fmt(ce["stable"])


def _ce_text_pred(guess: float | str) -> str:
    return guess if isinstance(guess, str) else _fmt(guess)


def _fmt(v: Any) -> str:
    f = float(v)
    return "NaN" if math.isnan(f) else f"{f:.6g}"


def _ce_why(row: dict[str, Any], logits: tuple[float, ...], dtype: np.dtype) -> str:
    ce = row["cross_entropy"]
    if not ce["defined"]:
        return f"a {row['n']}-element row has no class y = {CE_TARGET}, so the cross-entropy is undefined."
    x = np.asarray(logits, np.float64).astype(dtype).astype(np.float64)
    lse, xy = float(row["logsumexp"]["stable"]), float(x[CE_TARGET])
    if xy == -math.inf:
        return (f"x[{CE_TARGET}] = -inf is masked: the true class has probability 0, so the loss is +inf "
                "(never mask the true label).")
    return f"the fused CE is logsumexp(x) - x[{CE_TARGET}] = {lse:.6g} - ({xy:g}) = {_fmt(ce['stable'])}."
