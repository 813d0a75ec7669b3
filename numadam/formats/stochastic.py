"""Stochastic rounding of stored state (``stochastic_rounding=True``).

Rounding the state to nearest loses small updates for good: bfloat16 keeps 8
significant bits, so ``v * 0.999`` rounds back to ``v`` (the relative change,
1e-3, is under half an ulp, 2**-9) and Adam's second moment never decays; the
8-bit map's steps are coarser still. Rounding up with probability equal to
the distance from the lower neighbour keeps every update in expectation.

The random bits come from the same counter-based generator as the bfloat16
parameters' (:mod:`numadam.formats.bf16`), keyed by ``(seed, parameter,
step, state row, element index)``: a draw for state row ``r`` uses the key
:func:`state_key` derives from the parameter's stream key, so it never
repeats the parameter's own draw for the same element.
"""

import numpy as np
from numba import njit

from numadam.core.jitcache import CACHE
from numadam.core.math import mul_rn
from numadam.formats.bf16 import _splitmix64
from numadam.formats.dynamic8 import (SIGNED_MAP, UNSIGNED_MAP, encode_signed,
                                      encode_unsigned)

__all__ = ["state_key", "unit", "encode_signed_sr", "encode_unsigned_sr"]

_GOLDEN = 0x9E3779B97F4A7C15


@njit(cache=CACHE, error_model="numpy", inline="always")
def state_key(skey, row):
    """The stream key of state row ``row``'s draws under the parameter's
    stream key ``skey`` (:func:`numadam.formats.bf16.stream_key`)."""
    return _splitmix64(np.uint64(skey) ^ np.uint64(np.uint64(row + 1) * np.uint64(_GOLDEN)))


@njit(cache=CACHE, error_model="numpy", inline="always")
def unit(r):
    """16 random bits ``r`` as a float32 in [0, 1): ``r / 2**16``, exact."""
    return mul_rn(np.float32(r), np.float32(1.0 / 65536.0))


@njit(cache=CACHE, error_model="numpy", inline="always")
def _round_in_map(y, c, table, r):
    """The code of ``y`` rounded stochastically between its two neighbouring
    entries of ``table``, given its nearest code ``c``: the upper one with
    probability ``(y - lower) / (upper - lower)``. Outside the map's range,
    and for a NaN, the nearest code ``c``."""
    lo = c - 1 if table[c] > y else c
    lo = min(max(lo, 0), 254)
    a = table[lo]
    b = table[lo + 1]
    if not (a <= y and y <= b):
        return np.uint8(c)
    up = (y - a) > mul_rn(unit(r), b - a)
    return np.uint8(lo + 1) if up else np.uint8(lo)


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_signed_sr(y, r):
    """:func:`~numadam.formats.dynamic8.encode_signed`, rounded stochastically
    with the 16 random bits ``r``."""
    return _round_in_map(y, np.int64(encode_signed(y)), SIGNED_MAP, r)


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_unsigned_sr(y, r):
    """:func:`~numadam.formats.dynamic8.encode_unsigned`, rounded
    stochastically with the 16 random bits ``r``."""
    return _round_in_map(y, np.int64(encode_unsigned(y)), UNSIGNED_MAP, r)
