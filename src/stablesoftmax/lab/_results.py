"""The experiment's own files, running its ``compare.py``, and the library beside ``stable.py``.

``stablesoftmax battery`` writes the lab's ``naive.py``, ``stable.py`` and
``compare.py`` (package data under ``experiment-files/``) into the experiment
directory, then runs that ``compare.py`` in a new Python process, exactly as
``python compare.py`` does there, and reads the ``results.json`` it wrote. So
``results.json`` comes from one code path, and rerunning ``compare.py`` in a
copy of the directory rewrites the same bytes. Its schema is the docstring at
the top of ``compare.py``.

``naive.py`` and ``stable.py`` are the learner's to edit and break: they are
written when absent and never overwritten, ``--force`` or not. ``compare.py``
carries the run's dtype and seed and is rewritten like any other output.

:func:`library_view` computes, through the public API only, what
``stablesoftmax`` returns on the same inputs, for the report's column beside
``stable.py``. Float32 and narrower results of the library are correctly
rounded, so they do not depend on the CPU's ``exp`` and ``log``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .. import InputFileError, cross_entropy, log_softmax, logsumexp, reference_path
from ._cases import BREAK_ROWS, CE_TARGET, DTYPES, SOFTMAX_CASES

__all__ = [
    "SCHEMA",
    "LAB_FILES",
    "KEPT",
    "lab_file",
    "write_lab_files",
    "run_compare",
    "library_view",
    "ulps_apart",
    "num",
    "eps",
]

SCHEMA = "stablesoftmax.battery/2"
LAB_FILES = ("naive.py", "stable.py", "compare.py")
KEPT = ("naive.py", "stable.py")  # the learner's: written when absent, never overwritten
COMPARE_TIMEOUT_S = 600  # compare.py takes a few seconds; a learner's stable.py may be slower, never this slow
_SETTINGS = {"DTYPE": r'^DTYPE = "[a-z0-9]+"', "SEED": r"^SEED = [0-9]+"}


def lab_file(name: str, *, dtype: str, seed: int) -> bytes:
    """The lab's own ``name`` as the battery writes it; compare.py gets the run's dtype and seed."""
    data = resources.files(__package__).joinpath("experiment-files").joinpath(name).read_bytes()
    if name != "compare.py":
        return data
    text = data.decode("utf-8")
    for key, pattern in _SETTINGS.items():
        line = f'DTYPE = "{dtype}"' if key == "DTYPE" else f"SEED = {seed}"
        text, n = re.subn(pattern, line, text, count=1, flags=re.M)
        if n != 1:
            raise RuntimeError(f"the packaged compare.py has no {key} line to set; the installation is broken")
    return text.encode("utf-8")


def write_lab_files(out: Path, *, dtype: str, seed: int) -> dict[str, str]:
    """Write the lab files (keeping the learner's); for each, "model answer", or "yours" where a kept one differs."""
    from . import _outdir

    state = {}
    for name in LAB_FILES:
        data, path = lab_file(name, dtype=dtype, seed=seed), out / name
        if name in KEPT and path.exists():
            state[name] = "model answer" if path.read_bytes() == data else "yours"
        else:
            _outdir.write(path, data)
            state[name] = "model answer"
    return state


def run_compare(out: Path) -> tuple[dict[str, Any], str]:
    """Run ``out/compare.py`` as ``python compare.py`` would; its results.json and its printed table."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
    try:
        done = subprocess.run(
            [sys.executable, "compare.py"],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=COMPARE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise InputFileError(
            f"--out {out}: compare.py ran for more than {COMPARE_TIMEOUT_S} s and was stopped; "
            "run `python compare.py` there to see where it hangs"
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InputFileError(
            f"--out {out}: compare.py failed ({last}); run `python compare.py` there for the "
            "traceback, or delete naive.py and stable.py to get the lab's own back"
        )
    return _load(out / "results.json"), done.stdout.rstrip("\n")


def _load(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: compare.py did not write a readable results.json ({exc})") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise InputFileError(f"{path}: is not a {SCHEMA} results file; was compare.py edited?")
    return results


# --------------------------------------------------------------------------
# Numbers, and the library on the same inputs
# --------------------------------------------------------------------------


def num(v: Any) -> float | str:
    """A float for JSON: finite as it is, otherwise "nan", "inf" or "-inf" (compare.py's convention)."""
    f = float(v)
    if math.isnan(f):
        return "nan"
    return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")


def finfo(dtype: np.dtype) -> np.finfo[np.floating[Any]]:
    """``ml_dtypes.finfo``, which knows bfloat16 as well as NumPy's own types.

    It is a subclass of ``numpy.finfo`` whose constructor ml_dtypes leaves unannotated: typed here as
    the ``numpy.finfo`` it is.
    """
    make: Callable[[np.dtype], np.finfo[np.floating[Any]]] = ml_dtypes.finfo
    return make(dtype)


def eps(dtype: np.dtype) -> float:
    """Machine epsilon of ``dtype`` (bfloat16 included)."""
    return float(finfo(dtype).eps)


def library_view(results: dict[str, Any]) -> dict[str, Any]:
    """stablesoftmax's logsumexp and cross-entropy on each lab 01 case, and log_softmax on each break row.

    Run on the library's reference (pure-NumPy) path, so that the report is
    the same whether or not the compiled extra is installed.
    """
    dtype = DTYPES[results["dtype"]]
    with reference_path():
        cases = {c.name: _library_case(np.asarray(c.logits).astype(dtype)) for c in SOFTMAX_CASES}
        rows = {
            r.name: [num(v) for v in np.asarray(log_softmax(np.asarray(r.logits, np.float32)), np.float64)]
            for r in BREAK_ROWS
        }
    return {"dtype": dtype.name, "cases": cases, "break_log_softmax": rows}


def _library_case(x: np.ndarray) -> dict[str, Any]:
    ce = num(cross_entropy(x, CE_TARGET)) if x.size > CE_TARGET else None
    return {"logsumexp": num(logsumexp(x)), "cross_entropy": ce}


def ulps_apart(a: Any, b: Any, dtype: np.dtype) -> float:
    """How many units in the last place of ``dtype`` separate two finite values (0 when equal)."""
    fa, fb = float(a), float(b)
    if fa == fb or not (math.isfinite(fa) and math.isfinite(fb)):
        return 0.0 if fa == fb else math.inf
    fi = finfo(dtype)
    big = max(abs(fa), abs(fb), float(fi.smallest_normal))
    ulp = float(fi.eps) * 2.0 ** math.floor(math.log2(big))
    return abs(fa - fb) / max(ulp, float(fi.smallest_subnormal))
