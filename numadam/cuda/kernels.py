"""CUDA kernels: one launch updates every array of a bucket.

The layout is the CPU backend's (see :mod:`numadam.cpu.kernels`): an int64 ``table``
with one row per parameter (addresses of the user's parameter and gradient,
offset and size in the bucket's state, step, live flag) and a 2-D ``state``
of shape ``(2 or 3, total)``. The scalars are built on the host by the very
function the CPU kernels call (``_cpu._prepare``), so the bias corrections
are the same float64 ``pow`` rounded once. The element math is
:func:`numadam.core.math.adam_element`, the one definition both targets compile;
its products are ``mul_rn`` and its fused multiply-adds ``fma``, so the
GPU's arithmetic is the CPU's, operation for operation.

One thread updates ``VEC`` = 4 consecutive elements of the concatenated
parameter space and finds their parameter by binary search over the offsets
(the table is small and cached), so a bucket of any number of arrays is one
launch. Device buckets start every parameter's state at a multiple of
``VEC`` (:class:`numadam.cuda.bucket.DeviceBucket` pads the layout), so
where the user's parameter and gradient are 16-byte aligned (every fresh
allocation is) the thread moves its elements with 16-byte loads and stores
(``ld.global.v4.f32``, or two ``v2.f64``): four times fewer memory
instructions, more bytes in flight per thread. Unaligned arrays (views at an
odd offset) and the last partial group of a parameter take the element path.

The scalars reach the kernel by value when every parameter of the bucket is
at the same step (the usual case): then a step needs no copy to the device
at all, and :mod:`numadam.cuda.launch` can launch it with one driver call.
When steps differ (a parameter skipped a step) the per-parameter rows of
``scal`` are uploaded and read instead.

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
from llvmlite import ir
from numba import cuda, types
from numba.core import config as numba_config
from numba.extending import intrinsic

from numadam.cpu.kernels import NCOLS, OFFSET, PTR_G, PTR_P, SIZE, _first_param
from numadam.core.jitcache import CACHE
from numadam.core.math import NSCALARS, adam_element, loop_scalars

__all__ = ["SIMULATED", "VEC", "VEC_BYTES", "step_signature", "step_kernel", "step_grid",
           "launch_step", "first_nonfinite", "fill", "NCOLS"]

SIMULATED = bool(numba_config.ENABLE_CUDASIM)
VEC = 4            # elements a thread updates
VEC_BYTES = 16     # the alignment a vector access needs


# ------------------------------------------------------------------ accesses
def _element_pointer(context, builder, dtype, address, index):
    # Address space 1 (global): a user's array is device memory, and saying so
    # gives ld.global / st.global instead of generic accesses.
    pointer = builder.inttoptr(address, context.get_value_type(dtype).as_pointer(1))
    return builder.gep(pointer, [index])


def _row_pointer(context, builder, arytype, ary, row, col):
    """Pointer to element ``[row, col]`` of a C-contiguous 2-D array."""
    array = context.make_array(arytype)(context, builder, value=ary)
    ncols = builder.extract_value(array.shape, 1)
    return builder.gep(array.data, [builder.add(builder.mul(row, ncols), col)])


def _vector_type(context, dtype):
    return ir.VectorType(context.get_value_type(dtype), VEC)


def _load_vector(context, builder, dtype, pointer):
    vector = _vector_type(context, dtype)
    value = builder.load(builder.bitcast(pointer, vector.as_pointer(pointer.type.addrspace)),
                         align=VEC_BYTES)
    lanes = [builder.extract_element(value, ir.Constant(ir.IntType(32), q)) for q in range(VEC)]
    return context.make_tuple(builder, types.UniTuple(dtype, VEC), lanes)


def _store_vector(context, builder, dtype, pointer, values):
    vector = _vector_type(context, dtype)
    value = ir.Constant(vector, ir.Undefined)
    for q in range(VEC):
        value = builder.insert_element(value, builder.extract_value(values, q),
                                       ir.Constant(ir.IntType(32), q))
    builder.store(value, builder.bitcast(pointer, vector.as_pointer(pointer.type.addrspace)),
                  align=VEC_BYTES)


def _is_lanes(values, dtype):
    return isinstance(values, types.UniTuple) and values.count == VEC and values.dtype == dtype


def _is_address_access(address, index, like):
    """The types of ``(address, index, like)`` an address load or store takes."""
    return (isinstance(address, types.Integer) and isinstance(index, types.Integer)
            and isinstance(like, types.Array))


def _is_row_access(array, row, col):
    """The types of ``(array, row, col)`` a row vector load or store takes."""
    return (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"
            and isinstance(row, types.Integer) and isinstance(col, types.Integer))


def _row_args_pointer(context, builder, signature, args):
    """Pointer to ``array[row, col]`` from an intrinsic's ``(array, row, col, ...)``."""
    row = context.cast(builder, args[1], signature.args[1], types.intp)
    col = context.cast(builder, args[2], signature.args[2], types.intp)
    return _row_pointer(context, builder, signature.args[0], args[0], row, col)


@intrinsic
def _device_load(typingctx, address, index, like):
    """Element ``index`` of the array of ``like``'s dtype at ``address``."""
    if not _is_address_access(address, index, like):
        return None
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        return builder.load(_element_pointer(context, builder, dtype, args[0], args[1]))

    return dtype(address, index, like), codegen


@intrinsic
def _device_store(typingctx, address, index, value, like):
    """Write ``value`` to element ``index`` of the array of ``like``'s dtype at ``address``."""
    if not (_is_address_access(address, index, like) and like.dtype == value):
        return None

    def codegen(context, builder, signature, args):
        builder.store(args[2], _element_pointer(context, builder, value, args[0], args[1]))
        return context.get_dummy_value()

    return types.void(address, index, value, like), codegen


@intrinsic
def _device_load_vec(typingctx, address, index, like):
    """Elements ``index .. index+3`` at ``address`` in one 16-byte-aligned access."""
    if not _is_address_access(address, index, like):
        return None
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, dtype, args[0], args[1])
        return _load_vector(context, builder, dtype, pointer)

    return types.UniTuple(dtype, VEC)(address, index, like), codegen


@intrinsic
def _device_store_vec(typingctx, address, index, values, like):
    """Write the 4 ``values`` to ``index ..`` at ``address`` in one aligned access."""
    if not (_is_address_access(address, index, like) and _is_lanes(values, like.dtype)):
        return None
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, dtype, args[0], args[1])
        _store_vector(context, builder, dtype, pointer, args[2])
        return context.get_dummy_value()

    return types.void(address, index, values, like), codegen


@intrinsic
def _device_row_load_vec(typingctx, array, row, col):
    """``array[row, col:col+4]`` of a C-contiguous 2-D array, in one aligned access."""
    if not _is_row_access(array, row, col):
        return None

    def codegen(context, builder, signature, args):
        pointer = _row_args_pointer(context, builder, signature, args)
        return _load_vector(context, builder, array.dtype, pointer)

    return types.UniTuple(array.dtype, VEC)(array, row, col), codegen


@intrinsic
def _device_row_store_vec(typingctx, array, row, col, values):
    """``array[row, col:col+4] = values`` in one aligned access."""
    if not (_is_row_access(array, row, col) and _is_lanes(values, array.dtype)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _row_args_pointer(context, builder, signature, args)
        _store_vector(context, builder, array.dtype, pointer, args[3])
        return context.get_dummy_value()

    return types.void(array, row, col, values), codegen


_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def _host_elements(address, count, dtype):
    pointer = ctypes.cast(int(address), ctypes.POINTER(_CTYPES[np.dtype(dtype)]))
    return np.ctypeslib.as_array(pointer, shape=(int(count),))


def _simulated_load(address, index, like):
    return _host_elements(address, index + 1, like.dtype)[index]


def _simulated_store(address, index, value, like):
    # The CPU-compiled element math returns Python floats; ``like`` gives the dtype.
    _host_elements(address, index + 1, like.dtype)[index] = value


def _simulated_load_vec(address, index, like):
    assert int(address + index * like.dtype.itemsize) % VEC_BYTES == 0, "unaligned vector load"
    return tuple(_host_elements(address, index + VEC, like.dtype)[index:index + VEC])


def _simulated_store_vec(address, index, values, like):
    assert int(address + index * like.dtype.itemsize) % VEC_BYTES == 0, "unaligned vector store"
    _host_elements(address, index + VEC, like.dtype)[index:index + VEC] = values


def _simulated_row_load_vec(array, row, col):
    return tuple(array[row, col + q] for q in range(VEC))


def _simulated_row_store_vec(array, row, col, values):
    for q in range(VEC):
        array[row, col + q] = values[q]


if SIMULATED:
    _load, _store = _simulated_load, _simulated_store
    _load_vec, _store_vec = _simulated_load_vec, _simulated_store_vec
    _row_load_vec, _row_store_vec = _simulated_row_load_vec, _simulated_row_store_vec
    _find, _scalars = _first_param.py_func, loop_scalars.py_func
else:
    _load, _store = _device_load, _device_store
    _load_vec, _store_vec = _device_load_vec, _device_store_vec
    _row_load_vec, _row_store_vec = _device_row_load_vec, _device_row_store_vec
    _find, _scalars = _first_param, loop_scalars


# ------------------------------------------------------------------- kernels
@cuda.jit(device=True)
def _lane(p, g, m, v, vmax, sc, amsgrad, decoupled):
    (neg_step, bc2_sqrt, eps, wd, lerp_w, lerp_small, c2, beta2, decay, sign) = sc
    return adam_element(p, g, m, v, vmax, neg_step, bc2_sqrt, eps, wd, lerp_w, lerp_small,
                        c2, beta2, decay, sign, amsgrad, decoupled)


@cuda.jit(device=True)
def _update_vector(address_p, address_g, state, i, j, sc, amsgrad, decoupled):
    """Elements ``j .. j+3`` of one parameter (state columns ``i ..``), 16-byte accesses."""
    p = _load_vec(address_p, j, state)
    g = _load_vec(address_g, j, state)
    m = _row_load_vec(state, 0, i)
    v = _row_load_vec(state, 1, i)
    x = _row_load_vec(state, 2, i) if amsgrad else v
    p0, m0, v0, x0 = _lane(p[0], g[0], m[0], v[0], x[0], sc, amsgrad, decoupled)
    p1, m1, v1, x1 = _lane(p[1], g[1], m[1], v[1], x[1], sc, amsgrad, decoupled)
    p2, m2, v2, x2 = _lane(p[2], g[2], m[2], v[2], x[2], sc, amsgrad, decoupled)
    p3, m3, v3, x3 = _lane(p[3], g[3], m[3], v[3], x[3], sc, amsgrad, decoupled)
    _row_store_vec(state, 0, i, (m0, m1, m2, m3))
    _row_store_vec(state, 1, i, (v0, v1, v2, v3))
    if amsgrad:
        _row_store_vec(state, 2, i, (x0, x1, x2, x3))
    _store_vec(address_p, j, (p0, p1, p2, p3), state)


@cuda.jit(device=True)
def _update_element(address_p, address_g, state, i, j, sc, amsgrad, decoupled):
    """Element ``j`` of one parameter (state column ``i``)."""
    p = _load(address_p, j, state)
    g = _load(address_g, j, state)
    x = state[2, i] if amsgrad else state[1, i]
    p, m, v, x = _lane(p, g, state[0, i], state[1, i], x, sc, amsgrad, decoupled)
    state[0, i] = m
    state[1, i] = v
    if amsgrad:
        state[2, i] = x
    _store(address_p, j, p, state)


@cuda.jit(cache=CACHE)
def _step_kernel(table, scal, state, uniform, s, amsgrad, maximize, decoupled):
    i = cuda.grid(1) * VEC
    if i >= state.shape[1]:
        return
    k = _find(table, i)
    address_g = table[k, PTR_G]
    j = i - table[k, OFFSET]
    size = table[k, SIZE]
    if address_g == 0 or j >= size:       # no gradient, or the padding after a parameter
        return
    address_p = table[k, PTR_P]
    if uniform:
        sc = _scalars(s, maximize)
    else:
        sc = _scalars(scal[k], maximize)
    if j + VEC <= size and (address_p | address_g) % VEC_BYTES == 0:
        _update_vector(address_p, address_g, state, i, j, sc, amsgrad, decoupled)
    else:
        for q in range(min(VEC, size - j)):
            _update_element(address_p, address_g, state, i + q, j + q, sc, amsgrad, decoupled)


@cuda.jit
def _nonfinite_kernel(table, like, total, out):
    i = cuda.grid(1)
    if i >= total:
        return
    k = _find(table, i)
    j = i - table[k, OFFSET]
    if table[k, PTR_G] == 0 or j >= table[k, SIZE]:
        return
    g = _load(table[k, PTR_G], j, like)
    if g - g != 0:
        cuda.atomic.min(out, 0, k)


@cuda.jit
def _fill_kernel(flat, value):
    i = cuda.grid(1)
    if i < flat.shape[0]:
        flat[i] = value


# ------------------------------------------------------------------ launches
def _grid(n, threads):
    return max(1, (n + threads - 1) // threads), threads


def step_signature(dtype):
    """The one signature of the step kernel for ``dtype`` (what every launch uses)."""
    element = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    return (types.int64[:, ::1], element[:, ::1], element[:, ::1], types.boolean,
            types.UniTuple(element, NSCALARS), types.boolean, types.boolean, types.boolean)


step_kernel = _step_kernel


def step_grid(total, threads):
    """``(blocks, threads)`` of a step over ``total`` padded columns."""
    return _grid((total + VEC - 1) // VEC, threads)


def launch_step(table, scal, state, uniform, s, amsgrad, maximize, decoupled, stream,
                threads):
    """Launch one update through Numba's launcher (``s``: NumPy scalars of the dtype)."""
    blocks, threads = step_grid(state.shape[1], threads)
    _step_kernel[blocks, threads, stream](table, scal, state, bool(uniform), tuple(s),
                                          bool(amsgrad), bool(maximize), bool(decoupled))


def first_nonfinite(table, like, flag, total, stream, threads):
    """Row of the first parameter whose gradient holds NaN or Inf, or -1 (waits).

    ``like``: an empty device array of the dtype; ``flag``: a device int64[1].
    """
    n = table.shape[0]
    flag.copy_to_device(np.array([n], np.int64), stream=stream)
    blocks, threads = _grid(total, threads)
    _nonfinite_kernel[blocks, threads, stream](table, like, total, flag)
    host = flag.copy_to_host(stream=stream)
    stream.synchronize()
    row = int(host[0])
    return -1 if row == n else row


def fill(flat, value, stream, threads):
    """Set every element of the 1-D device array ``flat`` to ``value``."""
    if flat.shape[0]:
        blocks, threads = _grid(flat.shape[0], threads)
        _fill_kernel[blocks, threads, stream](flat, flat.dtype.type(value))
