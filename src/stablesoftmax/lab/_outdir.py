"""The output directory: checked before any work, written file by file, atomically.

A command names every file it will write up front; :func:`prepare` refuses to
overwrite any of them without ``--force`` and proves the directory writable, so
a bad ``--out`` fails in a fraction of a second with one line, before the
computation. When the files in the way are tracked by git (a committed worked
example), the message never suggests ``--force``: it points at another
directory instead, so that no hint the CLI prints can change a tracked file.
:func:`write` replaces each file atomically (temp file, then ``os.replace``),
so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from .. import ArgumentError

__all__ = ["parse_out", "shown", "prepare", "tracked", "write", "sha256"]


def parse_out(text: str) -> Path:
    """``--out`` as a path; an empty one is refused, since it would mean the current directory."""
    if not text.strip():
        raise ArgumentError(f"--out {text!r} is empty; give a directory path, e.g. --out out/lab")
    return Path(text)


def shown(path: Path) -> str:
    """``path`` as the user should type it again: relative to the current directory when it lies inside it."""
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def prepare(out: Path, names: list[str], *, force: bool, elsewhere: str) -> None:
    """Create ``out`` if needed, check it is writable, and guard existing files.

    ``elsewhere`` is a directory to suggest when the files in the way are tracked by git.
    """
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
        kept = tracked(out, existing)
        if kept:
            raise ArgumentError(
                f"--out {out} holds {', '.join(kept)}, which git tracks (a committed example); "
                f"write your run to another directory, e.g. --out {elsewhere}"
            )
        raise ArgumentError(f"--out {out} already holds {', '.join(existing)}; pass --force to overwrite them")


def tracked(out: Path, names: list[str]) -> list[str]:
    """Those of ``names`` in ``out`` that git tracks; none when ``out`` is in no repository or git is missing."""
    try:
        done = subprocess.run(["git", "-C", str(out), "ls-files", "-z", "--", *names], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    listed = {Path(p).name for p in done.stdout.decode("utf-8", "replace").split("\0") if p}
    return [n for n in names if n in listed]


def write(path: Path, data: bytes, *, flag: str = "--out") -> str:
    """Write ``data`` to ``path`` atomically; return its SHA-256 (hex). ``flag`` names the option in errors."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # open(), not mkstemp: the umask's mode
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota: one line, and no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise ArgumentError(f"{flag} {path.parent}: could not write {path.name}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    """SHA-256 (hex) of a file on disk."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
