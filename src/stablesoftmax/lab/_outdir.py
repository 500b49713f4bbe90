"""The output directory: checked before any work, written file by file, atomically.

A command names every file it will write up front; :func:`prepare` refuses to
overwrite any of them without ``--force`` and proves the directory writable, so
a bad ``--out`` fails in a fraction of a second with one line, before the
computation. :func:`write` replaces each file atomically (temp file, then
``os.replace``), so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .._errors import ArgumentError

__all__ = ["prepare", "write", "sha256"]


def prepare(out: Path, names: list[str], *, force: bool) -> None:
    """Create ``out`` if needed, check it is writable, and guard existing files."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} is a file, not a directory; give a directory path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ArgumentError(f"--out {out} is not writable: {exc.strerror or exc}") from None
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise ArgumentError(f"--out {out} already holds {', '.join(existing)}; pass --force to overwrite them")


def write(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return its SHA-256 (hex)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # open(), not mkstemp: the umask's mode
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    """SHA-256 (hex) of a file on disk."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
