"""manifest.json: how a directory of results came to be.

Seed, dtype, versions (Python, NumPy, stablesoftmax, ml_dtypes, and SciPy,
matplotlib, PyTorch, numba when installed), platform, the command line that
reproduces the run, time, the git commit of the stablesoftmax source when it
lives in a repository, and the SHA-256 of every file in the directory the run
made or used. It is the only file that differs between two identical runs
(``time``, and ``files["manifest.json"]`` is absent since a file cannot hold
its own hash).

No absolute path goes in: the command is rebuilt from the options (paths as
typed, or relative to the current directory when they lie inside it), and
``sys.argv``, whose first entry is the executable's absolute path, is not
recorded.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["build", "dumps", "dist_version", "cpu", "cpu_line", "versions_line"]

OPTIONAL = ("scipy", "matplotlib", "torch", "numba")


def build(*, command: str, settings: dict[str, Any], files: dict[str, str], inputs: dict[str, Any]) -> dict[str, Any]:
    """The manifest as a dict; ``files`` maps each written file name to its SHA-256."""
    return {
        "command": command,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **settings,
        "versions": _versions(),
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
            "cpu": cpu(),
        },
        "git": _git(),
        "inputs": inputs,
        "files": dict(sorted(files.items())),
    }


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()


def _versions() -> dict[str, str | None]:
    import numpy

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "stablesoftmax": __version__,
        "ml_dtypes": dist_version("ml_dtypes"),
    }
    out.update({name: dist_version(name) for name in OPTIONAL})
    return out


def dist_version(name: str) -> str | None:
    """Installed version of a distribution, or None; never imports it (torch is slow)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any] | None:
    """Commit of the repository holding the stablesoftmax source, if any, and whether that source is dirty.

    Only the package's own files count: a run that rewrites a committed example
    must not call its own output a dirty source.
    """
    package = Path(__file__).resolve().parent.parent
    commit = _git_out(package, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git_out(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": bool(status)}


def _git_out(where: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# --------------------------------------------------------------------------
# The CPU: its vector features decide NumPy's exp and log, their speed and last bits
# --------------------------------------------------------------------------

# /proc/cpuinfo flag names, in the order they are shown.
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "asimd",
    "sve",
)
# NumPy's own names for the same features, used where /proc/cpuinfo is missing (macOS, Windows).
NUMPY_FLAGS = {
    "SSE42": "sse4_2",
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA3": "fma",
    "AVX512F": "avx512f",
    "AVX512_SKX": "avx512bw",
    "AVX512_SPR": "avx512_fp16",
    "ASIMD": "asimd",
    "SVE": "sve",
}


def cpu() -> dict[str, Any]:
    """The CPU's model, its vector features and the SIMD targets NumPy dispatches to here.

    ``vector_features`` comes from ``/proc/cpuinfo`` where there is one, otherwise
    from NumPy's runtime CPU detection; ``source`` says which, or ``"unknown"``.
    """
    model, flags = _proc_cpuinfo()
    source = "/proc/cpuinfo"
    if flags is None:
        flags, source = _numpy_flags(), "numpy"
    if flags is None:
        source = "unknown"
    features = None if flags is None else [f for f in VECTOR_FLAGS if f in flags]
    return {
        "model": model or platform.processor() or None,
        "vector_features": features,
        "avx512": None if flags is None else "avx512f" in flags,
        "source": source,
        "numpy_simd": _numpy_simd(),
    }


def cpu_line(info: dict[str, Any] | None = None) -> str:
    """One line for a table's header: model, vector features, AVX-512 or not, NumPy's SIMD targets."""
    info = info if info is not None else cpu()
    feats = info["vector_features"]
    avx512 = {True: "yes", False: "no", None: "unknown"}[info["avx512"]]
    simd = " ".join(info["numpy_simd"]) if info["numpy_simd"] else "unknown"
    return (
        f"cpu: {info['model'] or 'unknown model'}; vector features: "
        f"{' '.join(feats) if feats else 'unknown'} (from {info['source']}); AVX-512: {avx512}; "
        f"NumPy SIMD targets: {simd}"
    )


def versions_line() -> str:
    """The versions that decide the timings, on one line."""
    v = _versions()
    names = ("stablesoftmax", "numpy", "scipy", "torch", "numba", "ml_dtypes", "python")
    return "versions: " + ", ".join(f"{n} {v[n]}" for n in names if v.get(n))


def _proc_cpuinfo() -> tuple[str | None, set[str] | None]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "processor") and not value.strip().isdigit():
            model = value.strip() or None
        if flags is None and key in ("flags", "features"):
            flags = set(value.split())
    return model, flags


def _umath() -> Any:
    """NumPy's C module holding its runtime CPU detection (what np.show_runtime reads), or None."""
    import importlib

    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # NumPy 2, then 1.x
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _numpy_flags() -> set[str] | None:
    found = getattr(_umath(), "__cpu_features__", None)
    if not found:
        return None
    return {flag for name, flag in NUMPY_FLAGS.items() if found.get(name)}


def _numpy_simd() -> list[str] | None:
    """The SIMD targets NumPy uses here: its baseline, then those it dispatches to that this CPU has.

    These are the names ``NPY_DISABLE_CPU_FEATURES`` takes.
    """
    umath = _umath()
    found = getattr(umath, "__cpu_features__", {})
    baseline = list(getattr(umath, "__cpu_baseline__", []))
    dispatch = [f for f in getattr(umath, "__cpu_dispatch__", []) if found.get(f)]
    return baseline + dispatch or None
