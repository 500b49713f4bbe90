"""The constants every accelerator builds ``exp`` from, written once for the numba and Triton kernels.

``exp(d)`` for ``d <= 0`` is ``2**n exp(r)`` with ``d = n ln 2 + r``: ``n`` rounded by the
``SHIFTER`` trick, ``r`` reduced with ``ln 2`` in one constant (float32 work) or two
(``LN2_HI`` exact in ``n * LN2_HI`` for ``|n| < 2**11``, ``LN2_LO`` the rest), and ``exp(r)``
from a polynomial. The polynomials are Chebyshev interpolants computed in mpmath (200 bits)
and rounded to double.
"""

from __future__ import annotations

__all__ = [
    "LOG2E",
    "SHIFTER",
    "LN2",
    "LN2_HI",
    "LN2_LO",
    "TWO_M64",
    "EXP_NARROW",
    "EXP_SHORT",
    "EXP_SHORT_ERROR",
    "EXP_WIDE",
]

LOG2E = 1.4426950408889634
SHIFTER = 6755399441055744.0  # 1.5 * 2**52: x + shifter rounds x to an integer kept in the low bits
LN2 = 0.6931471805599453
LN2_HI = 0.6931471805598903  # ln 2 to 42 bits: n * LN2_HI is exact for |n| < 2**11
LN2_LO = 5.497923018708371e-14  # ln 2 - LN2_HI
TWO_M64 = 2.0**-64

# exp(r) ~ sum F_j r^j on |r| <= 0.3467: Chebyshev interpolation at 10 nodes; max relative error
# 1.9e-14 (float32 work: the result is rounded to float32 from far below its half ulp).
EXP_NARROW = (
    1.0000000000000135, 1.0000000000000013, 0.4999999999943695, 0.16666666666615498,
    0.04166666704137147, 0.008333333367386076, 0.001388880162232969,
    0.00019841190531844625, 2.4884520306294873e-05, 2.7632695699976396e-06,
)  # fmt: skip
# exp(r) ~ sum S_j r^j on |r| <= 0.3466: Chebyshev interpolation at 8 nodes; max relative error 5.51e-11
# (mpmath, 200 bits, 20001 points, coefficients as rounded here). Only where a rounding test follows:
# the float32 logsumexp's fast sweep, whose rows near a float32 rounding boundary are swept again.
EXP_SHORT = (
    0.9999999999595608, 0.9999999999955089, 0.5000000107731032, 0.16666666786310658,
    0.04166621831411108, 0.008333283538133252, 0.0013948578671547215, 0.00019907569694023133,
)  # fmt: skip
EXP_SHORT_ERROR = 6e-11  # the bound the rounding test assumes: 5.51e-11, plus the reduction's 2.4e-14 and evaluation
# exp(r) ~ 1 + r + r^2 Q(r), Q of degree 9 interpolating (exp(r) - 1 - r) / r^2 at 10 Chebyshev
# nodes on |r| <= 0.347; max relative error 1.7e-17 (0.08 ulp).
EXP_WIDE = (
    0.5000000000000001, 0.16666666666666669, 0.04166666666662374, 0.008333333333330032,
    0.0013888888917406447, 0.00019841269863201828, 2.4801520996825697e-05,
    2.7557268229963227e-06, 2.76202305675069e-07, 2.5100494788905042e-08,
)  # fmt: skip
