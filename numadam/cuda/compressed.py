"""CUDA kernels for compressed state: the GPU twins of :mod:`numadam.cpu.compressed`.

The same rule functions (``loop_scalars``, ``element``) and the same format
functions (:mod:`numadam.formats.bf16`, :mod:`numadam.formats.dynamic8`),
compiled again for the device, so a step stores the CPU's bits:

- bfloat16 state: one thread an element; the state row is ``uint16``,
  widened by :func:`~numadam.formats.bf16.to_float32` and narrowed by
  :func:`~numadam.formats.bf16.round_nearest` (integer operations, the
  same on both targets).
- 8-bit state: one CUDA block of :data:`~numadam.formats.BLOCK` threads per
  quantisation block. Every parameter's state starts at a multiple of the
  block (:class:`numadam.cuda.compressed_bucket.CompressedDeviceBucket`
  pads the layout), so CUDA block ``b`` is state columns ``[256 b, 256 b +
  256)`` of one parameter. Each thread decodes its element, runs the
  element and writes the parameter; the block's new absmax per row is a
  shared-memory tree reduction of a max and an OR of ``(x - x) != 0`` (NaN
  when any value is not finite, as the CPU's two reductions give); then
  each thread encodes its own value. The maximum of finite values does not
  depend on the order it is taken in, so the tree gives the CPU's absmax.

The products ``code value * absmax`` and ``x * (1 / absmax)`` are
:func:`~numadam.core.math.mul_rn` on the device: NVVM would otherwise fuse
the first into an add of the element, and the CPU never fuses.

Only Numba's launcher launches these kernels (the driver launch of
:mod:`numadam.cuda.launch` serves full state).

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python
with the CPU-compiled format and element functions, which return Python
floats: every value is cast back to float32 before it is used, and the
products are NumPy float32 products (correctly rounded, as ``mul.rn``).
"""

import functools
from collections import namedtuple

import numpy as np
from numba import cuda, njit, types
from numba.core import config as numba_config

from numadam.core.jitcache import CACHE
from numadam.core.math import mul_rn
from numadam.cpu.kernels import OFFSET, PTR_G, PTR_P, SIZE
from numadam.cuda import kernels as _cuda_kernels
from numadam.cuda.kernels import _find, _instantiate, _load, _store, device_element
from numadam.formats import BLOCK
from numadam.formats.bf16 import round_nearest, to_float32
from numadam.formats.dynamic8 import (decode_signed, decode_unsigned, encode_signed,
                                      encode_unsigned)

__all__ = ["kernels", "Kernels", "Step16Args", "Step8Args", "signature16", "signature8",
           "launch16", "launch8"]


def _simulated_mul(a, b):
    return np.float32(a) * np.float32(b)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _decode(code, signed):
    return decode_signed(code) if signed else decode_unsigned(code)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _encode(y, signed):
    return encode_signed(y) if signed else encode_unsigned(y)


# ------------------------------------------------------------------ templates
# Compiled once per rule by :func:`kernels`, as numadam.cuda.kernels' templates.

def _templates(stamp):
    def _step16(table, scal, state, like, uniform, s, flags):
        """One update of a bucket with bfloat16 state: one element a thread.
        ``like``: an empty float32 array (the parameters' dtype)."""
        stamp  # noqa: B018 (the cache key)
        i = cuda.grid(1)
        if i >= state.shape[1]:
            return
        k = _find(table, i)
        address_g = table[k, PTR_G]
        j = i - table[k, OFFSET]
        if address_g == 0 or j >= table[k, SIZE]:   # no gradient, or padding
            return
        address_p = table[k, PTR_P]
        nrows = state.shape[0]
        if uniform:
            sc = loop_scalars(s, flags)
        else:
            sc = loop_scalars(scal[k], flags)
        p = np.float32(_load(address_p, j, like))
        g = np.float32(_load(address_g, j, like))
        a = np.float32(to_float32(state[0, i])) if nrows > 0 else g
        b = np.float32(to_float32(state[1, i])) if nrows > 1 else a
        c = np.float32(to_float32(state[2, i])) if nrows > 2 else a
        p, a, b, c = element(p, g, a, b, c, sc, flags)
        if nrows > 0:
            state[0, i] = round_nearest(np.float32(a))
        if nrows > 1:
            state[1, i] = round_nearest(np.float32(b))
        if nrows > 2:
            state[2, i] = round_nearest(np.float32(c))
        _store(address_p, j, np.float32(p), like)

    def _step8(table, scal, state, amax, total, like, signed, uniform, s, flags):
        """One update of a bucket with 8-bit state: CUDA block ``b`` is
        quantisation block ``b`` (launched with ``BLOCK`` threads). ``state``:
        the uint8 rows (``total`` codes, then the absmax bytes); ``amax``:
        the same memory as float32, so block ``b``'s absmax of row ``r`` is
        ``amax[r, total // 4 + b]``; ``signed``: which map each row uses."""
        stamp  # noqa: B018
        blk = cuda.blockIdx.x
        t = cuda.threadIdx.x
        i = blk * BLOCK + t
        k = _find(table, blk * BLOCK)
        address_g = table[k, PTR_G]
        if address_g == 0:      # the whole block is this parameter's: all threads leave
            return
        j = i - table[k, OFFSET]
        live = j < table[k, SIZE]   # else padding after the parameter's last element
        nrows = state.shape[0]
        if uniform:
            sc = loop_scalars(s, flags)
        else:
            sc = loop_scalars(scal[k], flags)
        column = total // 4 + blk
        address_p = table[k, PTR_P]
        p = np.float32(_load(address_p, j, like)) if live else np.float32(0)
        g = np.float32(_load(address_g, j, like)) if live else np.float32(0)
        a = mul(np.float32(_decode(state[0, i], signed[0])), amax[0, column]) \
            if nrows > 0 else g
        b = mul(np.float32(_decode(state[1, i], signed[1])), amax[1, column]) \
            if nrows > 1 else a
        c = mul(np.float32(_decode(state[2, i], signed[2])), amax[2, column]) \
            if nrows > 2 else a
        p, a, b, c = element(p, g, a, b, c, sc, flags)
        if live:
            _store(address_p, j, np.float32(p), like)
        if nrows == 0:
            return
        # Padding takes no part in the absmax and is never written.
        values = (np.float32(a) if live else np.float32(0),
                  np.float32(b) if live else np.float32(0),
                  np.float32(c) if live else np.float32(0))
        top = cuda.shared.array((3, BLOCK), np.float32)
        bad = cuda.shared.array((3, BLOCK), np.int32)
        for r in range(3):
            x = abs(values[r])
            top[r, t] = x
            bad[r, t] = np.int32((x - x) != 0)
        cuda.syncthreads()
        half = BLOCK // 2
        while half > 0:
            if t < half:
                for r in range(3):
                    top[r, t] = max(top[r, t], top[r, t + half])
                    bad[r, t] = bad[r, t] | bad[r, t + half]
            cuda.syncthreads()
            half //= 2
        for r in range(3):
            if r < nrows:
                m = np.float32(np.nan) if bad[r, 0] else top[r, 0]
                inv = np.float32(1) / m if m > 0 else np.float32(0)
                if m != m:
                    inv = m     # every code then decodes to NaN, as on the CPU
                if live:
                    state[r, i] = _encode(mul(values[r], inv), signed[r])
                if t == 0:
                    amax[r, column] = m

    return dict(step16=_step16, step8=_step8)


Kernels = namedtuple("Kernels", "step16 step8")
Kernels.__doc__ = "The compiled compressed-state CUDA kernels of one rule."

# The kernels' arguments, by name.
Step16Args = namedtuple("Step16Args", "table scal state like uniform s flags")
Step8Args = namedtuple("Step8Args", "table scal state amax total like signed uniform s flags")


@functools.lru_cache(maxsize=None)
def kernels(rule):
    """The compressed-state CUDA kernels of ``rule``; nothing compiles until
    the first launch or :meth:`CompressedDeviceBucket.ready`."""
    if numba_config.ENABLE_CUDASIM:
        namespace = dict(globals(), element=device_element(rule),
                         loop_scalars=rule.loop_scalars.py_func, mul=_simulated_mul)
    else:
        namespace = dict(globals(), element=rule.element, loop_scalars=rule.loop_scalars,
                         mul=mul_rn)
    templates = _templates(rule.stamp())
    return Kernels(step16=_instantiate(templates["step16"], namespace),
                   step8=_instantiate(templates["step8"], namespace))


def _common(rule):
    base = _cuda_kernels.step_signature(rule, np.float32)
    return base.table, base.scal, base.s, base.flags


def signature16(rule):
    """The one signature of ``rule``'s bfloat16-state kernel, as :class:`Step16Args`."""
    table, scal, s, flags = _common(rule)
    return Step16Args(table=table, scal=scal, state=types.uint16[:, ::1],
                      like=types.float32[::1], uniform=types.boolean, s=s, flags=flags)


def signature8(rule):
    """The one signature of ``rule``'s 8-bit-state kernel, as :class:`Step8Args`."""
    table, scal, s, flags = _common(rule)
    return Step8Args(table=table, scal=scal, state=types.uint8[:, ::1],
                     amax=types.float32[:, ::1], total=types.int64, like=types.float32[::1],
                     signed=types.UniTuple(types.boolean, 3), uniform=types.boolean, s=s,
                     flags=flags)


def launch16(kernel, args, stream, threads):
    """Launch the bfloat16-state kernel with :class:`Step16Args` ``args``."""
    blocks, threads = _cuda_kernels._grid(args.state.shape[1], threads)
    kernel[blocks, threads, stream](args.table, args.scal, args.state, args.like,
                                    bool(args.uniform), tuple(args.s),
                                    tuple(bool(f) for f in args.flags))


def launch8(kernel, args, stream):
    """Launch the 8-bit-state kernel with :class:`Step8Args` ``args``: one
    block of ``BLOCK`` threads per quantisation block."""
    kernel[max(1, int(args.total) // BLOCK), BLOCK, stream](
        args.table, args.scal, args.state, args.amax, int(args.total), args.like,
        tuple(bool(x) for x in args.signed), bool(args.uniform), tuple(args.s),
        tuple(bool(f) for f in args.flags))
