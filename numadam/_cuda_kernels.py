"""CUDA kernels: one launch updates every array of a bucket.

The layout is the CPU backend's (see :mod:`numadam._cpu`): an int64 ``table``
with one row per parameter (addresses of the user's parameter and gradient,
offset and size in the bucket's state, step, live flag), a 2-D ``state`` of
shape ``(2 or 3, total)``, and the per-parameter scalar vectors built on the
host by the very function the CPU kernels call (``_cpu._prepare``), so the
bias corrections are the same float64 ``pow`` rounded once. The element math
is :func:`numadam._math.adam_element`, the one definition both targets
compile; its products are ``mul_rn`` and its fused multiply-adds ``fma``, so
the GPU's arithmetic is the CPU's, operation for operation.

One thread updates one element of the concatenated parameter space and finds
its parameter by binary search over the offsets (the table is small and
cached), so a bucket of any number of arrays is one launch.

Importing this module imports ``numba.cuda``; nothing imports it before a
device array reaches an optimizer.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as
Python: the helpers that take arrays run as their Python source, the element
math runs as the CPU-compiled :func:`adam_element` on scalars, and loads and
stores through the table's addresses go through ``ctypes``. The simulator
therefore checks the kernels' indexing, addressing and launch logic, not the
device's arithmetic.
"""

import ctypes

import numpy as np
from numba import cuda, types
from numba.core import config as numba_config
from numba.extending import intrinsic

from ._cpu import NCOLS, OFFSET, PTR_G, PTR_P, _first_param
from ._math import adam_element, loop_scalars

__all__ = ["SIMULATED", "step", "first_nonfinite", "fill", "NCOLS"]

SIMULATED = bool(numba_config.ENABLE_CUDASIM)


@intrinsic
def _device_load(typingctx, address, index, like):
    """Element ``index`` of the array of ``like``'s dtype at ``address``."""
    if not (isinstance(address, types.Integer) and isinstance(index, types.Integer)
            and isinstance(like, types.Array)):
        return None
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], context.get_value_type(dtype).as_pointer())
        return builder.load(builder.gep(pointer, [args[1]]))

    return dtype(address, index, like), codegen


@intrinsic
def _device_store(typingctx, address, index, value, like):
    """Write ``value`` to element ``index`` of the array of ``like``'s dtype at ``address``."""
    if not (isinstance(address, types.Integer) and isinstance(index, types.Integer)
            and isinstance(value, types.Float) and isinstance(like, types.Array)
            and like.dtype == value):
        return None

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], context.get_value_type(value).as_pointer())
        builder.store(args[2], builder.gep(pointer, [args[1]]))
        return context.get_dummy_value()

    return types.void(address, index, value, like), codegen


_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def _host_element(address, index, dtype):
    pointer = ctypes.cast(int(address), ctypes.POINTER(_CTYPES[np.dtype(dtype)]))
    return np.ctypeslib.as_array(pointer, shape=(int(index) + 1,))


def _simulated_load(address, index, like):
    return _host_element(address, index, like.dtype)[index]


def _simulated_store(address, index, value, like):
    # The CPU-compiled element math returns Python floats; ``like`` gives the dtype.
    _host_element(address, index, like.dtype)[index] = value


if SIMULATED:
    _load, _store = _simulated_load, _simulated_store
    _find, _scalars = _first_param.py_func, loop_scalars.py_func
else:
    _load, _store = _device_load, _device_store
    _find, _scalars = _first_param, loop_scalars


@cuda.jit
def _step_kernel(table, scal, state, amsgrad, maximize, decoupled):
    i = cuda.grid(1)
    if i >= state.shape[1]:
        return
    k = _find(table, i)
    if table[k, PTR_G] == 0:
        return
    j = i - table[k, OFFSET]
    (neg_step, bc2_sqrt, eps, wd, lerp_w, lerp_small, c2, beta2, decay,
     sign) = _scalars(scal[k], maximize)
    p = _load(table[k, PTR_P], j, state)
    g = _load(table[k, PTR_G], j, state)
    if amsgrad:
        p, m, v, vmax = adam_element(
            p, g, state[0, i], state[1, i], state[2, i], neg_step, bc2_sqrt, eps, wd,
            lerp_w, lerp_small, c2, beta2, decay, sign, True, decoupled)
        state[2, i] = vmax
    else:
        p, m, v, _ = adam_element(
            p, g, state[0, i], state[1, i], eps, neg_step, bc2_sqrt, eps, wd,
            lerp_w, lerp_small, c2, beta2, decay, sign, False, decoupled)
    state[0, i] = m
    state[1, i] = v
    _store(table[k, PTR_P], j, p, state)


@cuda.jit
def _nonfinite_kernel(table, like, total, out):
    i = cuda.grid(1)
    if i >= total:
        return
    k = _find(table, i)
    if table[k, PTR_G] == 0:
        return
    g = _load(table[k, PTR_G], i - table[k, OFFSET], like)
    if g - g != 0:
        cuda.atomic.min(out, 0, k)


@cuda.jit
def _fill_kernel(flat, value):
    i = cuda.grid(1)
    if i < flat.shape[0]:
        flat[i] = value


def _grid(n, threads):
    return max(1, (n + threads - 1) // threads), threads


def step(table, scal, state, amsgrad, maximize, decoupled, stream, threads):
    """Launch one update of a bucket (device ``table``, ``scal`` and ``state``)."""
    blocks, threads = _grid(state.shape[1], threads)
    _step_kernel[blocks, threads, stream](table, scal, state, amsgrad, maximize, decoupled)


def first_nonfinite(table, like, total, stream, threads):
    """Row of the first parameter whose gradient holds NaN or Inf, or -1 (waits)."""
    n = table.shape[0]
    out = cuda.to_device(np.array([n], np.int64), stream=stream)
    blocks, threads = _grid(total, threads)
    _nonfinite_kernel[blocks, threads, stream](table, like, total, out)
    host = out.copy_to_host(stream=stream)
    stream.synchronize()
    row = int(host[0])
    return -1 if row == n else row


def fill(flat, value, stream, threads):
    """Set every element of the 1-D device array ``flat`` to ``value``."""
    if flat.shape[0]:
        blocks, threads = _grid(flat.shape[0], threads)
        _fill_kernel[blocks, threads, stream](flat, flat.dtype.type(value))
