"""Triton kernels for rows of torch tensors: the two functions of :mod:`._kernels`, on the device.

:func:`state_rows` and :func:`cross_entropy_rows` compute what their
namesakes in :mod:`stablesoftmax._kernels` compute (the per-row state
``(m, k, s)`` of :mod:`stablesoftmax._state`, the softmax or log-softmax,
the cross-entropy parts and gradient), with the same special rows, for
2-D row-contiguous torch tensors of float16, bfloat16, float32 or float64
on any device Triton compiles for, and for CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, which runs the same kernel code through
NumPy: what the tests check is what the device computes).

Design
------
* One program per row. The forward kernel reads each logit once: it sweeps
  the row in blocks of up to 4096 and keeps the state online. A block whose
  max ``b`` is above the running max ``m`` moves the state to ``M = b``: the
  sum so far and its compensation are multiplied by ``f = exp(m - M)`` and
  ``f`` itself (the old max's term) is added; the block's first max is left
  out, its term being exactly 1. Block sums are added with Neumaier's
  compensated addition. A row of at most 4096 is one block: no rescaling,
  and the softmax or log-softmax is written by the same launch from the
  terms and shifts still in registers (one read, one write, one ``exp`` per
  logit; the log-softmax's ``log1p(s)`` by fdlibm's method, within 1 ulp).
* The outputs of longer rows and the cross-entropy gradient read the row
  once more and write once: a second launch, given the state. Per-row
  finishes there (``log1p(s)``, the loss) are torch float64 on ``[N]``
  vectors. A call makes at most two Triton launches (and a few torch
  operations on ``[N]`` vectors); none synchronises with the host or
  branches on tensor values. The smoothing ``a`` reaches the gradient
  kernel as a float64 tensor: a Python float argument would be float32.
* 16-bit and float32 input is loaded as stored and widened in registers
  (never copied wider in memory); all work is float64, where ``x - m`` of
  such values is exact wherever its term matters. For float64 input the
  TwoSum error ``e`` of ``x - m`` is carried into each term as ``t + t e``
  and into the log-softmax.
* ``exp`` is plain arithmetic, copied from :mod:`._kernels`: ``d = n ln2 +
  r`` with ``n`` from the 1.5 * 2**52 shifter, a Chebyshev polynomial on
  ``|r| <= ln2/2`` and ``2**n`` built from integer bits (``tl`` bitcasts).
  NVIDIA's float32 ``tl.exp`` is an approximate ``ex2``, libdevice does not
  run under the interpreter and the interpreter's ``tl.exp`` is NumPy's:
  this one computes the same on both, to the last bits (the device
  contracts ``a * b + c`` to an FMA, as numba does; the interpreter does
  not). Narrower input uses the degree-9 polynomial and one-constant
  reduction (relative error 4.1e-14), float64 input the two-constant
  Cody-Waite reduction and the degree-11 form (within 1.002 ulp, subnormal
  results scaled once).
* Rows whose max is not finite follow the contract of :mod:`._state`: the
  sweep counts the ``+inf`` entries and finds the first NaN and the first
  ``+inf`` (the online max sees both as ``-inf``), and the row's ``(m, k,
  s)`` is chosen at its end. Outputs use the state's shift rule (``x - m``
  is 0 where ``x == m``, ``-inf`` where ``x`` or ``m`` is ``-inf``), so
  special rows need no table. A masked entry is a ``-inf`` entry.
* Output to 16-bit is rounded once from float64: to float32 by round-to-odd
  (the float32 bits moved one step toward the exact value when the float32
  result is inexact and even), then to nearest even (Boldo & Melquiond,
  IEEE TC 2008). bfloat16 is rounded from those bits in integers: the
  interpreter of Triton 3.9 truncates float32 to bfloat16 (and widens
  bfloat16 to float64 as an integer, so input is widened through float32).
* Eight warps for blocks of 1024 or more: compiled for sm_90, a float64
  block of 4096 spills to the stack with four warps and not with eight.

Error bound
-----------
With ``u = 2**-53`` and every term positive, so that relative errors add:
a term ``exp(x_i - m)`` is within ``2.0 u`` (float64 input) or 4.1e-14
(narrower input) of its value; a block of ``B`` terms is summed by each of
``32 w`` threads in sequence and then in a tree (``w`` warps), within
``(B / 32w + log2(32w)) u``, 24 u for ``B = 4096``, ``w = 8`` (NumPy's
pairwise sum under the interpreter: ``log2(B) u``); Neumaier's sum of the
block sums adds ``2 u``; each rise of the running max scales what was summed
before by ``f`` (``2.0 u``) in one rounding (``u``), ``r <= ceil(K / 4096) - 1``
times. So ``s`` is within ``(28 + 3 r) u`` relative for float64 input,
``r = 0`` for rows of one block; ``log1p(s)`` then carries at most that error
times ``s / (1 + s)``, absolute. A 16-bit or float32 result is rounded once
from a float64 value within 1e-13 relative of the exact one: correctly,
unless the exact value lies that close to a rounding midpoint. In float64
the bound is a worst case (every rounding in one direction); over the
project's accuracy battery the results are within its float64 ulp goals.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .._errors import ArgumentError, DtypeError, ShapeError
from ._coefficients import EXP_NARROW, EXP_WIDE, LN2, LN2_HI, LN2_LO, LOG2E, SHIFTER, TWO_M64

try:
    import torch
    import triton
    import triton.language as tl
except ImportError:  # triton is an optional dependency (extra "gpu")
    triton = None

__all__ = ["available", "state_rows", "cross_entropy_rows", "CrossEntropyRows", "block_gradient_rows"]

# Logits per block: a row of at most this many is one block (no rescaling, the output in the same launch).
_MAX_BLOCK = 4096


def available() -> bool:
    """True when triton imports and kernels can run: a CUDA/ROCm/XPU device, or ``TRITON_INTERPRET=1``."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (xpu is not None and xpu.is_available()))


# --------------------------------------------------------------------------
# The state, and the softmax or log-softmax
# --------------------------------------------------------------------------


def state_rows(x: Any, /, *, where: Any = None, out: Any = None, log: bool = False) -> tuple[Any, Any, Any]:
    """The state ``(m, k, s)`` of each row of ``x``; with ``out``, its softmax (or log-softmax) too.

    Parameters
    ----------
    x : torch.Tensor, shape ``[N, K]``, float16, bfloat16, float32 or float64, rows contiguous
    where : torch.Tensor of bool, shape ``[N, K]``, rows contiguous, optional
        False entries count as ``-inf``, whatever they hold (NaN included).
    out : torch.Tensor, shape ``[N, K]``, float64 or ``x``'s dtype, rows contiguous, optional
        Receives ``softmax`` (``log=False``) or ``log_softmax`` (``log=True``)
        of every row, special rows included, rounded once.
    log : bool, default False

    Returns
    -------
    m : float64 ``[N]``
    k : int64 ``[N]``
        First index of the max (of the first NaN in a NaN row); 0 for a row
        without mass; -1 when ``K = 0``.
    s : float64 ``[N]``
        ``sum_{i != k} exp(x_i - m)``; a row with ``+inf`` has ``m = +inf``
        and ``s`` its number of ``+inf`` less one; a row without mass
        ``m = -inf, s = 0``; a NaN row ``m = s = NaN``.

    Notes
    -----
    Rows of at most 4096 logits make one launch, which reads each logit once
    and writes ``out`` from registers; longer rows take a second launch for
    ``out``, which reads the row again.

    Examples
    --------
    >>> x = torch.tensor([[1000.0, 0.0, -1000.0]])
    >>> m, k, s = state_rows(x)  # doctest: +SKIP
    >>> float(m[0] + torch.log1p(s[0]))  # doctest: +SKIP
    1000.0
    """
    x = _check_rows(x)
    where = _check_where(x, where)
    out = None if out is None else _check_out(x, out, "out")
    n, width = x.shape
    m = torch.empty(n, dtype=torch.float64, device=x.device)
    k = torch.empty(n, dtype=torch.int64, device=x.device)
    s = torch.empty(n, dtype=torch.float64, device=x.device)
    if width == 0 or n == 0:
        m.fill_(float("-inf"))
        k.fill_(-1)
        s.fill_(0.0)
        return m, k, s
    block = _block(width)
    fused = out is not None and width <= block
    _launch(
        _forward_kernel,
        n,
        x, _or(where, x), _or(out, x), m, k, s, x, x, x, x, x, x,  # the cross-entropy slots unused
        width, x.stride(0), _stride(where), _stride(out),
        HAS_WHERE=where is not None, WIDE=x.dtype == torch.float64, BLOCK=block, ONE_BLOCK=width <= block,
        WRITE_OUT=fused, LOG=log, OUT_KIND=_out_kind(out), CE=False, SMOOTH=False, HAS_WEIGHT=False,
    )  # fmt: skip
    if out is not None and not fused:
        lg = torch.log1p(s) if log else s
        _launch(
            _write_kernel,
            n,
            x, _or(where, x), out, m, s, lg, width, x.stride(0), _stride(where), out.stride(0),
            HAS_WHERE=where is not None, WIDE=x.dtype == torch.float64, BLOCK=block,
            LOG=log, OUT_KIND=_out_kind(out),
        )  # fmt: skip
    return m, k, s


# --------------------------------------------------------------------------
# Cross-entropy: the loss parts, and the gradient in one more sweep
# --------------------------------------------------------------------------


class CrossEntropyRows(NamedTuple):
    """What :func:`cross_entropy_rows` returns, per row (all ``[N]`` torch tensors).

    ``m, k, s`` are the state of :func:`state_rows`. ``x_target`` is
    ``x[n, target[n]]`` as float64 (``-inf`` where that entry is masked, NaN
    where the target is out of range). With label smoothing, ``shift_sum``
    is ``sum_c w_c (x_c - m)`` over the allowed classes (the TwoSum errors
    of float64 input included; ``-inf`` when an allowed logit is ``-inf``;
    on a row whose max is ``+inf``, ``-inf`` unless every allowed entry is
    ``+inf``, by the state's shift rule; 0 on a row without mass), ``allowed``
    their number (int64) and ``weight_sum`` their ``sum_c w_c``; without
    smoothing these three are 0.
    """

    m: Any
    k: Any
    s: Any
    x_target: Any
    shift_sum: Any
    allowed: Any
    weight_sum: Any


def cross_entropy_rows(
    x: Any,
    target: Any,
    /,
    *,
    where: Any = None,
    weight: Any = None,
    label_smoothing: float = 0.0,
    grad: Any = None,
    g: Any = None,
    z_grad: Any = None,
    parts: CrossEntropyRows | None = None,
) -> CrossEntropyRows:
    r"""Cross-entropy loss parts of each row and, with ``grad``, its gradient: one read, or two with ``grad``.

    With ``a`` the smoothing, ``K_n`` the allowed classes, ``W_n = sum w_c``
    over them, ``L = log1p(s)``, ``d_y = x_y - m``, ``D = shift_sum``, the loss
    is

    .. math:: \ell_n = (1 - a) w_y (L - d_y) + \frac{a}{K_n} (W_n L - D)

    The gradient row written into ``grad`` is ``g_n (A p_c - a_c) + z_n lse_n
    p_c`` with ``a_c = (1 - a) w_y [c = y] + (a / K_n) w_c`` and ``A = sum_c
    a_c``; at the max ``k`` it is ``((A - a_k) - a_k s) / (1 + s)``, which
    does not cancel when ``p_k`` rounds to 1.

    Parameters
    ----------
    x : torch.Tensor ``[N, C]``, float16, bfloat16, float32 or float64, rows contiguous, ``C >= 1``
    target : torch.Tensor ``[N]`` of integers in ``[0, C)``
        Not checked on the device (that would synchronise): an index out of
        range reads nothing and gives ``x_target = NaN``. Map ignored
        elements to any valid class and give them ``g = 0``.
    where : torch.Tensor of bool ``[N, C]``, optional
    weight : torch.Tensor ``[C]``, optional
        Class weights (1 when None), read as float64.
    label_smoothing : float in [0, 1]
    grad : torch.Tensor ``[N, C]``, float64 or ``x``'s dtype, rows contiguous, optional
        Receives the gradient, rounded once. Masked entries and ``+-inf``
        logits get 0, rows whose max is ``+-inf`` get 0, NaN rows NaN
        (whatever ``g``: the caller zeroes rows that are not live).
    g : torch.Tensor ``[N]``
        Required with ``grad``: each row's cotangent times the reduction's
        factor, not including ``w_y``; read as float64.
    z_grad : torch.Tensor ``[N]``, optional
        The z-loss term's factor ``2 z g_z``; the gradient gains ``z_grad lse p``.
    parts : CrossEntropyRows, optional
        With ``grad``: these rows' parts, as a call with the same ``x``,
        ``target``, ``where``, ``weight`` and smoothing gave them. The parts'
        launch is skipped and they are returned: the gradient costs one read.

    Returns
    -------
    CrossEntropyRows

    Examples
    --------
    >>> x = torch.tensor([[2.0, 0.0, -1.0]])
    >>> r = cross_entropy_rows(x, torch.tensor([1]))  # doctest: +SKIP
    >>> float(r.m[0] + torch.log1p(r.s[0]) - r.x_target[0])  # the loss  # doctest: +SKIP
    2.1698...
    """
    x = _check_rows(x)
    where = _check_where(x, where)
    n, width = x.shape
    if width == 0:
        raise ShapeError(f"x has shape {tuple(x.shape)}; cross_entropy_rows needs at least one class.")
    y, w, alpha = _check_ce(x, target, weight, label_smoothing)
    if grad is not None:
        grad, g, z_grad = _check_grad(x, grad, g, z_grad)
    known = parts is not None and grad is not None
    if parts is None or grad is None:
        parts = _ce_parts(n, x.device)
    if n == 0:
        return parts
    block = _block(width)
    smooth = alpha > 0.0
    if not known:
        _forward_parts(x, where, y, w, parts, block, smooth)
    if grad is not None:
        lse = parts.m + torch.log1p(parts.s)
        _launch(
            _grad_kernel,
            n,
            x, _or(where, x), grad, parts.m, parts.k, parts.s, lse, y, _or(w, x), parts.x_target,
            parts.allowed, parts.weight_sum, g, _or(z_grad, g),
            # A Python float would reach the compiled kernel as float32 (the interpreter keeps float64).
            torch.full((1,), alpha, dtype=torch.float64, device=x.device),
            width, x.stride(0), _stride(where), grad.stride(0),
            HAS_WHERE=where is not None, WIDE=x.dtype == torch.float64, BLOCK=block,
            HAS_WEIGHT=w is not None, HAS_Z=z_grad is not None, OUT_KIND=_out_kind(grad),
        )  # fmt: skip
    if smooth and not known:
        _top_rows_shift_sum(parts)
    return parts


def _forward_parts(x: Any, where: Any, y: Any, w: Any, parts: CrossEntropyRows, block: int, smooth: bool) -> None:
    """The launch that writes each row's parts into ``parts``: one read of the logits."""
    n, width = x.shape
    _launch(
        _forward_kernel,
        n,
        x, _or(where, x), x, parts.m, parts.k, parts.s, y, _or(w, x), parts.x_target, parts.shift_sum,
        parts.allowed, parts.weight_sum,
        width, x.stride(0), _stride(where), 0,
        HAS_WHERE=where is not None, WIDE=x.dtype == torch.float64, BLOCK=block, ONE_BLOCK=width <= block,
        WRITE_OUT=False, LOG=False, OUT_KIND=0, CE=True, SMOOTH=smooth, HAS_WEIGHT=w is not None,
    )  # fmt: skip


def block_gradient_rows(
    x: Any,
    first: int,
    m: Any,
    k: Any,
    s: Any,
    target: Any,
    alive: Any,
    big_a: Any,
    g: Any,
    z_coef: Any,
    smooth: Any,
    hot: float,
    *,
    weight: Any = None,
    softcap: float | None = None,
    out: Any,
) -> None:
    r"""The cross-entropy gradient of the block ``x`` of classes ``first : first + K``, from the rows' whole state.

    The contract of :func:`stablesoftmax._kernels.cpu.block_gradient_rows`,
    in one launch (one read of ``x``, one write of ``out``): the per-row
    vectors are read as float64 (``k``, ``target`` as int64, ``alive`` as
    bool) on ``x``'s device; ``hot`` and ``softcap`` reach the kernel as
    float64 tensors. ``out`` may be ``x`` itself: each block of a row is read before it is written.
    """
    x = _check_rows(x)
    out = _check_out(x, out, "out")
    n, width = x.shape
    if n == 0 or width == 0:
        return
    f64 = [_row_vector(a, n, name, torch.float64, x.device) for a, name in ((m, "m"), (s, "s"), (big_a, "big_a"))]
    f64 += [_row_vector(a, n, name, torch.float64, x.device) for a, name in ((g, "g"), (z_coef, "z_coef"))]
    f64 += [_row_vector(smooth, n, "smooth", torch.float64, x.device)]
    k = _row_vector(k, n, "k", torch.int64, x.device)
    y = _row_vector(target, n, "target", torch.int64, x.device)
    live = _row_vector(alive, n, "alive", torch.bool, x.device)
    w = None if weight is None else _row_vector(weight, width, "weight", torch.float64, x.device)
    scalars = torch.tensor([hot, torch.inf if softcap is None else softcap], dtype=torch.float64, device=x.device)
    _launch(
        _block_grad_kernel,
        n,
        x, out, f64[0], k, f64[1], y, live, f64[2], f64[3], f64[4], f64[5], scalars, _or(w, x),
        first, width, x.stride(0), out.stride(0),
        WIDE=x.dtype == torch.float64, BLOCK=_block(width), HAS_WEIGHT=w is not None, OUT_KIND=_out_kind(out),
    )  # fmt: skip


def _top_rows_shift_sum(parts: CrossEntropyRows) -> None:
    """``sum_c w_c (x_c - m)`` on rows whose max is ``+inf``, by the shift rule, in place and with no sync.

    There every allowed finite entry's shift is ``-inf``, so the sum is
    ``-inf`` unless every allowed entry is ``+inf``: that is when the state's
    count of the other ``+inf`` entries, ``s``, is one less than the allowed.
    """
    top = parts.m == torch.inf
    all_inf = parts.s + 1 == parts.allowed
    fixed = torch.where(all_inf, torch.zeros_like(parts.s), torch.full_like(parts.s, -torch.inf))
    parts.shift_sum.copy_(torch.where(top, fixed, parts.shift_sum))


def _ce_parts(n: int, device: Any) -> CrossEntropyRows:
    f64 = {"dtype": torch.float64, "device": device}
    return CrossEntropyRows(
        torch.empty(n, **f64),
        torch.empty(n, dtype=torch.int64, device=device),
        torch.empty(n, **f64),
        torch.empty(n, **f64),
        torch.zeros(n, **f64),
        torch.zeros(n, dtype=torch.int64, device=device),
        torch.zeros(n, **f64),
    )


# --------------------------------------------------------------------------
# Argument checks (shapes, dtypes, layouts: nothing that reads a value on the device)
# --------------------------------------------------------------------------

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _check_rows(x: Any) -> Any:
    if triton is None:
        raise RuntimeError("stablesoftmax's Triton kernels need triton (pip install 'stablesoftmax[gpu]').")
    if not (isinstance(x, torch.Tensor) and str(x.dtype).removeprefix("torch.") in _FLOATS):
        raise DtypeError(
            f"x is {type(x).__name__} of dtype {getattr(x, 'dtype', None)}; "
            "Triton kernels take float16, bfloat16, float32 or float64 torch tensors."
        )
    if x.ndim != 2 or (x.numel() > 0 and x.shape[1] > 1 and x.stride(1) != 1):
        raise ShapeError(
            f"x has shape {tuple(x.shape)} and strides {x.stride()}; Triton kernels take 2-D rows with unit stride."
        )
    return x


def _check_where(x: Any, where: Any) -> Any:
    if where is None:
        return None
    if not (isinstance(where, torch.Tensor) and where.dtype == torch.bool):
        raise DtypeError(f"where has dtype {getattr(where, 'dtype', None)}; Triton kernels take a bool tensor.")
    _check_layout(x, where, "where")
    return where


def _check_out(x: Any, out: Any, name: str) -> Any:
    if not isinstance(out, torch.Tensor):
        raise DtypeError(f"{name} is {type(out).__name__}; it must be a torch tensor.")
    _check_layout(x, out, name)
    if out.dtype not in (torch.float64, x.dtype):
        raise DtypeError(f"{name} has dtype {out.dtype}; allowed: float64 or x's dtype {x.dtype}.")
    return out


def _check_layout(x: Any, a: Any, name: str) -> None:
    if a.shape != x.shape or a.device != x.device or (a.numel() > 0 and a.shape[1] > 1 and a.stride(1) != 1):
        raise ShapeError(
            f"{name} has shape {tuple(a.shape)} on {a.device} with strides {a.stride()}; "
            f"it must have x's shape {tuple(x.shape)} on {x.device}, rows with unit stride."
        )


def _row_vector(a: Any, n: int, name: str, dtype: Any, device: Any) -> Any:
    if not isinstance(a, torch.Tensor):
        raise DtypeError(f"{name} is {type(a).__name__}; it must be a torch tensor.")
    if tuple(a.shape) != (n,) or a.device != device:
        raise ShapeError(f"{name} has shape {tuple(a.shape)} on {a.device}; it must be ({n},) on {device}.")
    return a.to(dtype).contiguous()  # no copy when it is already so


def _check_ce(x: Any, target: Any, weight: Any, alpha: Any) -> tuple[Any, Any, float]:
    n, c = x.shape
    if isinstance(target, torch.Tensor) and (target.dtype.is_floating_point or target.dtype == torch.bool):
        raise DtypeError(f"target has dtype {target.dtype}; class indices must be integers.")
    y = _row_vector(target, n, "target", torch.int64, x.device)
    w = None if weight is None else _row_vector(weight, c, "weight", torch.float64, x.device)
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
        raise ArgumentError(f"label_smoothing={alpha!r}; it must be a float in [0, 1].")
    return y, w, float(alpha)


def _check_grad(x: Any, grad: Any, g: Any, z_grad: Any) -> tuple[Any, Any, Any]:
    grad = _check_out(x, grad, "grad")
    if g is None:
        raise ArgumentError("g is None; a gradient needs each row's cotangent g.")
    n = x.shape[0]
    g = _row_vector(g, n, "g", torch.float64, x.device)
    z_grad = None if z_grad is None else _row_vector(z_grad, n, "z_grad", torch.float64, x.device)
    return grad, g, z_grad


def _launch(kernel: Any, n: int, *args: Any, **flags: Any) -> None:
    """``kernel`` on one program per row.

    Eight warps for a block of 1024 or more: compiled for sm_90 with four, a
    float64 block of 4096 spills to the stack; with eight nothing spills.
    ``a * b + c`` is contracted to an FMA, as in the numba kernels (asked
    for explicitly: Triton 3.9 warns when it is left to its default). Under
    the interpreter NumPy would warn where IEEE arithmetic is meant (``inf -
    inf`` in a TwoSum whose result is then set aside); the device does not.
    """
    options = {"num_warps": 8 if flags["BLOCK"] >= 1024 else 4, "enable_fp_fusion": True}
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        import numpy as np

        with np.errstate(all="ignore"):
            kernel[(n,)](*args, **flags, **options)
    else:
        kernel[(n,)](*args, **flags, **options)


def _block(width: int) -> int:
    return int(min(triton.next_power_of_2(width), _MAX_BLOCK))


def _or(a: Any, b: Any) -> Any:
    """``a``, or ``b`` standing in for an absent pointer (its kernel flag says it is not read)."""
    return b if a is None else a


def _stride(a: Any) -> int:
    return 0 if a is None else int(a.stride(0))


def _out_kind(out: Any) -> int:
    """How an output is rounded: 0 by its cast (float32, float64), 1 float16, 2 bfloat16 (see ``_round_out``)."""
    if out is None or out.dtype in (torch.float32, torch.float64):
        return 0
    return 1 if out.dtype == torch.float16 else 2


# --------------------------------------------------------------------------
# The device code
# --------------------------------------------------------------------------

if triton is not None:
    # The constants of the CPU kernels' exp (see _coefficients), as Triton compile-time constants.
    _LOG2E, _SHIFTER, _LN2 = tl.constexpr(LOG2E), tl.constexpr(SHIFTER), tl.constexpr(LN2)
    _LN2_HI, _LN2_LO, _TWO_M64 = tl.constexpr(LN2_HI), tl.constexpr(LN2_LO), tl.constexpr(TWO_M64)
    _F0, _F1, _F2, _F3, _F4, _F5, _F6, _F7, _F8, _F9 = (tl.constexpr(v) for v in EXP_NARROW)
    _Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9 = (tl.constexpr(v) for v in EXP_WIDE)
    # log1p (fdlibm): ln 2 in two parts, the first with 32 bits, and the coefficients of its polynomial.
    _LN2_HI_LOG = tl.constexpr(6.93147180369123816490e-01)
    _LN2_LO_LOG = tl.constexpr(1.90821492927058770002e-10)
    _LG1 = tl.constexpr(6.666666666666735130e-01)
    _LG2 = tl.constexpr(3.999999999940941908e-01)
    _LG3 = tl.constexpr(2.857142874366239149e-01)
    _LG4 = tl.constexpr(2.222219843214978396e-01)
    _LG5 = tl.constexpr(1.818357216161805012e-01)
    _LG6 = tl.constexpr(1.531383769920937332e-01)
    _LG7 = tl.constexpr(1.479819860511658591e-01)

    @triton.jit
    def _exp_narrow(d):
        """exp(d) of float64 ``d <= 0`` to 4.1e-14 relative, for 16-bit and float32 work; 0 below -708.4."""
        d = tl.where(d < -709.0, -709.0, d)  # the exponent field of 2**n is then 0: a term of +0.0
        z = d * _LOG2E + _SHIFTER
        nf = z - _SHIFTER
        r = d - nf * _LN2
        p = _F9 * r + _F8
        p = p * r + _F7
        p = p * r + _F6
        p = p * r + _F5
        p = p * r + _F4
        p = p * r + _F3
        p = p * r + _F2
        p = p * r + _F1
        p = p * r + _F0
        # 2**n from z = n + shifter (n in the low bits): integer bits, no conversion. (Written out in
        # both exps: the interpreter patches triton.language on every call of a jit function, 4 ms.)
        return p * ((z.to(tl.int64, bitcast=True) + 1023) << 52).to(tl.float64, bitcast=True)

    @triton.jit
    def _exp_wide(d):
        """exp(d) of float64 ``d <= 0`` to about 1 ulp, subnormal results included."""
        d = tl.where(d < -746.0, -746.0, d)  # exp(-746) rounds to 0; keeps n in range
        z = d * _LOG2E + _SHIFTER
        nf = z - _SHIFTER
        r = (d - nf * _LN2_HI) - nf * _LN2_LO
        q = _Q9 * r + _Q8
        q = q * r + _Q7
        q = q * r + _Q6
        q = q * r + _Q5
        q = q * r + _Q4
        q = q * r + _Q3
        q = q * r + _Q2
        q = q * r + _Q1
        q = q * r + _Q0
        p = 1.0 + (r + (r * r) * q)
        # Below 2**-1000 build 2**(n+64), exact, and round once by 2**-64 into the subnormals.
        small = nf < -1000.0
        bias = tl.where(small, 1023 + 64, 1023)
        scale = ((z.to(tl.int64, bitcast=True) + bias) << 52).to(tl.float64, bitcast=True)
        return (p * scale) * tl.where(small, _TWO_M64, 1.0)

    @triton.jit
    def _term(v, m, WIDE: tl.constexpr):
        """``(exp(v - m), v - m, error of v - m)`` in float64 by the shift rule, for ``m`` finite.

        ``v`` is the widened logit (``-inf`` where masked). Entries equal to
        ``m`` get ``d = 0`` exactly; the error is 0 where ``d`` is not finite.
        """
        d = v - m
        if WIDE:
            bv = d - v
            e = (v - (d - bv)) - (bv + m)
            e = tl.where(d < -745.2, 0.0, e)  # -inf entries: inf - inf; their term is 0 anyway
            t = _exp_wide(d)
            t = t + t * e
        else:
            e = tl.zeros_like(d)
            t = _exp_narrow(d)
        return t, d, e

    @triton.jit
    def _log1p(x):
        """log1p(x) for float64 ``x >= 0`` or NaN, within 1 ulp: the method and coefficients of fdlibm's
        ``log1p`` (Sun Microsystems, 1993). ``1 + x = 2**k (1 + f)`` with ``1 + f`` in [sqrt(2)/2, sqrt(2)]
        (``c`` the rounding error of ``1 + x``, over ``1 + x``), then ``log(1 + f) = 2 atanh(f / (2 + f))``
        by a minimax polynomial."""
        hx = x.to(tl.int64, bitcast=True) >> 32
        u = 1.0 + x
        hu = (u.to(tl.int64, bitcast=True) >> 32) + (0x3FF00000 - 0x3FE6A09E)
        k = (hu >> 20) - 0x3FF
        c = tl.where(k >= 2, 1.0 - (u - x), x - (u - 1.0)) / u
        c = tl.where(k < 54, c, 0.0)
        hu = (hu & 0x000FFFFF) + 0x3FE6A09E
        f = ((hu << 32) | (u.to(tl.int64, bitcast=True) & 0xFFFFFFFF)).to(tl.float64, bitcast=True) - 1.0
        near_one = hx < 0x3FDA827A  # 1 + x < sqrt(2): f = x exactly, no correction
        f = tl.where(near_one, x, f)
        c = tl.where(near_one, 0.0, c)
        k = tl.where(near_one, 0, k)
        hfsq = 0.5 * f * f
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
        t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
        dk = k.to(tl.float64)
        r = s * (hfsq + (t2 + t1)) + (dk * _LN2_LO_LOG + c) - hfsq + f + dk * _LN2_HI_LOG
        return tl.where((x < 2.0**-53) | (x != x), x, r)  # below 2**-53, log1p(x) rounds to x

    @triton.jit
    def _probability(t, s, out_ptr):
        """``t / (1 + s)``: divided for float64 output (0.5 ulp less), multiplied by the reciprocal for
        narrower output (within 1.5 float64 ulp, far inside its half ulp; a float64 division costs some
        ten float64 operations per logit on the device)."""
        if out_ptr.dtype.element_ty == tl.float64:
            return t / (1.0 + s)
        else:
            return t * (1.0 / (1.0 + s))

    @triton.jit
    def _neumaier(tot, comp, b):
        t = tot + b
        comp += tl.where(tl.abs(tot) >= tl.abs(b), (tot - t) + b, (b - t) + tot)
        return t, comp

    @triton.jit
    def _load_row(x_ptr, w_ptr, row, row_w, cols, width, HAS_WHERE: tl.constexpr):
        """A block of a row widened to float64, ``-inf`` where masked or past the end, and which are allowed."""
        inside = cols < width
        v = tl.load(x_ptr + row + cols, mask=inside, other=float("-inf"))
        # 16-bit through float32, exactly: the interpreter of Triton 3.9 widens bfloat16 to float64
        # as if its bits were an integer.
        v = v.to(tl.float64) if v.dtype == tl.float64 else v.to(tl.float32).to(tl.float64)
        if HAS_WHERE:
            ok = tl.load(w_ptr + row_w + cols, mask=inside, other=0) != 0
        else:
            ok = inside
        return tl.where(ok, v, float("-inf")), ok

    @triton.jit
    def _round_out(v, OUT_KIND: tl.constexpr):
        """float64 ``v`` ready to store: as it is (kind 0, the store's cast is the one rounding), or rounded
        to float32 by round-to-odd (kind 1, float16: the store's cast then rounds correctly), or to
        bfloat16 bits (kind 2) by round-to-nearest-even on those float32 bits, in integers: the
        interpreter of Triton 3.9 casts float32 to bfloat16 by truncation."""
        if OUT_KIND == 0:
            return v
        else:
            near = v.to(tl.float32)
            back = near.to(tl.float64)
            bits = near.to(tl.int32, bitcast=True)
            step = tl.where(tl.abs(back) > tl.abs(v), -1, 1)  # toward v, in magnitude
            fix = (back != v) & (v == v) & (tl.abs(v) != float("inf")) & ((bits & 1) == 0)
            bits = tl.where(fix, bits + step, bits)
            if OUT_KIND == 1:
                return bits.to(tl.float32, bitcast=True)
            else:
                half = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
                half = tl.where(v == v, half, 0x7FC0)  # NaN stays a (quiet) NaN
                return half.to(tl.int16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _special_state(m, k, tot, comp, nan_at, inf_at, n_inf, width):
        """The row's ``(m, k, s)`` by the contract: NaN first, then ``+inf``, then the finite state."""
        has_nan = nan_at < width
        has_inf = n_inf > 0
        s = tl.where(m == float("-inf"), 0.0, tot + comp)
        s = tl.where(has_inf, (n_inf - 1).to(tl.float64), s)
        s = tl.where(has_nan, float("nan"), s)
        k = tl.where(has_nan, nan_at, tl.where(has_inf, inf_at, k))
        m = tl.where(has_nan, float("nan"), tl.where(has_inf, float("inf"), m))
        return m, k, s

    @triton.jit
    def _special_terms(v, m):
        """``(exp(d), d)`` of a block of a row whose max ``m`` is not finite, ``d = x - m`` by the shift rule:
        0 where ``x == m``, ``-inf`` where ``x`` or ``m`` is ``-inf``; no ``exp`` is needed."""
        d = tl.where(v == m, 0.0, v - m)
        d = tl.where(v == float("-inf"), float("-inf"), tl.where(m == float("-inf"), float("-inf"), d))
        return tl.where(d == 0.0, 1.0, tl.where(d == d, 0.0, float("nan"))), d

    @triton.jit
    def _shifted(v, m, WIDE: tl.constexpr):
        """``(t, d, e)`` of a block under any row's max ``m``: the state's shift rule, special rows included."""
        finite = (m == m) & (tl.abs(m) != float("inf"))
        t, d, e = _term(v, tl.where(finite, m, 0.0), WIDE)
        t_special, d_special = _special_terms(v, m)
        return tl.where(finite, t, t_special), tl.where(finite, d, d_special), tl.where(finite, e, 0.0)

    @triton.jit
    def _step(raw, at, width, m, k, tot, comp, nan_at, inf_at, n_inf, WIDE: tl.constexpr):
        """The running state after one more block ``raw`` (widened, ``-inf`` where masked) at indices ``at``.

        Also returns the block's finite entries ``v`` with their terms ``t``
        (the new max's set to 0) and ``d, e`` under the new max, and
        ``moved``, the old max's shift under the new one if the max rose.
        """
        nan_at = tl.minimum(nan_at, tl.min(tl.where(raw != raw, at, width), axis=0))
        is_inf = raw == float("inf")
        inf_at = tl.minimum(inf_at, tl.min(tl.where(is_inf, at, width), axis=0))
        n_inf += tl.sum(is_inf.to(tl.int64), axis=0)
        v = tl.where((raw != raw) | is_inf, float("-inf"), raw)  # the finite state sees only finite entries
        top = tl.max(v, axis=0)
        rise = top > m
        new_m = tl.where(rise, top, m)
        ms = tl.where(new_m == float("-inf"), 0.0, new_m)
        t, d, e = _term(v, ms, WIDE)
        first = tl.min(tl.where(v == top, at, width), axis=0)
        # The new max's term is 1 and kept out of s. (Nested wheres: the interpreter of Triton 3.9
        # mistypes a scalar boolean broadcast by & or |.)
        t = tl.where(at == first, tl.where(rise, 0.0, t), t)
        f, dm, em = _term(m, ms, True)  # the old max's term exp(m - M); 0 while m = -inf
        tot = tl.where(rise, tot * f, tot)
        comp = tl.where(rise, comp * f, comp)
        tot, comp = _neumaier(tot, comp, tl.where(rise, f, 0.0))
        tot, comp = _neumaier(tot, comp, tl.sum(t, axis=0))
        moved = tl.where(rise & (m > float("-inf")), dm + em, 0.0)
        return v, t, d, e, moved, new_m, tl.where(rise, first, k), tot, comp, nan_at, inf_at, n_inf

    @triton.jit
    def _smooth_step(raw, ok, v, d, e, wc, moved, dsum, dcomp, wfin, count, wsum, dead):
        """The smoothing sums after one more block: ``sum w_c (x_c - m)`` rebased on the new max, and the rest."""
        live = v > float("-inf")
        dsum, dcomp = _neumaier(dsum, dcomp, wfin * moved)  # every finite entry so far moves by moved <= 0
        dsum, dcomp = _neumaier(dsum, dcomp, tl.sum(tl.where(live, wc * (d + e), 0.0), axis=0))
        wfin += tl.sum(tl.where(live, wc, 0.0), axis=0)
        count += tl.sum(ok.to(tl.int64), axis=0)
        wsum += tl.sum(tl.where(ok, wc, 0.0), axis=0)
        dead = tl.maximum(dead, tl.max((ok & (raw == float("-inf"))).to(tl.int32), axis=0))
        return dsum, dcomp, wfin, count, wsum, dead

    @triton.jit
    def _weights(weight_ptr, cols, width, HAS_WEIGHT: tl.constexpr):
        if HAS_WEIGHT:
            return tl.load(weight_ptr + cols, mask=cols < width, other=0.0)
        else:
            return tl.full(cols.shape, 1.0, tl.float64)

    @triton.jit
    def _weight_at(weight_ptr, c, inside, HAS_WEIGHT: tl.constexpr):
        if HAS_WEIGHT:
            return tl.load(weight_ptr + c, mask=inside, other=float("nan"))
        else:
            return tl.full((), 1.0, tl.float64)

    @triton.jit
    def _forward_kernel(
        x_ptr, where_ptr, out_ptr, m_ptr, k_ptr, s_ptr,
        y_ptr, weight_ptr, xy_ptr, shift_ptr, allowed_ptr, wsum_ptr,
        width, stride_x, stride_where, stride_out,
        HAS_WHERE: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr,
        WRITE_OUT: tl.constexpr, LOG: tl.constexpr, OUT_KIND: tl.constexpr,
        CE: tl.constexpr, SMOOTH: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    ):  # fmt: skip
        """One row's state online over blocks; its softmax when the row is one block; the CE parts."""
        pid = tl.program_id(0).to(tl.int64)
        row, row_w = pid * stride_x, pid * stride_where
        m = tl.full((), float("-inf"), tl.float64)
        k = tl.full((), 0, tl.int64)
        tot = tl.full((), 0.0, tl.float64)
        comp = tl.full((), 0.0, tl.float64)
        nan_at = tl.full((), 0, tl.int64) + width
        inf_at = tl.full((), 0, tl.int64) + width
        n_inf = tl.full((), 0, tl.int64)
        dsum = tl.full((), 0.0, tl.float64)  # sum w_c (x_c - m) over the finite allowed entries so far
        dcomp = tl.full((), 0.0, tl.float64)
        wfin = tl.full((), 0.0, tl.float64)  # their weight sum
        count = tl.full((), 0, tl.int64)
        wsum = tl.full((), 0.0, tl.float64)
        dead = tl.full((), 0, tl.int32)
        if ONE_BLOCK:  # the row stays in registers (a loop's body would not be visible after it)
            cols = tl.arange(0, BLOCK)
            raw, ok = _load_row(x_ptr, where_ptr, row, row_w, cols, width, HAS_WHERE)
            v, t, d, e, moved, m, k, tot, comp, nan_at, inf_at, n_inf = _step(
                raw, cols.to(tl.int64), width, m, k, tot, comp, nan_at, inf_at, n_inf, WIDE
            )
            if CE and SMOOTH:
                wc = _weights(weight_ptr, cols, width, HAS_WEIGHT)
                dsum, dcomp, wfin, count, wsum, dead = _smooth_step(
                    raw, ok, v, d, e, wc, moved, dsum, dcomp, wfin, count, wsum, dead
                )
        else:
            for lo in range(0, width, BLOCK):
                cols = lo + tl.arange(0, BLOCK)
                raw, ok = _load_row(x_ptr, where_ptr, row, row_w, cols, width, HAS_WHERE)
                v, t, d, e, moved, m, k, tot, comp, nan_at, inf_at, n_inf = _step(
                    raw, cols.to(tl.int64), width, m, k, tot, comp, nan_at, inf_at, n_inf, WIDE
                )
                if CE and SMOOTH:
                    wc = _weights(weight_ptr, cols, width, HAS_WEIGHT)
                    dsum, dcomp, wfin, count, wsum, dead = _smooth_step(
                        raw, ok, v, d, e, wc, moved, dsum, dcomp, wfin, count, wsum, dead
                    )
        m, k, s = _special_state(m, k, tot, comp, nan_at, inf_at, n_inf, width)
        tl.store(m_ptr + pid, m)
        tl.store(k_ptr + pid, k)
        tl.store(s_ptr + pid, s)
        if WRITE_OUT:  # ONE_BLOCK: from the shifts and terms in registers (the max's term is 1)
            t_special, d_special = _special_terms(raw, m)
            finite = (m == m) & (tl.abs(m) != float("inf"))
            if LOG:
                val = (tl.where(finite, d, d_special) - _log1p(s)) + tl.where(finite, e, 0.0)
            else:
                val = _probability(tl.where(finite, tl.where(cols == k, 1.0, t), t_special), s, out_ptr)
            val = _round_out(val, OUT_KIND)
            tl.store(out_ptr + pid * stride_out + cols, val.to(out_ptr.dtype.element_ty), mask=cols < width)
        if CE:
            _ce_target(x_ptr, where_ptr, y_ptr, xy_ptr, pid, row, row_w, width, HAS_WHERE)
            if SMOOTH:
                finite = (m == m) & (tl.abs(m) != float("inf"))
                dsum = tl.where(finite, dsum + dcomp, 0.0)
                tl.store(shift_ptr + pid, tl.where(dead > 0, float("-inf"), dsum))
                tl.store(allowed_ptr + pid, count)
                tl.store(wsum_ptr + pid, wsum)

    @triton.jit
    def _ce_target(x_ptr, where_ptr, y_ptr, xy_ptr, pid, row, row_w, width, HAS_WHERE: tl.constexpr):
        """``x[n, y]`` as float64: ``-inf`` where masked, NaN for a target out of range (nothing is read)."""
        y = tl.load(y_ptr + pid)
        inside = (y >= 0) & (y < width)
        xy = tl.load(x_ptr + row + y, mask=inside, other=float("nan"))
        xy = xy.to(tl.float64) if xy.dtype == tl.float64 else xy.to(tl.float32).to(tl.float64)
        if HAS_WHERE:
            xy = tl.where(tl.load(where_ptr + row_w + y, mask=inside, other=1) != 0, xy, float("-inf"))
        tl.store(xy_ptr + pid, xy)

    @triton.jit
    def _write_kernel(
        x_ptr, where_ptr, out_ptr, m_ptr, s_ptr, lg_ptr,
        width, stride_x, stride_where, stride_out,
        HAS_WHERE: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
        LOG: tl.constexpr, OUT_KIND: tl.constexpr,
    ):  # fmt: skip
        """softmax ``t / (1 + s)`` or log-softmax ``(d - log1p(s)) + e`` of one row, given its state."""
        pid = tl.program_id(0).to(tl.int64)
        row, row_w = pid * stride_x, pid * stride_where
        m = tl.load(m_ptr + pid)
        s = tl.load(s_ptr + pid)
        lg = tl.load(lg_ptr + pid)
        for lo in range(0, width, BLOCK):
            cols = lo + tl.arange(0, BLOCK)
            v, ok = _load_row(x_ptr, where_ptr, row, row_w, cols, width, HAS_WHERE)
            t, d, e = _shifted(v, m, WIDE)
            val = (d - lg) + e if LOG else _probability(t, s, out_ptr)
            val = _round_out(val, OUT_KIND)
            tl.store(out_ptr + pid * stride_out + cols, val.to(out_ptr.dtype.element_ty), mask=cols < width)

    @triton.jit
    def _grad_kernel(
        x_ptr, where_ptr, grad_ptr, m_ptr, k_ptr, s_ptr, lse_ptr, y_ptr, weight_ptr, xy_ptr,
        allowed_ptr, wsum_ptr, g_ptr, z_ptr, alpha_ptr,
        width, stride_x, stride_where, stride_grad,
        HAS_WHERE: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
        HAS_WEIGHT: tl.constexpr, HAS_Z: tl.constexpr, OUT_KIND: tl.constexpr,
    ):  # fmt: skip
        """The cross-entropy gradient of one row: ``coef t_c - smooth w_c``, then the max and target entries."""
        pid = tl.program_id(0).to(tl.int64)
        row, row_w = pid * stride_x, pid * stride_where
        m = tl.load(m_ptr + pid)
        k = tl.load(k_ptr + pid)
        s = tl.load(s_ptr + pid)
        lse = tl.load(lse_ptr + pid)
        y = tl.load(y_ptr + pid)
        gn = tl.load(g_ptr + pid)
        z = tl.load(z_ptr + pid)  # g stands in when there is no z_grad: HAS_Z zeroes it
        if not HAS_Z:
            z = 0.0 * z
        inside = (y >= 0) & (y < width)
        w_y = _weight_at(weight_ptr, y, inside, HAS_WEIGHT)
        w_k = _weight_at(weight_ptr, k, k >= 0, HAS_WEIGHT)
        count = tl.load(allowed_ptr + pid)
        alpha = tl.load(alpha_ptr)
        gy = (1.0 - alpha) * w_y
        a_over_k = tl.where(count > 0, alpha / count.to(tl.float64), 0.0)
        big_a = gy + a_over_k * tl.load(wsum_ptr + pid)
        inv = 1.0 / (1.0 + s)
        coef = (gn * big_a + z * lse) / (1.0 + s)
        a_k = tl.where(k == y, gy, 0.0) + a_over_k * w_k
        at_k = gn * ((big_a - a_k) - a_k * s) * inv + z * lse * inv  # no cancellation when p_k -> 1
        y_take = gn * (gy + a_over_k * w_y)
        y_live = tl.load(xy_ptr + pid) > float("-inf")
        ordinary = (m == m) & (tl.abs(m) != float("inf"))
        fill = tl.where(m == m, 0.0, float("nan"))  # rows whose max is not finite
        for lo in range(0, width, BLOCK):
            cols = lo + tl.arange(0, BLOCK)
            v, ok = _load_row(x_ptr, where_ptr, row, row_w, cols, width, HAS_WHERE)
            t, d, e = _term(v, tl.where(ordinary, m, 0.0), WIDE)
            wc = _weights(weight_ptr, cols, width, HAS_WEIGHT)
            val = coef * t - tl.where(v > float("-inf"), gn * a_over_k * wc, 0.0)
            at = cols.to(tl.int64)
            val = tl.where(at == y, tl.where(y_live, coef * t - y_take, 0.0), val)
            val = tl.where(at == k, at_k, val)
            val = _round_out(tl.where(ordinary, val, fill), OUT_KIND)
            tl.store(grad_ptr + pid * stride_grad + cols, val.to(grad_ptr.dtype.element_ty), mask=cols < width)

    @triton.jit
    def _block_grad_kernel(
        x_ptr, out_ptr, m_ptr, k_ptr, s_ptr, y_ptr, alive_ptr, big_a_ptr, g_ptr, z_ptr, smooth_ptr, scalars_ptr,
        weight_ptr, first, width, stride_x, stride_out,
        WIDE: tl.constexpr, BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, OUT_KIND: tl.constexpr,
    ):  # fmt: skip
        """One row of a block's gradient from the row's whole state: ``(A p - a) g + z p``, the max apart."""
        pid = tl.program_id(0).to(tl.int64)
        m = tl.load(m_ptr + pid)
        s = tl.load(s_ptr + pid)
        k = tl.load(k_ptr + pid) - first
        y = tl.load(y_ptr + pid) - first
        live = tl.load(alive_ptr + pid) != 0
        big_a = tl.load(big_a_ptr + pid)
        gn = tl.load(g_ptr + pid)
        z = tl.load(z_ptr + pid)
        smooth = tl.load(smooth_ptr + pid)
        hot = tl.load(scalars_ptr)
        cap = tl.load(scalars_ptr + 1)
        inv = 1.0 / (1.0 + s)
        ordinary = live & (m == m) & (tl.abs(m) != float("inf"))
        fill = tl.where(live & (m != m), float("nan"), 0.0)
        for lo in range(0, width, BLOCK):
            cols = lo + tl.arange(0, BLOCK)
            inside = cols < width
            v = tl.load(x_ptr + pid * stride_x + cols, mask=inside, other=0.0)
            v = v.to(tl.float64) if v.dtype == tl.float64 else v.to(tl.float32).to(tl.float64)
            t, d, e = _term(v, tl.where(ordinary, m, 0.0), WIDE)
            p = t * inv
            at = cols.to(tl.int64)
            a = _weights(weight_ptr, cols, width, HAS_WEIGHT) * (tl.where(at == y, hot, 0.0) + smooth)
            val = (big_a * p - a) * gn + p * z
            val = tl.where(at == k, ((big_a - a) - a * s) * inv * gn + inv * z, val)  # no cancellation at p_k -> 1
            val = val * (1.0 - (v / cap) * (v / cap))
            val = tl.where(tl.abs(v) < float("inf"), val, 0.0)
            val = _round_out(tl.where(ordinary, val, fill), OUT_KIND)
            tl.store(out_ptr + pid * stride_out + cols, val.to(out_ptr.dtype.element_ty), mask=inside)
