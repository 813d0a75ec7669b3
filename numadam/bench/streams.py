"""Streaming kernels with the traffic of each compressed state format.

Each kernel moves exactly the bytes that an Adam step over float32
parameters moves per element in its format, with a trivial body (no update
math), and is cut into one contiguous task per thread like numadam's kernel
and the full-state yardstick :data:`numadam.bench.contenders.stream`, which
is the full format's kernel here (reads p, g, m, v: 16 bytes; writes p, m, v:
12 bytes).

- bfloat16 state: reads p, g (8 bytes) and m, v as uint16 (4); writes p (4)
  and m, v (4): 20 bytes.
- 8-bit state: reads p, g (8) and two uint8 codes (2) plus each block's two
  float32 absmax values (8 bytes per 256 elements); writes p (4), the codes
  (2) and the absmax values: 16.0625 bytes.
- bfloat16 parameters, gradients and state: reads p, g (4) and m, v (4);
  writes p (2) and m, v (4): 14 bytes.

The bfloat16 kernels widen and narrow with the bit operations of
:mod:`numadam.formats.bf16` (truncating, not rounding: the yardstick is the
cheapest body that moves the bytes), which a real kernel needs as well.
"""

import functools

import numpy as np
from numba import get_num_threads, njit, prange

import numadam
from numadam.bench.contenders import Contender, make_arrays, stream, task_bounds
from numadam.core.jitcache import CACHE
from numadam.core.math import float_bits
from numadam.formats.bf16 import to_float32

__all__ = ["BLOCK", "TRAFFIC", "STREAMS", "stream_full", "stream_bf16", "stream_8bit",
           "stream_bf16_params", "bf16_bits"]

BLOCK = 256     # elements per absmax of the 8-bit format

# Bytes moved per element by a step of each format over float32 parameters
# ("bf16 params": bfloat16 parameters and gradients with bfloat16 state).
TRAFFIC = {"full": 28.0, "bfloat16": 20.0, "8bit": 16.0 + 16.0 / BLOCK, "bf16 params": 14.0}


@njit(cache=CACHE, error_model="numpy", inline="always")
def _narrow(x):
    return np.uint16(float_bits(x) >> np.uint32(16))


def _bf16_state_body(p, g, m, v, a, b, nthreads):
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, 16)
        pp, gg, mm, vv = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(pp.size):
            gi = gg[i]
            pp[i] = pp[i] + a * gi
            mm[i] = _narrow(to_float32(mm[i]) * b + gi)
            vv[i] = _narrow(to_float32(vv[i]) * b + gi)


def _8bit_body(p, g, cm, cv, am, av, a, b, nthreads):
    # The elements, then the task's blocks' absmax values, each as one flat
    # loop: a loop per block of 256 ran 2.4x slower at 1e7 elements (in L3
    # cache), where the yardstick must not be the slower one.
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, BLOCK)
        pp, gg, mm, vv = p[lo:hi], g[lo:hi], cm[lo:hi], cv[lo:hi]
        for i in range(pp.size):
            pp[i] = pp[i] + a * gg[i]
            mm[i] = mm[i] ^ np.uint8(1)
            vv[i] = vv[i] ^ np.uint8(3)
        # lo is a multiple of BLOCK (or n, for an empty task past the end).
        first = lo // BLOCK
        last = (hi + BLOCK - 1) // BLOCK if hi > lo else first
        qm, qv = am[first:last], av[first:last]
        for k in range(qm.size):
            qm[k] = qm[k] * b
            qv[k] = qv[k] * b


def _bf16_params_body(p, g, m, v, a, b, nthreads):
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, 16)
        pp, gg, mm, vv = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(pp.size):
            gi = to_float32(gg[i])
            pp[i] = _narrow(to_float32(pp[i]) + a * gi)
            mm[i] = _narrow(to_float32(mm[i]) * b + gi)
            vv[i] = _narrow(to_float32(vv[i]) * b + gi)


def _compile(body):
    return {parallel: njit(parallel=parallel, cache=CACHE, error_model="numpy")(body)
            for parallel in (False, True)}


_KERNELS = {"bfloat16": _compile(_bf16_state_body), "8bit": _compile(_8bit_body),
            "bf16 params": _compile(_bf16_params_body)}


def bf16_bits(a):
    """The bfloat16 bits (uint16, truncated) of the float32 array ``a``."""
    return (a.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def _arrays(fmt, n):
    p, g, m, v = make_arrays([n] * 4, np.float32, 3)
    if fmt == "bfloat16":
        return p, g, bf16_bits(m), bf16_bits(v)
    if fmt == "bf16 params":
        return bf16_bits(p), bf16_bits(g), bf16_bits(m), bf16_bits(v)
    blocks = -(-n // BLOCK)
    codes = [np.zeros(n, np.uint8) for _ in range(2)]
    return (p, g, *codes, *make_arrays([blocks] * 2, np.float32, 4))


def _setup(sizes, dtype, amsgrad, fmt):
    """The step of ``fmt``'s kernel over ``sum(sizes)`` elements (float32
    parameters whatever ``dtype``; never AMSGrad)."""
    n = sum(sizes)
    parallel = n >= numadam.config.serial_below
    return functools.partial(_KERNELS[fmt][parallel], *_arrays(fmt, n), np.float32(1e-7),
                             np.float32(0.5), get_num_threads() if parallel else 1)


stream_full = Contender("stream full state (28 B)",
                        lambda sizes, dtype, amsgrad: stream.setup(sizes, np.float32, False), 4)
stream_bf16 = Contender("stream bfloat16 state (20 B)",
                        functools.partial(_setup, fmt="bfloat16"), 3)
stream_8bit = Contender("stream 8-bit state (16.06 B)", functools.partial(_setup, fmt="8bit"),
                        2.5)
stream_bf16_params = Contender("stream bf16 params + state (14 B)",
                               functools.partial(_setup, fmt="bf16 params"), 2)
STREAMS = {"full": stream_full, "bfloat16": stream_bf16, "8bit": stream_8bit,
           "bf16 params": stream_bf16_params}
