"""8-bit block-wise dynamic quantisation: bitsandbytes' code maps and an
exact, vectorisable nearest-code encoder.

The maps
--------
:data:`SIGNED_MAP` and :data:`UNSIGNED_MAP` are the float32 arrays of
bitsandbytes' ``create_dynamic_map(signed=True)`` and ``(signed=False)``
(``max_exponent_bits=7, total_bits=8``; Dettmers et al., "8-bit Optimizers via
Block-wise Quantization", arXiv 2110.02861), reproduced bit for bit (the test
compares them with the library's output). Each is 256 sorted, distinct values:

* the decades ``10**d`` for ``d = -6 .. 0``; decade ``d`` (``i = d + 6``) holds
  ``10**d * m`` for the midpoints ``m`` of ``n + 1`` evenly spaced boundaries
  from 0.1 to 1, ``n = 2**i`` (signed) or ``2**(i + 1)`` (unsigned) linear
  means per decade, so the resolution is finest near 1;
* the signed map has each positive value and its negation (127 + 127), the
  unsigned map the positive values only (254);
* both add ``0`` and ``1.0``. The signed map is therefore asymmetric: its most
  negative value is ``-0.99296874``, not ``-1``.

The arithmetic is torch's float32: the boundaries are ``torch.linspace(0.1, 1,
n + 1)``, which on x86-64 computes ``start + step * k`` for the first half and
``end - step * (n - k)`` for the second, each as one fused multiply-add
(``step = (1 - 0.1f) / n`` in float32); without the fusion, twelve of the 65
boundaries of the top signed decade differ in the last bit. The means are
``(b[k] + b[k + 1]) / 2`` and the scale is a float32 product with
``float32(10.0**d)``.

The encoder
-----------
A value ``y`` encodes to the nearest map entry; a ``y`` exactly halfway
between two entries takes the one of smaller magnitude (the one nearer zero);
values beyond the map clamp to its end codes (``|y| > 1`` in particular),
``-0.0`` encodes as ``+0.0`` and NaN as the code of zero.

The nearest entry on the magnitude side is found with one table read: the
upper 16 bits of ``|y|``'s float32 bits (8 exponent, 7 mantissa bits: 128
buckets per binade) index a table whose entry holds the lower candidate
``k`` and the low 16 bits of the one midpoint between entries ``k`` and
``k + 1`` that lies in the bucket (or ``0x10000``, above every low half, where
none does); ``k + 1`` wins when ``|y|``'s low bits exceed it. That is exact
because each bucket holds at most one midpoint (asserted when the tables are
built; the top decade's spacing, 0.9/128, is above the widest bucket below 1,
2**-8) and the stored midpoint is the exact midpoint rounded down to float32,
so a float32 lies above it exactly when it lies above the true midpoint. The
magnitude is clamped to ``[bucket 0, 1.0]`` before the look-up. One gather
and integer operations: no search, no libm call, and LLVM vectorises it
(AVX2 ``vpgatherdd``); the same code compiles for numba-cuda (the tables are
global constant arrays).
"""

import numpy as np
from numba import njit

from numadam.core.jitcache import CACHE
from numadam.core.math import float_bits

__all__ = ["SIGNED_MAP", "UNSIGNED_MAP", "SIGNED_ZERO_CODE", "UNSIGNED_ZERO_CODE",
           "create_dynamic_map", "encode_signed", "encode_unsigned",
           "decode_signed", "decode_unsigned"]

_F = np.float32


def _linspace32(start, end, steps):
    """torch.linspace(start, end, steps, dtype=float32) on x86-64, in NumPy.

    The float64 sums are exact (a float32 times an integer below 2**8 plus a
    float32 of nearby exponent fits in 53 bits), so their rounding to float32
    is the single rounding of torch's fused multiply-add.
    """
    start, end = _F(start), _F(end)
    step = _F(end - start) / _F(steps - 1)
    k = np.arange(steps, dtype=np.float64)
    lower = np.float64(start) + np.float64(step) * k
    upper = np.float64(end) - np.float64(step) * (steps - 1 - k)
    return np.where(k < steps // 2, lower, upper).astype(np.float32)


def create_dynamic_map(signed):
    """The 256 float32 entries of bitsandbytes' dynamic map, sorted.

    Parameters
    ----------
    signed : bool
        The map with negative entries (for state that changes sign) or the
        non-negative one.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(256,)``, strictly increasing, containing 0 and 1.
    """
    values = []
    for i in range(7):
        means_count = 2 ** i if signed else 2 ** (i + 1)
        bounds = _linspace32(0.1, 1.0, means_count + 1)
        means = (bounds[:-1] + bounds[1:]) / _F(2)
        scaled = means * _F(10.0 ** (i - 6))
        values.append(scaled)
        if signed:
            values.append(-scaled)
    values.append(np.array([0.0, 1.0], dtype=np.float32))
    return np.sort(np.concatenate(values))


SIGNED_MAP = create_dynamic_map(True)
UNSIGNED_MAP = create_dynamic_map(False)
SIGNED_ZERO_CODE = 127
UNSIGNED_ZERO_CODE = 0


def _midpoints_down(magnitudes):
    """Float32 bits of each exact midpoint of consecutive ``magnitudes``,
    rounded down: a float32 ``y`` exceeds the midpoint iff it exceeds this."""
    lo = magnitudes[:-1].astype(np.float64)
    exact = (lo + magnitudes[1:].astype(np.float64)) / 2  # exact in float64
    mid = exact.astype(np.float32)
    mid = np.where(mid > exact, np.nextafter(mid, _F(0)), mid)
    return mid.view(np.uint32)


def _bucket_table(magnitudes):
    """The look-up table of the magnitude encoder and its first bucket.

    Entry ``i`` covers the float32 bit patterns ``(base + i) << 16`` to
    ``((base + i + 1) << 16) - 1`` and holds ``(k << 17) | low``: ``k`` the
    index of the nearest magnitude at the bucket's start, ``low`` the low 16
    bits of the midpoint above ``k`` when it lies in the bucket, else
    ``0x10000``.
    """
    mids = _midpoints_down(magnitudes).astype(np.int64)
    base = int(mids[0] >> 16)
    top = int(np.float32(1).view(np.uint32) >> 16)
    starts = (np.arange(base, top + 1, dtype=np.int64) << 16)
    k = np.searchsorted(mids, starts, side="left")  # midpoints below the start
    inside = np.searchsorted(mids, starts + 0x10000, side="left") - k
    if inside.max() > 1:
        raise AssertionError("a bucket holds two midpoints: the encoder would be inexact")
    low = np.full(starts.shape, 0x10000, dtype=np.int64)
    has = inside == 1
    low[has] = mids[k[has]] & 0xFFFF
    return ((k << 17) | low).astype(np.uint32), base


# The signed encoder works on the magnitude side [0, positives..., 1.0].
_SIGNED_TABLE, _SIGNED_BASE = _bucket_table(SIGNED_MAP[SIGNED_ZERO_CODE:])
_UNSIGNED_TABLE, _UNSIGNED_BASE = _bucket_table(UNSIGNED_MAP)
_ONE_BITS = int(np.float32(1).view(np.uint32))


@njit(cache=CACHE, error_model="numpy", inline="always")
def _encode_magnitude(b, table, base):
    # b: the uint32 bits of |y| (NaN excluded by the caller). Clamping the
    # bits, not the index, makes the clamped values compare right: the
    # smallest ones as the bucket's start (below its midpoint), the largest
    # as 1.0 (the last bucket holds no midpoint).
    b = np.uint32(min(max(b, np.uint32(base << 16)), np.uint32(_ONE_BITS)))
    entry = table[np.int32(b >> np.uint32(16)) - np.int32(base)]
    k = np.int32(entry >> np.uint32(17))
    up = (b & np.uint32(0xFFFF)) > (entry & np.uint32(0x1FFFF))
    return np.int32(k + np.int32(up))


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_signed(y):
    """The uint8 code of the float32 ``y`` in :data:`SIGNED_MAP`: its nearest
    entry, halfway cases to the smaller magnitude, ``|y|`` beyond the map to
    the end codes, -0.0 and NaN to :data:`SIGNED_ZERO_CODE`."""
    b = float_bits(y)
    k = _encode_magnitude(np.uint32(b & np.uint32(0x7FFFFFFF)), _SIGNED_TABLE, _SIGNED_BASE)
    # The negative side has no -1.0: its largest magnitude is entry 127.
    # Every result is cast back to 32 bits: Numba widens to 64, and 64-bit
    # lanes halve the vector width (measured 2.2 against 0.9 ns/element).
    zero = np.int32(SIGNED_ZERO_CODE)
    negative = np.int32(zero - min(k, zero))
    code = negative if y < 0 else np.int32(zero + k)
    if y != y:
        code = zero
    return np.uint8(code)


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_unsigned(y):
    """The uint8 code of the float32 ``y`` in :data:`UNSIGNED_MAP`: its nearest
    entry, halfway cases to the smaller one, ``y > 1`` to 255, ``y <= 0`` and
    NaN to :data:`UNSIGNED_ZERO_CODE`."""
    b = float_bits(y)
    k = _encode_magnitude(b, _UNSIGNED_TABLE, _UNSIGNED_BASE)
    if not y > 0:  # negative, zero of either sign, NaN
        k = np.int32(UNSIGNED_ZERO_CODE)
    return np.uint8(k)


@njit(cache=CACHE, error_model="numpy", inline="always")
def decode_signed(code):
    """The float32 entry of :data:`SIGNED_MAP` for the uint8 ``code``."""
    return SIGNED_MAP[code]


@njit(cache=CACHE, error_model="numpy", inline="always")
def decode_unsigned(code):
    """The float32 entry of :data:`UNSIGNED_MAP` for the uint8 ``code``."""
    return UNSIGNED_MAP[code]
