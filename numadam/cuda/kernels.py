"""CUDA kernels: one launch updates every array of a bucket, for any rule.

The twin of :mod:`numadam.cpu.kernels`, with the same layout: an int64
``table`` with one row per parameter (addresses of the user's parameter and
gradient, offset and size in the bucket's state, step, live flag) and a 2-D
``state`` of shape ``(rows, total)``, one row per state array of the rule
that exists (none for SGD without momentum). The kernels of a rule are made
by :func:`kernels` from templates in this module that call the rule's own
``loop_scalars`` and ``element`` (:mod:`numadam.core.rule`), which Numba
compiles again for the device; their products are ``mul_rn`` and their fused
multiply-adds ``fma`` (:mod:`numadam.core.math`), so the GPU's arithmetic is
the CPU's, operation for operation. The scalars are built on the host by the
CPU kernels' ``prepare_uniform``, the same float64 arithmetic rounded once.

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
math runs as the rule's CPU-compiled ``element`` on scalars (with CUDA's
square root, see :func:`device_element`), and loads and stores through
the table's addresses go through ``ctypes``. The simulator therefore checks
the kernels' indexing, addressing and launch logic, not the device's
arithmetic.
"""

import ctypes
import functools
import math
import types as pytypes
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import cuda, types
from numba.core import config as numba_config
from numba.extending import intrinsic

from numadam.core.jitcache import CACHE
from numadam.cpu.kernels import OFFSET, PTR_G, PTR_P, SIZE, _first_param

__all__ = ["SIMULATED", "VEC", "VEC_BYTES", "kernels", "Kernels", "StepArgs", "step_signature",
           "step_grid", "launch_step", "first_nonfinite", "fill", "device_element"]

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
    _find = _first_param.py_func
else:
    _load, _store = _device_load, _device_store
    _load_vec, _store_vec = _device_load_vec, _device_store_vec
    _row_load_vec, _row_store_vec = _device_row_load_vec, _device_row_store_vec
    _find = _first_param


# ------------------------------------------------------------------ templates
#
# The twins of numadam.cpu.kernels' templates, compiled once per rule by
# :func:`kernels` with a globals dict of their own (``element``,
# ``loop_scalars`` and the device functions they call); the closure holds only
# the rule's cache stamp, which keys each rule's build apart in Numba's disk
# cache (see numadam.cpu.kernels).

def _templates(stamp):
    def _update_vector(address_p, address_g, state, nrows, i, j, sc, flags):
        """Elements ``j .. j+3`` of one parameter (state columns ``i ..``),
        16-byte accesses. Rows beyond ``nrows`` do not exist: values already
        loaded (the gradient, or row 0) stand in for them and they are never
        written, as in the CPU template."""
        stamp  # noqa: B018 (the cache key)
        p = _load_vec(address_p, j, state)
        g = _load_vec(address_g, j, state)
        a = _row_load_vec(state, 0, i) if nrows > 0 else g
        b = _row_load_vec(state, 1, i) if nrows > 1 else a
        c = _row_load_vec(state, 2, i) if nrows > 2 else a
        p0, a0, b0, c0 = element(p[0], g[0], a[0], b[0], c[0], sc, flags)
        p1, a1, b1, c1 = element(p[1], g[1], a[1], b[1], c[1], sc, flags)
        p2, a2, b2, c2 = element(p[2], g[2], a[2], b[2], c[2], sc, flags)
        p3, a3, b3, c3 = element(p[3], g[3], a[3], b[3], c[3], sc, flags)
        if nrows > 0:
            _row_store_vec(state, 0, i, (a0, a1, a2, a3))
        if nrows > 1:
            _row_store_vec(state, 1, i, (b0, b1, b2, b3))
        if nrows > 2:
            _row_store_vec(state, 2, i, (c0, c1, c2, c3))
        _store_vec(address_p, j, (p0, p1, p2, p3), state)

    def _update_element(address_p, address_g, state, nrows, i, j, sc, flags):
        """Element ``j`` of one parameter (state column ``i``)."""
        stamp  # noqa: B018
        p = _load(address_p, j, state)
        g = _load(address_g, j, state)
        a = state[0, i] if nrows > 0 else g
        b = state[1, i] if nrows > 1 else a
        c = state[2, i] if nrows > 2 else a
        p, a, b, c = element(p, g, a, b, c, sc, flags)
        if nrows > 0:
            state[0, i] = a
        if nrows > 1:
            state[1, i] = b
        if nrows > 2:
            state[2, i] = c
        _store(address_p, j, p, state)

    def _step(table, scal, state, uniform, s, flags):
        """One update of a bucket: ``VEC`` elements a thread. ``s``: the
        scalars when ``uniform``, else row ``k`` of ``scal`` is parameter
        ``k``'s."""
        stamp  # noqa: B018
        i = cuda.grid(1) * VEC
        if i >= state.shape[1]:
            return
        k = _find(table, i)
        address_g = table[k, PTR_G]
        j = i - table[k, OFFSET]
        size = table[k, SIZE]
        if address_g == 0 or j >= size:     # no gradient, or the padding after a parameter
            return
        address_p = table[k, PTR_P]
        nrows = state.shape[0]
        if uniform:
            sc = loop_scalars(s, flags)
        else:
            sc = loop_scalars(scal[k], flags)
        if j + VEC <= size and (address_p | address_g) % VEC_BYTES == 0:
            update_vector(address_p, address_g, state, nrows, i, j, sc, flags)
        else:
            for q in range(min(VEC, size - j)):
                update_element(address_p, address_g, state, nrows, i + q, j + q, sc, flags)

    return dict(update_vector=_update_vector, update_element=_update_element, step=_step)


# name -> options of the compiled function; device functions first (a
# template's globals must hold the compiled functions it calls).
_BUILD = (("update_vector", dict(device=True)), ("update_element", dict(device=True)),
          ("step", dict(cache=CACHE)))

Kernels = namedtuple("Kernels", [name for name, _ in _BUILD])
Kernels.__doc__ = "The compiled CUDA kernels of one rule (see :func:`kernels`)."

# The arguments of the step kernel, by name (the driver launch sets them so).
StepArgs = namedtuple("StepArgs", "table scal state uniform s flags")


def _instantiate(function, namespace, **options):
    """``function`` compiled for CUDA with ``namespace`` as its globals."""
    name = function.__name__.lstrip("_")
    clone = pytypes.FunctionType(function.__code__, namespace, name,
                                 function.__defaults__, function.__closure__)
    clone.__qualname__ = function.__qualname__
    clone.__doc__ = function.__doc__
    clone.__module__ = function.__module__
    return cuda.jit(**options)(clone)


@functools.lru_cache(maxsize=None)
def kernels(rule):
    """The CUDA kernels of ``rule`` (an :class:`~numadam.core.rule.UpdateRule`).

    They call the rule's own ``loop_scalars`` and ``element`` (Numba compiles
    the CPU functions again for the device); nothing compiles until the first
    launch, or :meth:`numadam.cuda.bucket.DeviceBucket.ready`, asks for the
    signature of :func:`step_signature`.
    """
    if numba_config.ENABLE_CUDASIM:    # not SIMULATED, which tests patch to reach the driver path
        namespace = dict(globals(), element=device_element(rule),
                         loop_scalars=rule.loop_scalars.py_func)
    else:
        namespace = dict(globals(), element=rule.element, loop_scalars=rule.loop_scalars)
    templates = _templates(rule.stamp())
    built = {}
    for name, options in _BUILD:
        built[name] = namespace[name] = _instantiate(templates[name], namespace, **options)
    return Kernels(**built)


@functools.lru_cache(maxsize=None)
def device_element(rule):
    """``rule.element`` as the CUDA target computes it, built for the CPU:
    what the simulator runs on scalars, and the element of CPU references
    for GPU results (``scripts/gpu_check.py``, ``tests/cuda/sim_backend.py``).

    RMSprop's ``torch_sqrt`` (:mod:`numadam.rules.rmsprop`) has a CPU overload
    that emulates MKL's AVX512 root and a generic one, the correctly rounded
    root, which is what the CUDA target compiles; a CPU build takes the
    first. An element that calls it is therefore copied with ``torch_sqrt``
    bound to the correctly rounded root (uncached: its bytecode is the
    original's, which is what Numba's cache would key it by). Any other
    element is the rule's own.
    """
    from numba import njit
    function = rule.element.py_func
    if "torch_sqrt" not in function.__code__.co_names:
        return rule.element
    namespace = dict(function.__globals__, torch_sqrt=njit(cache=False)(_correct_sqrt))
    clone = pytypes.FunctionType(function.__code__, namespace, function.__name__,
                                 function.__defaults__, function.__closure__)
    return njit(cache=False, error_model="numpy", inline="always")(clone)


def _correct_sqrt(x):
    return math.sqrt(x)


# ---------------------------------------------------------- bucket-wide kernels
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


def step_signature(rule, dtype):
    """The one signature of ``rule``'s step kernel for ``dtype`` (what every
    launch uses), as :class:`StepArgs` of Numba types."""
    element = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    nflags = sum(h.kind == "flag" for h in rule.hyper)
    return StepArgs(table=types.int64[:, ::1], scal=element[:, ::1], state=element[:, ::1],
                    uniform=types.boolean, s=types.UniTuple(element, rule.nscalars),
                    flags=types.UniTuple(types.boolean, nflags))


def step_grid(total, threads):
    """``(blocks, threads)`` of a step over ``total`` padded columns."""
    return _grid((total + VEC - 1) // VEC, threads)


def launch_step(step, args, stream, threads):
    """Launch the step kernel ``step`` through Numba's launcher with
    :class:`StepArgs` ``args`` (``s``: NumPy scalars of the dtype)."""
    blocks, threads = step_grid(args.state.shape[1], threads)
    step[blocks, threads, stream](args.table, args.scal, args.state, bool(args.uniform),
                                  tuple(args.s), tuple(bool(f) for f in args.flags))


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
