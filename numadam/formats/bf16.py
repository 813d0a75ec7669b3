"""bfloat16 storage: the conversions, in integer bit operations, and the
counter-based generator behind stochastic rounding.

A bfloat16 is the upper half of a float32 (1 sign, 8 exponent and 7 mantissa
bits), so widening is a shift and narrowing is a rounding of the lower 16
bits. Everything here is integer arithmetic on the float32's bits
(:func:`numadam.core.math.float_bits`), which the CPU and the GPU compute
identically, and which LLVM vectorises (no libm call, no branch in the loop).

Stochastic rounding adds 16 random bits to the lower half before truncating,
so a value rounds up with probability equal to its distance from the lower
neighbour: small updates to bfloat16 parameters survive in expectation,
where round-to-nearest would drop every update below half an ulp. The
random bits are a hash of ``(seed, parameter, step, element index)``
(:func:`stream_key`, :func:`noise16`): the same on any thread count, device or
split of the work, and a resumed run draws what the uninterrupted run drew
without any saved generator state.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from numadam.core.jitcache import CACHE
from numadam.core.math import bits_float, float_bits

__all__ = ["to_float32", "round_nearest", "round_stochastic", "stream_key", "param_key",
           "noise16", "BF16_NAN"]

# The quiet NaN bfloat16 produced for any NaN input (sign kept).
BF16_NAN = 0x7FC0

_MASK32 = 0xFFFFFFFF


@njit(cache=CACHE, error_model="numpy", inline="always")
def to_float32(h):
    """The float32 value of the bfloat16 bits ``h`` (uint16): exact."""
    # Numba widens integer arithmetic to 64 bits: every result is cast back.
    return bits_float(np.uint32(np.uint32(h) << np.uint32(16)))


@njit(cache=CACHE, error_model="numpy", inline="always")
def round_nearest(x):
    """bfloat16 bits (uint16) of the float32 ``x``, rounded to nearest even.

    Adding ``0x7FFF`` plus the lowest kept bit carries into the kept half
    exactly when the dropped half is above one half, or equal to it with an
    odd kept half; an overflow of the largest finite values carries into the
    exponent and gives infinity, as IEEE rounding does. A NaN becomes a quiet
    NaN of the same sign instead (its payload could otherwise round to
    infinity).
    """
    b = float_bits(x)
    if x != x:
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x0040))
    b = np.uint32(b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
    return np.uint16(b >> np.uint32(16))


@njit(cache=CACHE, error_model="numpy", inline="always")
def round_stochastic(x, r):
    """bfloat16 bits of the float32 ``x`` rounded up (away from zero in
    magnitude) with probability (dropped half) / 2**16, using the 16 random
    bits ``r`` (uint32 below 2**16). Exact values stay exact; infinities stay
    infinite; a NaN becomes a quiet NaN of the same sign. The largest finite
    values round to infinity with the probability their distance gives.
    """
    b = float_bits(x)
    if x != x:
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x0040))
    if (b & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
        return np.uint16(b >> np.uint32(16))
    return np.uint16(np.uint32(b + r) >> np.uint32(16))


def _mix32_ir(builder, x):
    # Chris Wellons' two-round 32-bit integer hash (bias 0.107, "hash
    # prospector"), emitted as 32-bit LLVM operations.
    i32 = ir.IntType(32)
    x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))
    x = builder.mul(x, ir.Constant(i32, 0x21F0AAAD))
    x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 15)))
    x = builder.mul(x, ir.Constant(i32, 0x735A2D97))
    return builder.xor(x, builder.lshr(x, ir.Constant(i32, 15)))


@intrinsic
def _noise_bits(typingctx, index_lo, index_hi, key_lo, key_hi):
    """``mix32(mix32(index_lo ^ key_lo) + key_hi + index_hi) >> 16``, all
    uint32. An intrinsic, so every operation stays in 32 bits: written in
    Numba (which widens integer arithmetic to 64 bits) the vectorised loops
    kept the hash in 64-bit lanes with 64-bit multiplies (``vpmullq``)."""
    if not all(a == types.uint32 for a in (index_lo, index_hi, key_lo, key_hi)):
        return None

    def codegen(context, builder, signature, args):
        ilo, ihi, klo, khi = args
        x = _mix32_ir(builder, builder.xor(ilo, klo))
        x = _mix32_ir(builder, builder.add(builder.add(x, khi), ihi))
        return builder.lshr(x, ir.Constant(ir.IntType(32), 16))

    return types.uint32(index_lo, index_hi, key_lo, key_hi), codegen


@njit(cache=CACHE, error_model="numpy", inline="always")
def _splitmix64(z):
    z = (z + np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=CACHE, error_model="numpy")
def param_key(seed, param):
    """The key of parameter ``param`` (its position in the optimizer) under
    ``seed`` (an int in [0, 2**63)), a uint64 fixed for the optimizer's life."""
    return _splitmix64(_splitmix64(np.uint64(seed)) ^ np.uint64(param))


@njit(cache=CACHE, error_model="numpy", inline="always")
def stream_key(key, step):
    """The uint64 key of one parameter's draws at ``step``: two 32-bit halves
    (see :func:`noise16`)."""
    return _splitmix64(np.uint64(key) ^ _splitmix64(np.uint64(step)))


@njit(cache=CACHE, error_model="numpy", inline="always")
def noise16(skey, index):
    """16 random bits (a uint32 below 2**16) for element ``index`` under the
    stream key ``skey`` (:func:`stream_key`): a pure function of both, so
    every thread and device draws the same bits for the same element."""
    i = np.uint64(index)
    return _noise_bits(np.uint32(i & np.uint64(_MASK32)), np.uint32(i >> np.uint64(32)),
                       np.uint32(skey & np.uint64(_MASK32)), np.uint32(skey >> np.uint64(32)))
