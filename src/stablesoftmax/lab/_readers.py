"""Readers for the logits files that ``stablesoftmax diagnose`` accepts.

Every reader returns an :class:`Array`: the shape and dtype of one array in
the file and a way to read it in windows along its outermost axis in memory
(axis 0 for C order), so that a ``.npy`` or ``.safetensors`` file larger than
memory is read a few megabytes at a time through :class:`numpy.memmap`.
``.npz``, ``.pt``/``.pth``, ``.csv``/``.tsv`` and ``.json`` are read whole.

Nothing here unpickles: ``.npy`` and ``.npz`` headers are parsed by
:mod:`numpy.lib.format` and object arrays are refused before any data is
read; ``.pt`` goes through ``torch.load(weights_only=True)``. Every problem
with a file is an :class:`~stablesoftmax.InputFileError` whose message names
the file, what is wrong and what is expected.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from .._errors import InputFileError

__all__ = ["EXTENSIONS", "Array", "from_memory", "open_array", "open_regular_file", "read_regular_file"]

EXTENSIONS = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".csv", ".tsv", ".json")
EXPECTED_DTYPES = "float16, bfloat16, float32, float64, integers or bools"
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
MAX_HEADER = 100_000_000  # a safetensors header larger than this is not a real one
MAX_TEXT_NDIM = 32  # nesting deeper than this in JSON is not an array of logits
# Exceptions numpy.lib.format raises on a malformed .npy header.
_HEADER_ERRORS = (ValueError, TypeError, KeyError, SyntaxError, OverflowError, RecursionError, EOFError,
                  UnicodeDecodeError)


@dataclass(frozen=True)
class Array:
    """One array in a file: its shape, dtype, and windows along ``stream_axis``.

    ``read(start, stop)`` returns ``a[..., start:stop, ...]`` on ``stream_axis``
    as a NumPy array; it may be a memory map, which the caller drops before
    reading the next window.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stream_axis: int
    read: Callable[[int, int], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def whole(self) -> np.ndarray:
        return self.read(0, self.shape[self.stream_axis])


def from_memory(arr: np.ndarray, name: str) -> Array:
    """An :class:`Array` over an array already in memory (at least 1-d)."""
    return Array(name, tuple(arr.shape), arr.dtype, 0, lambda start, stop: arr[start:stop])


def open_array(path: str, key: str | None = None, *, role: str = "logits") -> Array:
    """Open the array ``key`` (or the only or ``role``-named one) in the file ``path``.

    Raises :class:`InputFileError` for a missing or unreadable file, an
    unknown extension, a malformed file, a refused dtype, or 0-d or empty data.
    """
    ext = _extension(path)
    _check_readable(path)
    reader = _READERS[ext]
    arr = reader(path, key, role)
    _check_dtype(arr.dtype, path)
    _check_shape(arr.shape, path)
    return arr


# --------------------------------------------------------------------------
# Opening a file the user named: regular files only, within a byte budget
# --------------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


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
            data = fp.read(max_bytes + 1)  # one byte more than allowed tells a file that grew
        except OSError as exc:
            raise InputFileError(f"{what} {path}: could not be read ({exc.strerror or exc}); "
                                 "expected a readable regular file.") from None
    if len(data) > max_bytes:
        raise _too_large(path, what, max_bytes, raise_with, f"more than {max_bytes} bytes")
    return data


def open_regular_file(path: str | os.PathLike[str], *, what: str, max_bytes: int, raise_with: str = ""):
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

    reason = {errno.ENOENT: "no such file", errno.EACCES: "permission denied",
              errno.ENOTDIR: "a part of the path is not a directory",
              errno.ELOOP: "too many levels of symbolic links"}.get(exc.errno, exc.strerror or str(exc))
    return InputFileError(f"{what} {path}: {reason}; expected a readable regular file.")


def _too_large(path: Any, what: str, max_bytes: int, raise_with: str, size: str) -> InputFileError:
    hint = f" (raise the limit with {raise_with})" if raise_with else ""
    return InputFileError(f"{what} {path}: is {size}, over the limit of {max_bytes} bytes; "
                          f"expected a regular file of at most {max_bytes} bytes{hint}.")


# --------------------------------------------------------------------------
# Checks shared by every format
# --------------------------------------------------------------------------


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        shown = ext or "no extension"
        raise InputFileError(f"{path}: unknown file type ({shown}); expected one of {', '.join(EXTENSIONS)}.")
    return ext


def _check_readable(path: str) -> None:
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a directory; expected a logits file ({', '.join(EXTENSIONS)}).")
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such file; expected a logits file ({', '.join(EXTENSIONS)}).")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: permission denied; expected a readable file.")


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if dtype.hasobject:
        raise InputFileError(
            f"{path}: holds Python objects (a pickled object array), refused and not unpickled; "
            f"expected numeric data ({EXPECTED_DTYPES})."
        )
    if dtype == BFLOAT16 or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or dtype.kind in "iub":
        return
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None:
        raise InputFileError(
            f"{path}: has raw 2-byte records (dtype {dtype.str}; bfloat16 saved with numpy.save looks like this); "
            f"expected {EXPECTED_DTYPES}: save bfloat16 logits as .safetensors or .pt, or as float32."
        )
    raise InputFileError(f"{path}: has dtype {dtype} ({dtype.str}); expected {EXPECTED_DTYPES}.")


def _check_shape(shape: tuple[int, ...], path: str) -> None:
    if len(shape) == 0:
        raise InputFileError(f"{path}: holds a single number (0-d); expected an array with an axis of classes.")
    if 0 in shape:
        raise InputFileError(
            f"{path}: holds no data (shape {shape}); expected at least one slice of at least one class.")


def _bad(path: str, what: str, expected: str) -> InputFileError:
    return InputFileError(f"{path}: {what}; expected {expected}.")


def _pick(path: str, keys: list[str], key: str | None, role: str) -> str:
    """The key to read: ``key`` if given, else the only array, else the one named ``role``."""
    shown = ", ".join(repr(k) for k in keys[:20]) + (", ..." if len(keys) > 20 else "")
    if key is not None:
        if key not in keys:
            raise _bad(path, f"has no array {key!r}", f"one of {shown or 'no arrays'}")
        return key
    if len(keys) == 1:
        return keys[0]
    if role in keys:
        return role
    if not keys:
        raise _bad(path, "holds no arrays", "at least one array")
    raise _bad(path, f"holds {len(keys)} arrays and none is named {role!r}",
               f"--key or --target-key naming one of {shown}")


# --------------------------------------------------------------------------
# .npy and .npz
# --------------------------------------------------------------------------


def _read_npy_header(fp: Any, path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
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
        raise _bad(path, f"is not a valid .npy array ({_short(exc)})", "a file written by numpy.save") from None
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(path, f"has an invalid shape {shape!r} in its header", "non-negative integer dimensions")
    return tuple(shape), bool(fortran), dtype


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


def _npy(path: str, key: str | None, role: str) -> Array:
    if key is not None:
        raise _bad(path, f"is a .npy file, which holds one unnamed array, but key {key!r} was given", "no key")
    with open(path, "rb") as fp:
        shape, fortran, dtype = _read_npy_header(fp, path)
        offset = fp.tell()
    _check_dtype(dtype, path)
    _check_shape(shape, path)
    need = math.prod(shape) * dtype.itemsize
    have = os.path.getsize(path) - offset
    if have != need:  # numpy.load ignores extra bytes; here they mean a corrupt or mislabelled file
        what = "is truncated" if have < need else "has extra bytes after the array"
        raise _bad(path, f"{what}: its header promises {need} bytes of data (shape {shape}, {dtype}) "
                   f"but {have} follow", "a complete file written by numpy.save")
    axis = len(shape) - 1 if fortran else 0
    return Array(path, shape, dtype, axis, _memmap_windows(path, offset, shape, dtype, axis, "F" if fortran else "C"))


def _memmap_windows(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, axis: int, order: str):
    """A ``read(start, stop)`` that maps only the window asked for (``shape`` has no zero)."""
    step = math.prod(shape) // shape[axis] * dtype.itemsize

    def read(start: int, stop: int) -> np.ndarray:
        sub = shape[:axis] + (stop - start,) + shape[axis + 1:]
        return np.memmap(path, dtype=dtype, mode="r", offset=offset + start * step, shape=sub, order=order)

    return read


def _npz(path: str, key: str | None, role: str) -> Array:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            name = _pick(path, sorted(members), key, role)
            arr = _npz_member(zf, members[name], f"{path}[{name!r}]")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError,
            struct.error, UnicodeDecodeError, RuntimeError) as exc:
        # InputFileError is a ValueError: let it through with its own message
        if isinstance(exc, InputFileError):
            raise
        raise _bad(path, f"is not a valid .npz archive ({_short(exc)})", "a file written by numpy.savez") from None
    return from_memory(arr, path)


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> np.ndarray:
    with zf.open(info) as fp:
        shape, fortran, dtype = _read_npy_header(fp, label)
        _check_dtype(dtype, label)
        need = math.prod(shape) * dtype.itemsize
        header = fp.tell()
        if header + need != info.file_size:
            raise _bad(label, f"is corrupt: its header promises {need} bytes (shape {shape}, {dtype}) "
                       f"but the member holds {max(info.file_size - header, 0)}", "a complete array")
        data = fp.read(need)
    if len(data) != need:
        raise _bad(label, f"is truncated: {len(data)} of {need} bytes could be read", "a complete array")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


# --------------------------------------------------------------------------
# .safetensors (parsed here: the format is an 8-byte length, JSON, raw data)
# --------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F16": np.dtype("<f2"), "BF16": BFLOAT16, "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
_ST_EXPECTED = "a file written by safetensors (8-byte header length, JSON header, data)"


def _safetensors(path: str, key: str | None, role: str) -> Array:
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        head = fp.read(8)
        if len(head) < 8:
            raise _bad(path, f"is too short for a .safetensors file ({size} bytes)", _ST_EXPECTED)
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER):
            raise _bad(path, f"declares a {n}-byte header but holds {size - 8} bytes after the length", _ST_EXPECTED)
        raw = fp.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, f"has a header that is not JSON ({_short(exc)})", _ST_EXPECTED) from None
    if not isinstance(header, dict):
        raise _bad(path, "has a header that is not a JSON object", _ST_EXPECTED)
    keys = sorted(k for k in header if k != "__metadata__")
    name = _pick(path, keys, key, role)
    shape, dtype, begin = _safetensors_entry(path, name, header[name], size - 8 - n)
    _check_shape(shape, f"{path}[{name!r}]")
    return Array(path, shape, dtype, 0, _memmap_windows(path, 8 + n + begin, shape, dtype, 0, "C"))


def _safetensors_entry(path: str, name: str, entry: Any, data_size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    label = f"{path}[{name!r}]"
    if not isinstance(entry, dict):
        raise _bad(label, "has a header entry that is not an object", "{'dtype', 'shape', 'data_offsets'}")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str) or code not in _SAFETENSORS_DTYPES:
        raise _bad(label, f"has dtype {code!r}", f"one of {', '.join(_SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(label, f"has shape {shape!r}", "a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _bad(label, f"has data_offsets {offsets!r}", "[begin, end] integers")
    dtype = _SAFETENSORS_DTYPES[code]
    begin, end = offsets
    need = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end <= data_size or end - begin != need:
        raise _bad(label, f"has data_offsets {offsets} for {need} bytes (shape {shape}, {code}) "
                   f"in {data_size} bytes of data", "offsets inside the file that match the shape (truncated?)")
    return tuple(shape), dtype, begin


# --------------------------------------------------------------------------
# .pt / .pth (torch.load with weights_only=True: never arbitrary unpickling)
# --------------------------------------------------------------------------


def _torch(path: str, key: str | None, role: str) -> Array:
    try:
        import torch
    except ImportError:
        raise _bad(path, "is a PyTorch file but torch is not installed", "pip install 'stablesoftmax[torch]'") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file; each is bad input
        raise _bad(path, f"could not be read by torch.load(weights_only=True) ({_short(exc)})",
                   "a tensor or a dict of tensors saved with torch.save") from None
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, str)]
        name = _pick(path, sorted(keys), key, role)
        obj, path = obj[name], f"{path}[{name!r}]"
    elif key is not None:
        raise _bad(path, f"holds one tensor, but key {key!r} was given", "no key")
    if not isinstance(obj, torch.Tensor):
        raise _bad(path, f"holds a {type(obj).__name__}", "a tensor or a dict of tensors")
    return from_memory(_tensor_to_numpy(obj, path), path)


def _tensor_to_numpy(t: Any, path: str) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.detach().contiguous().view(torch.int16).numpy().view(BFLOAT16)
    t = t.detach()
    if t.is_complex() or (t.dtype.is_floating_point and t.dtype not in (torch.float16, torch.float32, torch.float64)):
        raise _bad(path, f"has dtype {t.dtype}", EXPECTED_DTYPES)
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:
        raise _bad(path, f"has dtype {t.dtype}, which NumPy cannot hold ({_short(exc)})", EXPECTED_DTYPES) from None


# --------------------------------------------------------------------------
# .csv / .tsv / .json (text; "nan", "inf" and "-inf" are accepted)
# --------------------------------------------------------------------------

_SPECIAL = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
            "-inf": -math.inf, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def _text(path: str) -> str:
    with open(path, "rb") as fp:
        raw = fp.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(path, f"is not UTF-8 text (byte {exc.start})", "numbers as text") from None


def _number(token: str) -> int | float | None:
    """``token`` as an int or float, or None when it is not a plain number."""
    t = token.strip()
    if "_" in t:  # Python accepts 1_000; a data file should not
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return _SPECIAL.get(t.lower())


def _delimited(path: str, key: str | None, role: str) -> Array:
    if key is not None:
        raise _bad(path, f"is a text table, which holds one array, but key {key!r} was given", "no key")
    sep = "\t" if path.lower().endswith(".tsv") else ","
    rows, width, first = [], None, True
    for lineno, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = line.split(sep)
        values = [_number(c) for c in cells]
        if first and all(v is None for v in values):
            first = False  # a header row: every cell is a name
            continue
        first = False
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise _bad(path, f"line {lineno} has {len(values)} fields but earlier lines have {width}",
                       "a rectangular table (the same number of fields on every line)")
        bad = next((i for i, v in enumerate(values) if v is None), None)
        if bad is not None:
            raise _bad(path, f"line {lineno}, field {bad + 1} is {cells[bad].strip()[:40]!r}, not a number",
                       "numbers, 'nan', 'inf' or '-inf'")
        rows.append(values)
    return from_memory(_as_array(path, rows), path)


def _as_array(path: str, nested: list) -> np.ndarray:
    """Integers when every value is an int (class indices), else float64."""
    flat = _flatten(nested)
    if flat and all(type(v) is int for v in flat):
        try:
            return np.array(nested, dtype=np.int64)
        except OverflowError:
            raise _bad(path, "holds an integer too large for int64", "class indices or logits") from None
    try:
        return np.array(nested, dtype=np.float64)
    except OverflowError:
        raise _bad(path, "holds an integer too large for float64", "logits within float64's range") from None


def _flatten(nested: Any) -> list:
    out, stack = [], [nested]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            out.append(item)
    return out


def _json(path: str, key: str | None, role: str) -> Array:
    text = _text(path)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"is not valid JSON ({_short(exc)})",
                   "a nested list of numbers or an object of them") from None
    if isinstance(obj, dict):
        name = _pick(path, sorted(obj), key, role)
        obj, path = obj[name], f"{path}[{name!r}]"
    elif key is not None:
        raise _bad(path, f"holds one array, but key {key!r} was given", "no key")
    return from_memory(_as_array(path, _json_values(obj, path)), path)


def _json_values(obj: Any, path: str) -> Any:
    """``obj`` with the special strings turned into floats, checked rectangular and numeric."""
    _json_shape(obj, path, 0)

    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(v) for v in item]
        if isinstance(item, str):
            return _SPECIAL[item.strip().lower()]
        return item

    return convert(obj)


def _json_shape(obj: Any, path: str, depth: int) -> tuple[int, ...]:
    if depth > MAX_TEXT_NDIM:
        raise _bad(path, f"nests lists deeper than {MAX_TEXT_NDIM} levels", "an array of logits")
    if not isinstance(obj, list):
        ok = (isinstance(obj, (int, float)) and not isinstance(obj, bool)) or (
            isinstance(obj, str) and obj.strip().lower() in _SPECIAL)
        if not ok:
            raise _bad(path, f"holds {json.dumps(obj)[:40]}, not a number", "numbers, 'nan', 'inf' or '-inf'")
        return ()
    if not obj:
        return (0,)
    shapes = [_json_shape(v, path, depth + 1) for v in obj]
    if any(s != shapes[0] for s in shapes):
        raise _bad(path, f"is ragged at depth {depth}: its lists have different shapes", "a rectangular array")
    return (len(obj),) + shapes[0]


_READERS = {
    ".npy": _npy, ".npz": _npz, ".safetensors": _safetensors, ".pt": _torch, ".pth": _torch,
    ".csv": _delimited, ".tsv": _delimited, ".json": _json,
}
