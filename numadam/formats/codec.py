"""Whole-array conversions between float32 values and stored state, with the
kernels' own functions (so a converted state is bit for bit what the kernels
would have stored): for state dicts, ``opt.state`` views and
:func:`convert_state_dict`.

A stored 8-bit array is its codes (uint8, the parameter's shape) and its
absmax (float32, one per block of :data:`~numadam.formats.BLOCK` elements of
the flattened parameter). A stored bfloat16 array is its bits (uint16).
"""

import numpy as np
from numba import njit

from numadam.core.jitcache import CACHE
from numadam.formats import BLOCK
from numadam.formats.bf16 import noise16, round_nearest, round_stochastic, to_float32
from numadam.formats.dynamic8 import (decode_signed, decode_unsigned, encode_signed,
                                      encode_unsigned)
from numadam.formats.stochastic import encode_signed_sr, encode_unsigned_sr

__all__ = ["bf16_bits", "bf16_values", "encode8", "decode8", "nblocks"]


def nblocks(size):
    """Blocks of an 8-bit array of ``size`` elements."""
    return -(-int(size) // BLOCK)


@njit(cache=CACHE, error_model="numpy")
def _bf16_bits(x, out, sr, rkey):
    for i in range(x.size):
        out[i] = round_stochastic(x[i], noise16(rkey, i)) if sr else round_nearest(x[i])


@njit(cache=CACHE, error_model="numpy")
def _bf16_values(h, out):
    for i in range(h.size):
        out[i] = to_float32(h[i])


def bf16_bits(values, rkey=None):
    """bfloat16 bits (uint16, same shape) of float32 ``values``, rounded to
    nearest even, or stochastically with the draws of the row key ``rkey``
    (:func:`numadam.formats.stochastic.state_key`) as the kernels do."""
    x = np.ascontiguousarray(values, np.float32)
    out = np.empty(x.shape, np.uint16)
    _bf16_bits(x.reshape(-1), out.reshape(-1), rkey is not None,
               np.uint64(0 if rkey is None else rkey))
    return out


def bf16_values(bits):
    """float32 values (same shape) of bfloat16 ``bits`` (uint16)."""
    h = np.ascontiguousarray(bits, np.uint16)
    out = np.empty(h.shape, np.float32)
    _bf16_values(h.reshape(-1), out.reshape(-1))
    return out


@njit(cache=CACHE, error_model="numpy")
def _encode8(x, codes, absmax, signed, sr, rkey):
    for b in range(absmax.size):
        lo = b * BLOCK
        hi = min(lo + BLOCK, x.size)
        m = np.float32(0)
        bad = False
        for i in range(lo, hi):
            a = abs(x[i])
            if a - a != 0:
                bad = True
            elif a > m:
                m = a
        if bad:
            m = np.float32(np.nan)
        inv = np.float32(1) / m if m > 0 else np.float32(0)
        if bad:
            inv = m
        for i in range(lo, hi):
            y = x[i] * inv
            if sr:
                r = noise16(rkey, i)
                codes[i] = encode_signed_sr(y, r) if signed else encode_unsigned_sr(y, r)
            else:
                codes[i] = encode_signed(y) if signed else encode_unsigned(y)
        absmax[b] = m


@njit(cache=CACHE, error_model="numpy")
def _decode8(codes, absmax, signed, out):
    for i in range(codes.size):
        m = absmax[i // BLOCK]
        out[i] = (decode_signed(codes[i]) if signed else decode_unsigned(codes[i])) * m


def encode8(values, signed, rkey=None):
    """``(codes, absmax)`` of float32 ``values`` quantised as the kernels do
    (``signed``: the signed map, else the unsigned one); with a row key
    ``rkey`` rounded stochastically as the kernels do."""
    x = np.ascontiguousarray(values, np.float32)
    codes = np.empty(x.shape, np.uint8)
    absmax = np.empty(nblocks(x.size), np.float32)
    _encode8(x.reshape(-1), codes.reshape(-1), absmax, bool(signed), rkey is not None,
             np.uint64(0 if rkey is None else rkey))
    return codes, absmax


def decode8(codes, absmax, signed):
    """float32 values (the shape of ``codes``) of an 8-bit array."""
    codes = np.ascontiguousarray(codes, np.uint8)
    out = np.empty(codes.shape, np.float32)
    _decode8(codes.reshape(-1), np.ascontiguousarray(absmax, np.float32), bool(signed),
             out.reshape(-1))
    return out
