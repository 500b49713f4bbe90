"""The learner's predictions: the TOML file, its empty template, and where they missed.

Lab 01 block D: write down, before running, whether naive and stable softmax
will return NaN on each case and what the cross-entropy (``y = 1``) will be.
The file looks like the template :func:`template` writes, once filled in::

    dtype = "float32"            # the --dtype these are for

    [cases."large positive"]
    naive_nan = true             # true or false
    stable_nan = false           # true or false
    ce = 0.0                     # a number, inf, nan, or "undefined"
    why = "exp(92) overflows float32"   # optional: your reasoning, before the run
    explain = ""                 # optional: after the run, why a prediction missed

The template leaves every answer empty (``""``). A file with any of the eight
cases missing, or any ``naive_nan``, ``stable_nan`` or ``ce`` left empty, is
refused with an :class:`~stablesoftmax.InputFileError` that names the cases:
a prediction the learner did not write is not a prediction.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import InputFileError
from ._cases import CE_TARGET, SOFTMAX_CASES

__all__ = [
    "Prediction",
    "Predictions",
    "Divergence",
    "load",
    "template",
    "divergences",
    "CE_ABS",
    "CE_REL",
    "MAX_BYTES",
    "ANSWERS",
]

ANSWERS = ("naive_nan", "stable_nan", "ce")  # what every case must answer
FIELDS = (*ANSWERS, "why", "explain")
CASE_NAMES = tuple(c.name for c in SOFTMAX_CASES)
# A by-hand CE estimate agrees when it is within 5 % or 0.05 nats of the result.
CE_REL, CE_ABS = 0.05, 0.05
# The filled template is about 2 kB; a file a thousand times larger is not a predictions file.
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Prediction:
    """One case's answers, and the learner's own words before and after the run."""

    naive_nan: bool
    stable_nan: bool
    ce: float | str  # a float, or "undefined"
    why: str = ""
    explain: str = ""


@dataclass(frozen=True)
class Predictions:
    """The whole file: its path as given (for hints), its name (for the report), dtype and cases."""

    path: Path
    dtype: str | None
    cases: dict[str, Prediction]

    @property
    def source(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Divergence:
    """One place a prediction and the result disagree."""

    case: str
    field: str
    predicted: str
    actual: str


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------


def load(path: Path, run_dtype: str) -> Predictions:
    """Parse and check a predictions file; InputFileError names the line, the field or the missing cases."""
    text = _read(path)
    data = _parse(path, text)
    for key in data:
        if key not in ("dtype", "cases"):
            raise _err(path, text, key, None, f"unknown key {key!r}; allowed: dtype, cases")
    dtype = data.get("dtype")
    if dtype is not None and dtype != run_dtype:
        msg = f"dtype = {dtype!r} but --dtype is {run_dtype!r}; predictions depend on the dtype, make them agree"
        raise _err(path, text, "dtype", None, msg)
    cases = data.get("cases", {})
    if not isinstance(cases, dict):
        raise _err(path, text, "cases", None, 'cases must be a table of [cases."NAME"] tables')
    raw = {name: _check_case(path, text, name, v) for name, v in cases.items()}
    _require_complete(path, raw)
    return Predictions(path, dtype, {name: _prediction(v) for name, v in raw.items()})


def _read(path: Path) -> str:
    """The file's text, read within MAX_BYTES; FIFOs, devices and directories are refused unread."""
    from ._readers import read_regular_file

    data = read_regular_file(path, what="--predictions", max_bytes=MAX_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"--predictions {path}: is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "expected the TOML file the template shows"
        ) from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, as the `tomli` backport
        import tomli as tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"--predictions {path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of [[[...]]] or {a = {b = ...}}
        raise InputFileError(
            f"--predictions {path}: nests arrays or tables too deeply to be read; "
            'expected the flat [cases."NAME"] tables the template shows'
        ) from None


def _check_case(path: Path, text: str, name: str, raw: Any) -> dict[str, Any]:
    """Each field of one case has the right type; empty answers ("") are dropped, to be reported as missing."""
    if name not in CASE_NAMES:
        allowed = ", ".join(repr(n) for n in CASE_NAMES)
        raise _err(path, text, name, None, f"unknown case {name!r}; allowed: {allowed}")
    if not isinstance(raw, dict):
        raise _err(path, text, name, None, f"cases.{name!r} must be a table")
    for field, value in raw.items():
        if field not in FIELDS:
            raise _err(path, text, name, field, f"cases.{name!r}.{field} is not a field; allowed: {', '.join(FIELDS)}")
        if field in ANSWERS and value == "":
            continue  # left empty: reported with every other missing answer
        if field.endswith("_nan") and not isinstance(value, bool):
            raise _err(path, text, name, field, f"cases.{name!r}.{field} = {value!r} must be true or false")
        if field == "ce" and not _ce_ok(value):
            msg = f'cases.{name!r}.ce = {value!r} must be a number, inf, nan or "undefined"'
            raise _err(path, text, name, field, msg)
        if field in ("why", "explain") and not isinstance(value, str):
            raise _err(path, text, name, field, f"cases.{name!r}.{field} = {value!r} must be a string")
    return {k: v for k, v in raw.items() if not (k in ANSWERS and v == "")}


def _require_complete(path: Path, raw: dict[str, dict[str, Any]]) -> None:
    missing = []
    for name in CASE_NAMES:
        gaps = [f for f in ANSWERS if f not in raw.get(name, {})]
        if gaps:
            missing.append(f"{name!r} ({', '.join(gaps)})" if name in raw else f"{name!r} (the whole case)")
    if missing:
        raise InputFileError(
            f"--predictions {path}: {len(missing)} of {len(CASE_NAMES)} cases are not filled in: {'; '.join(missing)}. "
            "Predict every case before the run: naive_nan and stable_nan true or false, ce a number, inf, nan "
            'or "undefined"'
        )


def _prediction(raw: dict[str, Any]) -> Prediction:
    ce = raw["ce"]
    return Prediction(
        raw["naive_nan"],
        raw["stable_nan"],
        ce if isinstance(ce, str) else float(ce),
        raw.get("why", ""),
        raw.get("explain", ""),
    )


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


def template(dtype: str, run_command: str) -> str:
    """A predictions file with every answer empty, for the learner to fill in before the run."""
    out = [
        "# Your predictions for `stablesoftmax battery` (lab 01 block D).",
        "# Fill in every answer BEFORE you look at any result, then run:",
        f"#   {run_command}",
        "# naive_nan, stable_nan: true or false. Will softmax(x) hold a NaN?",
        f"# ce: the cross-entropy with y = {CE_TARGET}, logsumexp(x) - x[{CE_TARGET}]: "
        'a number, inf, nan or "undefined".',
        "# why: your reasoning, one line (optional).",
        "# explain: after the run, for a prediction that missed: why it missed (optional).",
        '# The battery refuses this file while any naive_nan, stable_nan or ce is still "".',
        "",
        f'dtype = "{dtype}"',
    ]
    for case in SOFTMAX_CASES:
        out += ["", f"# x = {case.label}", f'[cases."{case.name}"]']
        out += ['naive_nan = ""', 'stable_nan = ""', 'ce = ""', 'why = ""', 'explain = ""']
    return "\n".join(out) + "\n"


def divergences(preds: Predictions, results: dict[str, Any]) -> list[Divergence]:
    """Every answer that disagrees with the result, in case order."""
    found: list[Divergence] = []
    for row in results["softmax"]:
        p = preds.cases.get(row["name"])
        if p is None:
            continue
        for kind in ("naive", "stable"):
            guess, got = getattr(p, f"{kind}_nan"), row[kind]["has_nan"]
            if guess != got:
                found.append(Divergence(row["name"], f"{kind} NaN?", _yes(guess), _yes(got)))
        if not _ce_agrees(p.ce, row["cross_entropy"]):
            found.append(Divergence(row["name"], "CE", _ce_text_pred(p.ce), _ce_text(row["cross_entropy"])))
    return found


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


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
