"""manifest.json: how a directory of results came to be.

Seed, dtype, versions (Python, NumPy, stablesoftmax, ml_dtypes, and SciPy,
matplotlib, PyTorch when installed), platform, command line, time, the git
commit of the stablesoftmax source when it lives in a repository, and the
SHA-256 of every file the command wrote. It is the only file that differs
between two identical runs (``time``, and ``files["manifest.json"]`` is absent
since a file cannot hold its own hash).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["build", "dumps", "dist_version"]

OPTIONAL = ("scipy", "matplotlib", "torch")


def build(*, command: str, settings: dict[str, Any], files: dict[str, str], inputs: dict[str, Any]) -> dict[str, Any]:
    """The manifest as a dict; ``files`` maps each written file name to its SHA-256."""
    return {
        "command": command,
        "argv": list(sys.argv),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **settings,
        "versions": _versions(),
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
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
    """Commit and dirty flag of the repository holding the stablesoftmax source, if any."""
    src = Path(__file__).resolve().parent
    commit = _git_out(src, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git_out(src, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def _git_out(where: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
