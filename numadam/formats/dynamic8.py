"""PLACEHOLDER (replaced by the quant8 branch): dynamic maps and a nearest-code encoder."""
import numpy as np
from numba import njit
from numadam.core.jitcache import CACHE


def _dynamic_map(signed):
    data = []
    for i in range(7):
        n = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = np.linspace(0.1, 1, n, dtype=np.float32)
        means = (b[:-1] + b[1:]) / np.float32(2)
        data += list(np.float32(10.0 ** (-6 + i)) * means)
        if signed:
            data += list(-np.float32(10.0 ** (-6 + i)) * means)
    data += [0.0, 1.0]
    data.sort()
    return np.array(data, np.float32)


SIGNED_MAP = _dynamic_map(True)
UNSIGNED_MAP = _dynamic_map(False)
_SMID = ((SIGNED_MAP[:-1].astype(np.float64) + SIGNED_MAP[1:]) / 2).astype(np.float32)
_UMID = ((UNSIGNED_MAP[:-1].astype(np.float64) + UNSIGNED_MAP[1:]) / 2).astype(np.float32)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _search(mid, y):
    lo = 0
    for shift in (128, 64, 32, 16, 8, 4, 2, 1):
        j = lo + shift - 1
        if j < 255 and y > mid[j]:
            lo += shift
    return np.uint8(lo)


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_signed(y):
    return _search(_SMID, y)


@njit(cache=CACHE, error_model="numpy", inline="always")
def encode_unsigned(y):
    return _search(_UMID, y)


@njit(cache=CACHE, error_model="numpy", inline="always")
def decode_signed(code):
    return SIGNED_MAP[code]


@njit(cache=CACHE, error_model="numpy", inline="always")
def decode_unsigned(code):
    return UNSIGNED_MAP[code]
