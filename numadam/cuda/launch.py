"""Launching a compiled kernel with one call to the CUDA driver.

Numba's kernel call costs 40-50 us on an H200 (see DESIGN.md), most of it in
building the launch, not in the driver: a 10-element step would be all
overhead. :class:`DriverKernel` holds one compiled signature of a kernel and
:class:`LaunchArgs` the flattened argument list of one bucket as ctypes
objects, laid out exactly as Numba lays them out (an array is ``meminfo,
parent, nitems, itemsize, data, shape..., strides...``; a tuple its members;
a boolean one byte). A launch then sets the scalars that changed and makes
one ctypes call to ``cuLaunchKernel``.

The kernel handle numba-cuda 0.30 holds is a ``CUkernel`` (a library
kernel); ``cuKernelGetFunction`` turns it into the device context's
``CUfunction``, which is what is launched. Before every launch the current
context is compared with the one the bucket's device uses; where they differ
(another device is current, or this thread has none) the device's context is
made current first, as Numba's own launcher does.

``tests/cuda/ptx_check.py`` checks the flattened layout against the
parameter list of the kernel's PTX, without a GPU; the launch itself runs
only on a GPU (``scripts/gpu_check.py``).
"""

import ctypes
import sys

from numba import types

__all__ = ["DriverKernel", "LaunchArgs", "ctypes_fields"]


def ctypes_fields(ty):
    """The ctypes types of the kernel parameters that Numba makes of one argument."""
    if isinstance(ty, types.Array):
        return ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                 ctypes.c_void_p] + [ctypes.c_int64] * (2 * ty.ndim))
    if isinstance(ty, types.BaseTuple):
        return [field for member in ty for field in ctypes_fields(member)]
    if ty == types.boolean:
        return [ctypes.c_bool]
    if ty == types.float32:
        return [ctypes.c_float]
    if ty == types.float64:
        return [ctypes.c_double]
    if isinstance(ty, types.Integer):
        return [getattr(ctypes, f"c_{ty}")]
    raise TypeError(f"no driver launch for kernel arguments of type {ty}")


_DRIVER = None


def _driver():
    """libcuda with the entry points a launch needs."""
    global _DRIVER
    if _DRIVER is None:
        name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
        lib = ctypes.CDLL(name)
        lib.cuLaunchKernel.argtypes = [
            ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p]
        lib.cuLaunchKernel.restype = ctypes.c_int
        lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.cuCtxGetCurrent.restype = ctypes.c_int
        lib.cuMemcpyHtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t,
                                             ctypes.c_void_p]
        lib.cuMemcpyHtoDAsync_v2.restype = ctypes.c_int
        lib.cuKernelGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
        lib.cuKernelGetFunction.restype = ctypes.c_int
        lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.cuGetErrorName.restype = ctypes.c_int
        _DRIVER = lib
    return _DRIVER


def _error_name(lib, code):
    name = ctypes.c_char_p()
    lib.cuGetErrorName(code, ctypes.byref(name))
    return name.value.decode() if name.value else f"CUresult {code}"


def _function_in_context(handle):
    """A ``CUfunction`` for the current context from numba-cuda's kernel handle.

    numba-cuda 0.30 holds a ``CUkernel`` (a library kernel), which
    ``cuLaunchKernel`` accepts too, but ``cuKernelGetFunction`` gives the
    plain per-context function every CUDA 12 driver launches; an older
    numba-cuda hands a ``CUfunction`` already.
    """
    if type(handle).__name__ != "CUkernel":
        return int(handle)
    lib = _driver()
    function = ctypes.c_void_p()
    code = lib.cuKernelGetFunction(ctypes.byref(function), int(handle))
    if code:
        raise RuntimeError(f"cuKernelGetFunction failed: {_error_name(lib, code)} ({code})")
    return function.value


class DriverKernel:
    """One compiled signature of a ``@cuda.jit`` kernel, launched through the driver.

    ``signature``: the argument types as a namedtuple (such as
    :class:`numadam.cuda.kernels.StepArgs`), whose names the launch's fields take.
    """

    def __init__(self, dispatcher, signature):
        self.signature = signature
        self.kernel = dispatcher.compile(tuple(signature))
        self._handles = {}       # device ordinal -> (context handle, kernel handle)

    def handles(self, device):
        """``(context, kernel)`` handles on ``device`` (loads the module once)."""
        found = self._handles.get(device)
        if found is None:
            from numba import cuda
            with cuda.gpus[device]:
                context = cuda.current_context()
                handle = self.kernel._codelibrary.get_cufunc().handle
                found = (int(context.handle), _function_in_context(handle))
            self._handles[device] = found
        return found


class LaunchArgs:
    """A bucket's flattened arguments of a :class:`DriverKernel`, kept between launches.

    The values live in one buffer, each at its natural alignment, and
    ``params`` points at them; the driver copies them at every launch, so
    they may change as soon as :meth:`launch` returns. ``fields`` holds,
    under each argument's name, ctypes views of its fields.
    """

    def __init__(self, driver_kernel, device):
        self.driver_kernel = driver_kernel
        self.device = device
        self.context, self.function = driver_kernel.handles(device)
        kinds = [ctypes_fields(ty) for ty in driver_kernel.signature]
        offsets, end = [], 0
        for kind in (k for ks in kinds for k in ks):
            size = ctypes.sizeof(kind)
            end = -(-end // size) * size
            offsets.append(end)
            end += size
        self.buffer = (ctypes.c_char * max(end, 1))()
        offsets_by_argument, fields = [], []
        flat = iter(offsets)
        for ks in kinds:
            where = [next(flat) for _ in ks]
            offsets_by_argument.append(where)
            fields.append([k.from_buffer(self.buffer, o) for k, o in zip(ks, where)])
        make = type(driver_kernel.signature)._make
        self._offsets = make(offsets_by_argument)
        self.fields = make(fields)
        base = ctypes.addressof(self.buffer)
        self.params = (ctypes.c_void_p * len(offsets))(*[base + o for o in offsets])
        self._lib = _driver()
        self._current = ctypes.c_void_p()

    def set_array(self, name, array):
        """Argument ``name`` is the Numba device array ``array``."""
        from numadam.cuda.adapters import device_address
        values = [0, 0, array.size, array.dtype.itemsize, device_address(array),
                  *array.shape, *array.strides]
        for field, value in zip(getattr(self.fields, name), values, strict=True):
            field.value = value

    def values_view(self, name, dtype):
        """A NumPy array over the fields of argument ``name`` (a tuple of
        ``dtype``): writing it sets the next launch's values, with no call."""
        import numpy as np
        count = len(getattr(self.fields, name))
        return np.frombuffer(self.buffer, dtype, count, getattr(self._offsets, name)[0])

    def launch(self, blocks, threads, stream_handle):
        """Enqueue the kernel on the stream with raw handle ``stream_handle`` (int)."""
        self._call(self._lib.cuLaunchKernel, self.function, blocks, 1, 1, threads, 1, 1, 0,
                   stream_handle, self.params, None)

    def upload(self, address, host_array, stream_handle):
        """Enqueue a copy of the C-contiguous ``host_array`` to device ``address``.

        From pageable memory the driver stages the bytes before it returns, so
        the host array may change as soon as this returns.
        """
        self._call(self._lib.cuMemcpyHtoDAsync_v2, address, host_array.ctypes.data,
                   host_array.nbytes, stream_handle)

    def _call(self, function, *args):
        """``function(*args)`` in this bucket's device context; raise on an error."""
        lib = self._lib
        lib.cuCtxGetCurrent(ctypes.byref(self._current))
        if self._current.value != self.context:
            from numba import cuda
            with cuda.gpus[self.device]:
                code = function(*args)
        else:
            code = function(*args)
        if code:
            raise RuntimeError(f"{function.__name__} failed: {_error_name(lib, code)} ({code})")
