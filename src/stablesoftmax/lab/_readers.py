"""Readers for the logits files that ``stablesoftmax diagnose`` accepts.

Every reader returns an :class:`Array`: the shape and dtype of one array in
the file and a way to read it in windows along its outermost axis in memory
(axis 0 for C order), so that a ``.npy`` or ``.safetensors`` file larger than
memory is read a few megabytes at a time through :class:`numpy.memmap`.
``.npz``, ``.pt``/``.pth``, ``.csv``/``.tsv`` and ``.json`` are read whole.

Only regular files are opened (a FIFO, a device such as ``/dev/zero`` or a
directory is refused before it is read), and what is read whole is bounded
by :class:`Limits`: ``max_bytes`` for binary data held in memory (an
``.npz`` member after decompression, a ``.pt`` file, its archive members and
the tensor read from it, counted at the size it claims, so a stride-0 tensor
cannot pass for a small one), ``max_text_bytes`` for text files and the
``.safetensors`` JSON header. Streamed files are not limited in size.

Nothing here unpickles: ``.npy`` and ``.npz`` headers are parsed by
:mod:`numpy.lib.format` and object arrays are refused before any data is
read; ``.pt`` goes through ``torch.load(weights_only=True)``. Every problem
with a file is an :class:`~stablesoftmax.InputFileError` whose message names
the argument, the file, what is wrong and what is expected.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import ml_dtypes
import numpy as np

from .. import InputFileError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXTENSIONS",
    "MAX_BYTES",
    "MAX_TEXT_BYTES",
    "Array",
    "Limits",
    "from_memory",
    "open_array",
    "open_regular_file",
    "read_regular_file",
]

EXTENSIONS = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".csv", ".tsv", ".json")
EXPECTED_DTYPES = "float16, bfloat16, float32, float64, integers or bools"
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# Defaults of the limits (issue 14): with them, any file of at most 10 MB is diagnosed in a few
# seconds and well under 512 MB; the "Limits" section of docs/diagnose.rst gives the measurements.
MAX_BYTES = 128 * 2**20
MAX_TEXT_BYTES = 4 * 2**20
MAX_TEXT_NDIM = 32  # nesting deeper than this in JSON is not an array of logits
_READ_STEP = 2**20  # a decompressed .npz member is read into its final buffer this many bytes at a time
# Exceptions numpy.lib.format raises on a malformed .npy header.
_HEADER_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    SyntaxError,
    OverflowError,
    RecursionError,
    EOFError,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class Limits:
    """How much a reader may hold in memory; ``*_flag`` name the options that raise each limit."""

    max_bytes: int = MAX_BYTES
    max_text_bytes: int = MAX_TEXT_BYTES
    bytes_flag: str = "--max-bytes"
    text_flag: str = "--max-text-bytes"


@dataclass(frozen=True)
class Array:
    """One array in a file: its shape, dtype, and windows along ``stream_axis``.

    ``read(start, stop)`` returns ``a[..., start:stop, ...]`` on ``stream_axis``
    as a NumPy array; it may be a memory map, which the caller drops before
    reading the next window. ``streamed`` says whether the data is still on
    disk (a memory map) rather than already in memory.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stream_axis: int
    read: Callable[[int, int], np.ndarray]
    streamed: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def whole(self) -> np.ndarray:
        return self.read(0, self.shape[self.stream_axis])


def from_memory(arr: np.ndarray, name: str) -> Array:
    """An :class:`Array` over an array already in memory (at least 1-d)."""
    return Array(name, tuple(arr.shape), arr.dtype, 0, lambda start, stop: arr[start:stop])


def open_array(
    path: str, key: str | None = None, *, role: str = "logits", what: str = "LOGITS", limits: Limits = Limits()
) -> Array:
    """Open the array ``key`` (or the only or ``role``-named one) in the file ``path``.

    ``what`` is the argument the path came from (``"LOGITS"``, ``"--target"``);
    messages start with it. Raises :class:`InputFileError` for a missing,
    unreadable or non-regular file, an unknown extension, a malformed file,
    data over ``limits``, a refused dtype, or 0-d or empty data.
    """
    label = f"{what} {path}"
    ext = _extension(path, label)
    _check_kind(_stat(path, what, os.stat), path, what)
    arr = _READERS[ext](_File(path, what, limits, label), key, role)
    _check_dtype(arr.dtype, label)
    _check_shape(arr.shape, label)
    return arr


@dataclass(frozen=True)
class _File:
    """What a reader needs: the path, the argument it came from, the limits, and the label
    its messages start with (``"LOGITS x.npz"``, or ``"LOGITS x.npz['logits']"`` for a member)."""

    path: str
    what: str
    limits: Limits
    label: str

    def member(self, name: str) -> _File:
        return _File(self.path, self.what, self.limits, f"{self.label}[{name!r}]")

    def bytes_over(self, n: int, what: str, hint: str = "") -> InputFileError | None:
        """An error when ``n`` bytes of binary data would pass ``max_bytes``; None otherwise."""
        lim = self.limits
        if n <= lim.max_bytes:
            return None
        return _bad(
            self.label,
            f"{what} {n} bytes, over the limit of {lim.max_bytes} bytes held in memory",
            f"at most {lim.max_bytes} bytes (raise it with {lim.bytes_flag} {n}{hint})",
        )


# --------------------------------------------------------------------------
# Opening a file the user named: regular files only, within a byte budget
# --------------------------------------------------------------------------

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: str | os.PathLike[str], *, what: str, max_bytes: int, raise_with: str = "") -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` bytes.

    Parameters
    ----------
    path : str or os.PathLike
        The file the user named; symlinks are followed.
    what : str
        The argument it came from, e.g. ``"--predictions"``: every message starts with it.
    max_bytes : int
        The most bytes read. A larger file is refused without reading it whole.
    raise_with : str, optional
        The option that raises the limit, e.g. ``"--max-file-bytes"``, named in the message.

    Raises
    ------
    InputFileError
        Missing, unreadable, not a regular file (FIFO, device, directory, socket)
        or larger than ``max_bytes``; the message names ``what``, the file and the limit.
    """
    with open_regular_file(path, what=what, max_bytes=max_bytes, raise_with=raise_with) as fp:
        try:
            data = _read_at_most(fp, max_bytes + 1)  # one byte more than allowed tells a file that grew
        except OSError as exc:
            raise InputFileError(
                f"{what} {path}: could not be read ({exc.strerror or exc}); expected a readable regular file."
            ) from None
    if len(data) > max_bytes:
        raise _too_large(path, what, max_bytes, raise_with, f"more than {max_bytes} bytes")
    return data


def _read_at_most(fp: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes, asking first for the size the file reports (``read(limit)`` would
    allocate ``limit`` bytes up front), then a step at a time for a file that reports less."""
    chunks, total = [], 0
    want = min(limit, os.fstat(fp.fileno()).st_size + 1)
    while total < limit:
        chunk = fp.read(min(want, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _READ_STEP
    return b"".join(chunks)


def open_regular_file(
    path: str | os.PathLike[str], *, what: str, max_bytes: int, raise_with: str = ""
) -> io.BufferedReader:
    """``path`` opened for binary reading, once it is known to be a regular file of at most ``max_bytes``.

    The same checks and messages as :func:`read_regular_file`, for readers that
    seek (zip archives, ``torch.load``). Opening uses ``O_NONBLOCK`` so that a
    FIFO swapped in after the check cannot block, and the type is checked
    again on the open descriptor.
    """
    _check_kind(_stat(path, what, os.stat), path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, what, exc) from None
    try:
        info = _stat(fd, what, os.fstat, shown=path)
        _check_kind(info, path, what)
        if info.st_size > max_bytes:
            raise _too_large(path, what, max_bytes, raise_with, f"{info.st_size} bytes")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: blocking reads are the ordinary ones
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _stat(target: Any, what: str, stat_fn: Callable[[Any], os.stat_result], shown: Any = None) -> os.stat_result:
    try:
        return stat_fn(target)
    except OSError as exc:
        raise _os_error(shown if shown is not None else target, what, exc) from None
    except ValueError as exc:  # an embedded NUL byte in the name
        raise InputFileError(f"{what} {target!r}: is not a valid file name ({exc}); expected a path.") from None


def _check_kind(info: os.stat_result, path: Any, what: str) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    raise InputFileError(f"{what} {path}: is {kind}, refused; expected a regular file.")


def _os_error(path: Any, what: str, exc: OSError) -> InputFileError:
    import errno

    reasons: dict[int | None, str] = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.ELOOP: "too many levels of symbolic links",
    }
    reason = reasons.get(exc.errno, exc.strerror or str(exc))
    return InputFileError(f"{what} {path}: {reason}; expected a readable regular file.")


def _too_large(path: Any, what: str, max_bytes: int, raise_with: str, size: str) -> InputFileError:
    hint = f" (raise the limit with {raise_with})" if raise_with else ""
    return InputFileError(
        f"{what} {path}: is {size}, over the limit of {max_bytes} bytes; "
        f"expected a regular file of at most {max_bytes} bytes{hint}."
    )


# --------------------------------------------------------------------------
# Checks shared by every format
# --------------------------------------------------------------------------


def _extension(path: str, label: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        shown = ext or "no extension"
        raise InputFileError(f"{label}: unknown file type ({shown}); expected one of {', '.join(EXTENSIONS)}.")
    return ext


def _check_dtype(dtype: np.dtype, label: str) -> None:
    if dtype.hasobject:
        raise InputFileError(
            f"{label}: holds Python objects (a pickled object array), refused and not unpickled; "
            f"expected numeric data ({EXPECTED_DTYPES})."
        )
    if dtype == BFLOAT16 or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or dtype.kind in "iub":
        return
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None:
        raise InputFileError(
            f"{label}: has raw 2-byte records (dtype {dtype.str}; bfloat16 saved with numpy.save looks like this); "
            f"expected {EXPECTED_DTYPES}: save bfloat16 logits as .safetensors or .pt, or as float32."
        )
    raise InputFileError(f"{label}: has dtype {dtype} ({dtype.str}); expected {EXPECTED_DTYPES}.")


def _check_shape(shape: tuple[int, ...], label: str) -> None:
    if len(shape) == 0:
        raise InputFileError(f"{label}: holds a single number (0-d); expected an array with an axis of classes.")
    if 0 in shape:
        raise InputFileError(
            f"{label}: holds no data (shape {shape}); expected at least one slice of at least one class."
        )


def _bad(label: str, what: str, expected: str) -> InputFileError:
    return InputFileError(f"{label}: {what}; expected {expected}.")


def _pick(label: str, keys: list[str], key: str | None, role: str) -> str:
    """The key to read: ``key`` if given, else the only array, else the one named ``role``."""
    shown = ", ".join(repr(k[:40]) for k in keys[:20]) + (", ..." if len(keys) > 20 else "")
    if key is not None:
        if key not in keys:
            raise _bad(label, f"has no array {key!r}", f"one of {shown or 'no arrays'}")
        return key
    if len(keys) == 1:
        return keys[0]
    if role in keys:
        return role
    if not keys:
        raise _bad(label, "holds no arrays", "at least one array")
    raise _bad(
        label, f"holds {len(keys)} arrays and none is named {role!r}", f"--key or --target-key naming one of {shown}"
    )


def _short(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


# --------------------------------------------------------------------------
# .npy and .npz
# --------------------------------------------------------------------------


def _read_npy_header(fp: Any, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header without reading data; objects are refused by the caller."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except _HEADER_ERRORS as exc:
        raise _bad(label, f"is not a valid .npy array ({_short(exc)})", "a file written by numpy.save") from None
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(label, f"has an invalid shape {shape!r} in its header", "non-negative integer dimensions")
    return tuple(shape), bool(fortran), dtype


def _npy(f: _File, key: str | None, role: str) -> Array:
    if key is not None:
        raise _bad(f.label, f"is a .npy file, which holds one unnamed array, but key {key!r} was given", "no key")
    path = f.path
    with open_regular_file(path, what=f.what, max_bytes=sys.maxsize) as fp:  # streamed: no size limit
        shape, fortran, dtype = _read_npy_header(fp, f.label)
        offset = fp.tell()
        have = os.fstat(fp.fileno()).st_size - offset
    _check_dtype(dtype, f.label)
    _check_shape(shape, f.label)
    need = math.prod(shape) * dtype.itemsize
    if have != need:  # numpy.load ignores extra bytes; here they mean a corrupt or mislabelled file
        state = "is truncated" if have < need else "has extra bytes after the array"
        raise _bad(
            f.label,
            f"{state}: its header promises {need} bytes of data (shape {shape}, {dtype}) but {have} follow",
            "a complete file written by numpy.save",
        )
    axis = len(shape) - 1 if fortran else 0
    read = _memmap_windows(path, offset, shape, dtype, axis, "F" if fortran else "C")
    return Array(path, shape, dtype, axis, read, streamed=True)


def _memmap_windows(
    path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, axis: int, order: Literal["C", "F"]
) -> Callable[[int, int], np.ndarray]:
    """A ``read(start, stop)`` that maps only the window asked for (``shape`` has no zero)."""
    step = math.prod(shape) // shape[axis] * dtype.itemsize

    def read(start: int, stop: int) -> np.ndarray:
        sub = shape[:axis] + (stop - start,) + shape[axis + 1 :]
        return np.memmap(path, dtype=dtype, mode="r", offset=offset + start * step, shape=sub, order=order)

    return read


_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    ValueError,
    struct.error,
    UnicodeDecodeError,
    RuntimeError,
    OverflowError,
)


def _npz(f: _File, key: str | None, role: str) -> Array:
    try:
        with open_regular_file(f.path, what=f.what, max_bytes=sys.maxsize) as raw, zipfile.ZipFile(raw) as zf:
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            name = _pick(f.label, sorted(members), key, role)
            arr = _npz_member(zf, members[name], f.member(name))
    except _ZIP_ERRORS as exc:
        # InputFileError is a ValueError: let it through with its own message
        if isinstance(exc, InputFileError):
            raise
        raise _bad(f.label, f"is not a valid .npz archive ({_short(exc)})", "a file written by numpy.savez") from None
    return from_memory(arr, f.path)


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, f: _File) -> np.ndarray:
    """One member, read into its final buffer: never more than the header promises and the limit allows."""
    with zf.open(info) as fp:
        shape, fortran, dtype = _read_npy_header(fp, f.label)
        _check_dtype(dtype, f.label)
        need = math.prod(shape) * dtype.itemsize
        header = fp.tell()
        if header + need != info.file_size:
            raise _bad(
                f.label,
                f"is corrupt: its header promises {need} bytes (shape {shape}, {dtype}) "
                f"but the member holds {max(info.file_size - header, 0)}",
                "a complete array",
            )
        too_big = f.bytes_over(
            need,
            f"would decompress to (shape {shape}, {dtype})",
            "; or save the array with numpy.save, as .npy, which is read in windows",
        )
        if too_big:
            raise too_big
        buf = np.empty(need, dtype=np.uint8)
        got = _read_into(fp, buf.data)
    if got != need:
        raise _bad(f.label, f"is truncated: {got} of {need} bytes could be read", "a complete array")
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _read_into(fp: Any, view: memoryview) -> int:
    """Fill ``view`` from ``fp`` a step at a time (a single read of everything would hold it twice)."""
    got = 0
    while got < len(view):
        chunk = fp.read(min(_READ_STEP, len(view) - got))
        if not chunk:
            break
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return got


# --------------------------------------------------------------------------
# .safetensors (parsed here: the format is an 8-byte length, JSON, raw data)
# --------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F16": np.dtype("<f2"),
    "BF16": BFLOAT16,
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
_ST_EXPECTED = "a file written by safetensors (8-byte header length, JSON header, data)"


def _safetensors(f: _File, key: str | None, role: str) -> Array:
    lim = f.limits
    with open_regular_file(f.path, what=f.what, max_bytes=sys.maxsize) as fp:  # streamed: no size limit
        size = os.fstat(fp.fileno()).st_size
        head = fp.read(8)
        if len(head) < 8:
            raise _bad(f.label, f"is too short for a .safetensors file ({size} bytes)", _ST_EXPECTED)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _bad(f.label, f"declares a {n}-byte header but holds {size - 8} bytes after the length", _ST_EXPECTED)
        if n > lim.max_text_bytes:  # the header is JSON: parsing it can take many times its size
            raise _bad(
                f.label,
                f"has a {n}-byte JSON header, over the limit of {lim.max_text_bytes} bytes",
                f"a header of at most {lim.max_text_bytes} bytes (raise it with {lim.text_flag} {n})",
            )
        raw = fp.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f.label, f"has a header that is not JSON ({_short(exc)})", _ST_EXPECTED) from None
    if not isinstance(header, dict):
        raise _bad(f.label, "has a header that is not a JSON object", _ST_EXPECTED)
    keys = sorted(k for k in header if k != "__metadata__")
    name = _pick(f.label, keys, key, role)
    shape, dtype, begin = _safetensors_entry(f.label, name, header[name], size - 8 - n)
    _check_shape(shape, f"{f.label}[{name!r}]")
    return Array(f.path, shape, dtype, 0, _memmap_windows(f.path, 8 + n + begin, shape, dtype, 0, "C"), streamed=True)


def _safetensors_entry(label: str, name: str, entry: Any, data_size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    label = f"{label}[{name!r}]"
    if not isinstance(entry, dict):
        raise _bad(label, "has a header entry that is not an object", "{'dtype', 'shape', 'data_offsets'}")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str) or code not in _SAFETENSORS_DTYPES:
        raise _bad(label, f"has dtype {code!r}"[:200], f"one of {', '.join(_SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(label, f"has shape {shape!r}"[:200], "a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _bad(label, f"has data_offsets {offsets!r}"[:200], "[begin, end] integers")
    dtype = _SAFETENSORS_DTYPES[code]
    begin, end = offsets
    need = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end <= data_size or end - begin != need:
        raise _bad(
            label,
            f"has data_offsets {offsets} for {need} bytes (shape {shape}, {code}) in {data_size} bytes of data",
            "offsets inside the file that match the shape (truncated?)",
        )
    return tuple(shape), dtype, begin


# --------------------------------------------------------------------------
# .pt / .pth (torch.load with weights_only=True: never arbitrary unpickling)
# --------------------------------------------------------------------------

_PT_EXPECTED = "a tensor or a dict of tensors saved with torch.save"
_PT_HINT = "; or save the logits as .npy or .safetensors, which are read in windows"


def _torch(f: _File, key: str | None, role: str) -> Array:
    # the file and its archive are checked first: a refused file costs no torch import (seconds)
    with open_regular_file(f.path, what=f.what, max_bytes=f.limits.max_bytes, raise_with=f.limits.bytes_flag) as fp:
        _check_pt_archive(fp, f)
        try:
            import torch
        except ImportError:
            raise _bad(
                f.label, "is a PyTorch file but torch is not installed", "pip install 'stablesoftmax[torch]'"
            ) from None
        try:
            obj = torch.load(fp, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file; each is bad input
            raise _bad(
                f.label, f"could not be read by torch.load(weights_only=True): {_torch_reason(exc)}", _PT_EXPECTED
            ) from None
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, str)]
        name = _pick(f.label, sorted(keys), key, role)
        obj, f = obj[name], f.member(name)
    elif key is not None:
        raise _bad(f.label, f"holds one tensor, but key {key!r} was given", "no key")
    if not isinstance(obj, torch.Tensor):
        raise _bad(f.label, f"holds a {type(obj).__name__}", _PT_EXPECTED)
    return from_memory(_tensor_to_numpy(obj, f), f.path)


def _check_pt_archive(fp: Any, f: _File) -> None:
    """A zip-format ``.pt`` may deflate its storages: refuse one that would decompress past the limit."""
    if not zipfile.is_zipfile(fp):
        fp.seek(0)
        return  # the legacy format stores its data uncompressed: the file size bounds it
    try:
        with zipfile.ZipFile(fp) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except _ZIP_ERRORS:
        total = 0  # a broken archive: torch.load says what is wrong with it
    fp.seek(0)
    too_big = f.bytes_over(total, "is an archive that would decompress to", _PT_HINT)
    if too_big:
        raise too_big


def _torch_reason(exc: BaseException) -> str:
    """The part of a torch.load error that says what was refused (its preamble comes first and is long)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it refers to the global {found.group(1)}, which is not a tensor type and is not loaded"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return _short(found.group(1)) if found else _short(exc)


def _check_layout(t: torch.Tensor, label: str) -> None:
    """Refuse what is not one dense block of numbers: sparse (COO, CSR, CSC, BSR, BSC) and nested tensors.

    Checked first: such a tensor has no dense storage to count or convert, and
    its dtype is fine, so NumPy's complaint about it would name the wrong problem.
    """
    import torch

    if t.layout != torch.strided:
        layout = str(t.layout).removeprefix("torch.")
        raise _bad(label, f"holds a tensor with a sparse layout ({layout})", "a dense tensor: save t.to_dense()")
    if t.is_nested:
        raise _bad(
            label, "holds a nested tensor (slices of different lengths)", "a dense tensor: pad it, or save each slice"
        )


def _tensor_to_numpy(t: torch.Tensor, f: _File) -> np.ndarray:
    import torch

    label = f.label
    _check_layout(t, label)
    if t.is_complex() or (
        t.dtype.is_floating_point and t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    ):
        raise _bad(label, f"has dtype {t.dtype}", EXPECTED_DTYPES)
    claimed = t.numel() * t.element_size()  # a stride-0 tensor claims this much from one stored number
    too_big = f.bytes_over(claimed, f"holds a tensor of shape {tuple(t.shape)} ({t.dtype}), that is", _PT_HINT)
    if too_big:
        raise too_big
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(BFLOAT16)
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:
        raise _bad(label, f"has dtype {t.dtype}, which NumPy cannot hold ({_short(exc)})", EXPECTED_DTYPES) from None


# --------------------------------------------------------------------------
# .csv / .tsv / .json (text; "nan", "inf" and "-inf" are accepted)
# --------------------------------------------------------------------------

_SPECIAL = {
    "nan": math.nan,
    "+nan": math.nan,
    "-nan": math.nan,
    "inf": math.inf,
    "+inf": math.inf,
    "-inf": -math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-infinity": -math.inf,
}
_INT_LINE = re.compile(r"[0-9\s+,-]*")  # integers only (for .tsv the tabs are \s)
_SEPARATORS = {",": "','", "\t": "a tab", ";": "';'", "|": "'|'", " ": "spaces"}


def _text(f: _File) -> str:
    lim = f.limits
    raw = read_regular_file(f.path, what=f.what, max_bytes=lim.max_text_bytes, raise_with=lim.text_flag)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(f.label, f"is not UTF-8 text (byte {exc.start})", "numbers as text") from None


def _number(token: str) -> int | float | None:
    """``token`` as an int or float, or None when it is not a plain number."""
    t = token.strip()
    if "_" in t or not t.isascii():  # Python accepts 1_000 and other scripts' digits; a data file should not
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return _SPECIAL.get(t.lower())


def _delimited(f: _File, key: str | None, role: str) -> Array:
    """A .csv/.tsv table, parsed by NumPy's C reader in pieces of ``_TEXT_PIECE`` characters.

    A piece NumPy cannot read is gone through line by line, only to say which
    line and field is wrong: the Python path costs microseconds a line, so it
    never runs over a whole file.
    """
    if key is not None:
        raise _bad(f.label, f"is a text table, which holds one array, but key {key!r} was given", "no key")
    sep = "\t" if f.path.lower().endswith(".tsv") else ","
    text = _drop_header(f.label, _text(f), sep)
    blocks: list[np.ndarray] = []
    width = None
    for start, piece in _pieces(text):
        block = _load_piece(piece, sep)
        if block is None or (width is not None and block.size and block.shape[1] != width):
            _explain(f.label, piece, text.count("\n", 0, start) + 1, sep, width)
        if block.size:
            width = block.shape[1] if width is None else width
            blocks.append(block)
    if not blocks:
        return from_memory(np.zeros((0,)), f.path)  # refused as "holds no data" by the caller
    ints = all(b.dtype.kind == "i" for b in blocks)
    return from_memory(np.concatenate(blocks) if ints else np.concatenate(blocks, dtype=np.float64), f.path)


_TEXT_PIECE = 2**16
_BLANK_OR_COMMENT = re.compile(r"^[ \t\r\f\v]*(?:#.*)?$", re.M)


def _drop_header(label: str, text: str, sep: str) -> str:
    """``text`` with its first line blanked when every cell of it is a name (its newline stays, so
    line numbers do not move); a first line of numbers split by another separator is refused.

    A header whose first cell is blank is pandas' ``DataFrame.to_csv``: the
    first column holds the row labels (the index), not a class, and is dropped
    from every line too. The other cells must then be names, or pandas' default
    column labels ``0, 1, ...``, so that a data line missing its first number
    is still refused as such.
    """
    found = re.search(r"^[ \t]*[^#\s].*$", text, re.M)
    if found is None:
        return text
    cells = found.group().rstrip("\r").split(sep)
    index_column = _pandas_header(cells)
    if not index_column and not all(_number(c) is None for c in cells):
        return text
    lineno = text.count("\n", 0, found.start()) + 1
    _other_separator(label, lineno, found.group().rstrip("\r"), sep)
    rest = text[found.end() :]
    if index_column:  # the first field of every data line, comments and blank lines left as they are
        rest = re.sub(rf"^(?![ \t\r\f\v]*(?:#|$))[^{sep}\n]*{sep}", "", rest, flags=re.M)
    return text[: found.start()] + rest


def _pandas_header(cells: list[str]) -> bool:
    """Whether a header line is pandas' with an index column: a blank first cell, then column names."""
    names = [c.strip() for c in cells[1:]]
    if len(cells) < 2 or cells[0].strip() or not all(names):
        return False
    return all(_number(n) is None for n in names) or names == [str(i) for i in range(len(names))]


def _pieces(text: str) -> Iterator[tuple[int, str]]:
    """``(offset, piece)`` pairs covering ``text``, each about ``_TEXT_PIECE`` long and ending at a newline."""
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos + _TEXT_PIECE)
        end = len(text) if end < 0 else end + 1
        yield pos, text[pos:end]
        pos = end


def _load_piece(piece: str, sep: str) -> np.ndarray | None:
    """The piece's rows (int64 when every number is an integer), ``(0,)`` when it holds none, None when
    it is not plain ASCII numbers (``_`` too: Python's float() takes 1_000, a data file should not)."""
    body = _BLANK_OR_COMMENT.sub("", piece)
    if not body.strip():
        return np.zeros((0,))
    if "_" in body or not body.isascii():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy warns, instead of failing, on some malformed input
        for dtype in (np.int64, np.float64) if _INT_LINE.fullmatch(body) else (np.float64,):
            try:
                return np.loadtxt(io.StringIO(body), delimiter=sep, dtype=dtype, ndmin=2, comments=None, quotechar=None)
            except (ValueError, OverflowError, UserWarning, DeprecationWarning):
                continue  # an integer past int64 is read again as float64
    return None


def _explain(label: str, piece: str, lineno: int, sep: str, width: int | None) -> NoReturn:
    """Raise the error for the first line of ``piece`` that is not a row of ``width`` numbers."""
    for n, line in enumerate(piece.split("\n"), lineno):
        if _BLANK_OR_COMMENT.fullmatch(line):
            continue
        cells = line.split(sep)
        bad = next((i for i, c in enumerate(cells) if _number(c) is None), None)
        if bad is not None:
            _other_separator(label, n, line, sep)
            if ";" in line:  # a ';' table with decimal commas, '1,5;2,5': say so rather than 'not a number'
                raise _bad(
                    label,
                    f"has ';' in line {n}, as a table with ';' between fields would",
                    f"fields separated by {_SEPARATORS[sep]} and '.' as the decimal point",
                )
            raise _bad(
                label,
                f"line {n}, field {bad + 1} is {cells[bad].strip()[:40]!r}, not a number",
                "numbers, 'nan', 'inf' or '-inf'",
            )
        if width is not None and len(cells) != width:
            raise _bad(
                label,
                f"line {n} has {len(cells)} fields but earlier lines have {width}",
                "a rectangular table (the same number of fields on every line)",
            )
        width = len(cells)
    raise _bad(
        label,
        f"could not be read as a table of numbers near line {lineno}",
        "numbers, 'nan', 'inf' or '-inf', separated by " + _SEPARATORS[sep],
    )


def _other_separator(label: str, lineno: int, line: str, sep: str) -> None:
    """Refuse a line whose numbers are separated by something other than ``sep``, saying which."""
    for other, name in _SEPARATORS.items():
        if other == sep or other not in line:
            continue
        cells = [c for c in line.split(other) if c.strip()] if other == " " else line.split(other)
        if len(cells) > 1 and all(_number(c) is not None for c in cells):
            kind = ".tsv" if sep == "\t" else ".csv"
            raise _bad(
                label,
                f"separates its fields with {name} (line {lineno})",
                f"fields separated by {_SEPARATORS[sep]} in a {kind} file",
            )


def _json(f: _File, key: str | None, role: str) -> Array:
    """A JSON array (or an object of them). The special strings are made JSON's NaN/Infinity before
    parsing, so that NumPy can read the result in C and Python checks only what NumPy refuses."""
    raw = _text(f)
    try:
        try:
            obj, text = _json_loads(raw, careful=False)
        except ValueError:  # perhaps a key spelled like a special value, "nan": [...]; the careful way says
            obj, text = _json_loads(raw, careful=True)
    except (ValueError, RecursionError) as exc:
        raise _bad(
            f.label, f"is not valid JSON ({_short(exc)})", "a nested list of numbers or an object of them"
        ) from None
    label = f.label
    if isinstance(obj, dict):
        name = _pick(label, sorted(obj), key, role)
        obj, label = obj[name], f"{label}[{name!r}]"
    elif key is not None:
        raise _bad(label, f"holds one array, but key {key!r} was given", "no key")
    words = "true" in text or "false" in text or "null" in text  # NumPy would take true as 1: check those
    arr = None if words else _json_numbers(obj)
    if arr is None:
        _json_shape(obj, label, 0)  # raises for what is not a rectangular array of numbers
        arr = _as_array(label, obj)
    return from_memory(arr, f.path)


def _json_loads(text: str, *, careful: bool) -> tuple[Any, str]:
    """Parse ``text`` with the special strings turned into literals: by plain replacement of the usual
    spellings (fast), then by a pattern for the rest (any case, spaces, never an object's key)."""
    if not careful:
        for spelling, literal in _SPECIAL_SPELLINGS:
            text = text.replace(spelling, literal)
    if careful or _SPECIAL_LEFT.search(text):
        for pattern, literal in _SPECIAL_STRINGS:
            text = pattern.sub(literal, text)
    return json.loads(text), text


_SPECIAL_SPELLINGS = [
    (f'"{sign}{word}"', "NaN" if word.lower() == "nan" else f"{'-' if sign == '-' else ''}Infinity")
    for sign in ("", "+", "-")
    for word in ("nan", "NaN", "inf", "Inf", "infinity", "Infinity")
]
_SPECIAL_LEFT = re.compile(r'"\s*[+-]?(?:inf|nan)', re.I)
_SPECIAL_STRINGS = [
    (re.compile(r'(?<!\\)"\s*' + body + r'\s*"(?!\s*:)', re.I), literal)
    for body, literal in ((r"[+-]?nan", "NaN"), (r"-inf(?:inity)?", "-Infinity"), (r"\+?inf(?:inity)?", "Infinity"))
]


def _json_numbers(obj: Any) -> np.ndarray | None:
    """``obj`` as int64 or float64 when NumPy reads it as a rectangular array of numbers; else None.

    Only called when the text holds no ``true``, ``false`` or ``null``, which NumPy would take
    as numbers; strings, ragged lists and huge integers go to the checking path.
    """
    try:
        arr = np.array(obj)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if arr.dtype.kind not in "if" or arr.ndim > MAX_TEXT_NDIM or (arr.dtype.kind == "i" and arr.dtype.itemsize != 8):
        return None
    return arr


def _as_array(label: str, nested: Any) -> np.ndarray:
    """Integers when every value is an int (class indices), else float64; ``nested`` is checked already."""
    flat = _flatten(nested)
    if flat and all(type(v) is int for v in flat):
        try:
            return np.array(nested, dtype=np.int64)
        except OverflowError:
            raise _bad(label, "holds an integer too large for int64", "class indices or logits") from None
    try:
        return np.array(nested, dtype=np.float64)
    except OverflowError:
        raise _bad(label, "holds an integer too large for float64", "logits within float64's range") from None


def _flatten(nested: Any) -> list[Any]:
    out, stack = [], [nested]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            out.append(item)
    return out


def _json_shape(obj: Any, label: str, depth: int) -> tuple[int, ...]:
    """The shape of ``obj``; raises for a leaf that is not a number, a ragged list or deep nesting."""
    if not isinstance(obj, list):
        if type(obj) is not int and type(obj) is not float:  # bool is an int subclass: refused here
            raise _bad(label, f"holds {json.dumps(obj)[:40]}, not a number", "numbers, 'nan', 'inf' or '-inf'")
        return ()
    if depth >= MAX_TEXT_NDIM:  # a list at this depth makes an array of more than MAX_TEXT_NDIM dimensions
        raise _bad(label, f"nests lists deeper than {MAX_TEXT_NDIM} levels", "an array of logits")
    if not obj:
        return (0,)
    if not isinstance(obj[0], list):  # the innermost level, checked in one loop: most of the work is here
        i = next((i for i, v in enumerate(obj) if type(v) is not int and type(v) is not float), None)
        if i is not None:  # an index, not the value: the value may be JSON's null
            bad = obj[i]
            if isinstance(bad, list):
                raise _bad(label, f"is ragged at depth {depth}: its lists have different shapes", "a rectangular array")
            _json_shape(bad, label, depth + 1)
        return (len(obj),)
    shapes = [_json_shape(v, label, depth + 1) for v in obj]
    if any(s != shapes[0] for s in shapes):
        raise _bad(label, f"is ragged at depth {depth}: its lists have different shapes", "a rectangular array")
    return (len(obj),) + shapes[0]


_READERS: dict[str, Callable[[_File, str | None, str], Array]] = {
    ".npy": _npy,
    ".npz": _npz,
    ".safetensors": _safetensors,
    ".pt": _torch,
    ".pth": _torch,
    ".csv": _delimited,
    ".tsv": _delimited,
    ".json": _json,
}
