"""Device arrays as the optimizer sees them: checks, addresses, devices, streams.

Accepted: CuPy arrays, Numba device arrays and any object exposing
``__cuda_array_interface__`` (torch CUDA tensors included, detached from
autograd). Nothing is copied: the optimizer keeps the user's object and
reaches its memory through the address the interface reports.

Importing this module imports ``numba.cuda``.
"""

import math

import numpy as np
from numba import cuda

from numadam.cuda.kernels import SIMULATED
from numadam.core.validation import SUPPORTED_DTYPES, describe

__all__ = ["DeviceArrayInfo", "inspect", "group_infos", "gradient_info", "zeros_like", "fill_zero",
           "stream_for", "memory_kind", "FIXED", "TORCH", "device_address",
           "interface_stream"]


class DeviceArrayInfo:
    """What the optimizer needs of one device array, read once."""

    __slots__ = ("address", "shape", "dtype", "size", "device", "stream")

    def __init__(self, address, shape, dtype, device, stream):
        self.address = address
        self.shape = shape
        self.dtype = dtype
        self.size = math.prod(shape)
        self.device = device
        self.stream = stream


def _interface(obj):
    try:
        return obj.__cuda_array_interface__
    except AttributeError:
        return None


def _is_simulated_array(obj):
    return SIMULATED and type(obj).__module__.startswith("numba.cuda.simulator")


def _device_of_pointer(address):
    """Ordinal of the device that owns ``address`` (CUDA's pointer attribute)."""
    from cuda.bindings import driver

    attribute = driver.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    error, ordinal = driver.cuPointerGetAttribute(attribute, address)
    if error != driver.CUresult.CUDA_SUCCESS:
        raise ValueError(f"address {address:#x} is not device memory ({error})")
    return int(ordinal)


def _device_of(obj, address):
    device = getattr(obj, "device", None)
    index = getattr(device, "index", None)        # torch
    if isinstance(index, int):
        return index
    ident = getattr(device, "id", None)           # CuPy, Numba
    if isinstance(ident, int):
        return ident
    return _device_of_pointer(address) if address else 0


_KINDS = {}
FIXED, TORCH = 1, 2


def memory_kind(obj):
    """How far a validated array can be trusted at the next step.

    ``FIXED``: CuPy arrays and Numba device arrays (and the simulator's) keep
    their data pointer, dtype, strides and device for their lifetime; only the
    shape can be reassigned in place. ``TORCH``: a tensor's storage, dtype and
    strides can all change in place (``set_``, ``.data =``, ``as_strided_``),
    so its data pointer, dtype and contiguity must be read again. ``None``:
    anything else, checked afresh every time.
    """
    cls = type(obj)
    kind = _KINDS.get(cls, 0)
    if kind == 0:
        module, name = cls.__module__, cls.__name__
        if (module.startswith("cupy") and name == "ndarray") or (
                module.startswith("numba.cuda") and name in ("DeviceNDArray", "FakeCUDAArray")):
            kind = FIXED
        elif module.startswith("torch"):
            kind = TORCH
        else:
            kind = None
        _KINDS[cls] = kind
    return kind


def interface_stream(obj, face):
    """The stream ``obj``'s work is ordered on, as a raw handle (None: default).

    Version 3 of the interface reports it (CuPy: its current stream; Numba:
    the stream an array is bound to). torch reports version 2, without a
    stream; its operations run on torch's current stream, which is the one
    returned for a torch tensor.
    """
    if face.get("version", 0) >= 3:
        return face.get("stream")
    if type(obj).__module__.startswith("torch"):
        return _torch_stream(obj.device.index)
    return None


def device_address(array):
    """The data address of one of our own Numba device arrays (any dtype)."""
    if _is_simulated_array(array):
        return array._ary.ctypes.data
    return int(array.__cuda_array_interface__["data"][0])


_TORCH_DTYPES = {}


def _inspect_torch(tensor):
    """A usable torch CUDA tensor's info from torch's own accessors, or None.

    torch builds ``__cuda_array_interface__`` in Python, tens of microseconds
    a tensor; its accessors say the same for a few. Anything this does not
    accept (a CPU tensor, one that requires grad, another dtype, non-contiguous
    strides) goes the interface's way, which accepts it or explains the error.
    """
    if not _TORCH_DTYPES:
        import torch
        _TORCH_DTYPES.update({torch.float32: np.dtype(np.float32),
                              torch.float64: np.dtype(np.float64)})
    dtype = _TORCH_DTYPES.get(tensor.dtype)
    if (dtype is None or not tensor.is_cuda or tensor.requires_grad
            or not tensor.is_contiguous()):
        return None
    device = tensor.device.index
    return DeviceArrayInfo(tensor.data_ptr() if tensor.numel() else 0, tuple(tensor.shape),
                           dtype, device, _torch_stream(device))


def _torch_stream(device):
    """torch's current stream on device ordinal ``device`` as a raw handle (None:
    the default stream). ``torch._C._cuda_getCurrentRawStream`` (what Triton
    and Inductor call) answers in a fraction of a microsecond; the public
    ``torch.cuda.current_stream`` builds a Stream object, about a microsecond,
    which is the fallback should the private one go."""
    import torch
    raw = getattr(getattr(torch, "_C", None), "_cuda_getCurrentRawStream", None)
    handle = raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream
    return handle or None


def inspect(obj, where, *, writeable=True):
    """Check a device array; return its :class:`DeviceArrayInfo` or raise."""
    if _is_simulated_array(obj):
        if not obj.is_c_contiguous():
            raise ValueError(f"{where} is not C-contiguous (strides {obj.strides})")
        _check_dtype(obj.dtype, where)
        return DeviceArrayInfo(obj._ary.ctypes.data, tuple(obj.shape), obj.dtype, 0, None)
    if memory_kind(obj) == TORCH:
        info = _inspect_torch(obj)
        if info is not None:
            return info
    face = _interface(obj)
    if face is None:
        raise TypeError(f"{where} must be a NumPy array or a CUDA array, got {describe(obj)}")
    for key in ("shape", "typestr", "data", "version"):
        if key not in face:
            raise ValueError(f"{where}: its __cuda_array_interface__ has no {key!r}")
    if face.get("mask") is not None:
        raise ValueError(f"{where} is a masked array; numadam updates dense arrays only")
    shape = tuple(int(n) for n in face["shape"])
    dtype = _DTYPES.get(face["typestr"]) or np.dtype(face["typestr"])
    _check_dtype(dtype, where)
    strides = face.get("strides")
    if strides is not None and not _is_c_contiguous(shape, strides, dtype.itemsize):
        raise ValueError(
            f"{where} is not C-contiguous (strides {tuple(strides)}); the optimizer "
            "updates arrays in place through their memory, so pass a contiguous array")
    address, readonly = face["data"]
    if writeable and readonly:
        raise ValueError(f"{where} is read-only; parameters are updated in place")
    if address == 0 and int(np.prod(shape)) != 0:
        raise ValueError(f"{where} reports a null data pointer")
    return DeviceArrayInfo(int(address), shape, dtype, _device_of(obj, address),
                           interface_stream(obj, face))


_DTYPES = {"<f4": np.dtype(np.float32), "<f8": np.dtype(np.float64)}


def _check_dtype(dtype, where):
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise ValueError(f"{where} has unsupported dtype {dtype}; use float32 or float64")


def _is_c_contiguous(shape, strides, itemsize):
    """C order, ignoring the strides of axes of length 1 (any value is fine there)."""
    expected = itemsize
    for n, stride in zip(reversed(shape), reversed(tuple(strides))):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


def group_infos(params, where):
    """Check the device parameters of one group; return their infos or raise.

    A group is all on one device: a host array among device arrays, or arrays
    on two devices, is an error (raised before the optimizer changes).
    """
    infos = []
    for k, param in enumerate(params):
        name = f"{where}['params'][{k}]"
        if isinstance(param, np.ndarray):
            raise TypeError(
                f"{name} is a NumPy (host) array but other arrays of the group are on a "
                "GPU; a group is all host or all device arrays (put them in two groups, "
                "or move them)")
        infos.append(inspect(param, name))
    first = infos[0].device
    for k, info in enumerate(infos):
        if info.device != first:
            raise ValueError(
                f"{where}['params'][{k}] is on device {info.device} but "
                f"{where}['params'][0] is on device {first}; a group's arrays "
                "must share one device")
    return infos


def gradient_info(grad, param_info, device, where):
    """Check a device gradient against its parameter; return its info or raise."""
    if isinstance(grad, np.ndarray):
        raise TypeError(
            f"{where} is a NumPy (host) array but its parameter is on GPU {device}; "
            "pass a device array (no copy is made behind your back)")
    info = inspect(grad, where, writeable=False)
    if info.dtype != param_info.dtype:
        raise ValueError(f"{where} has dtype {info.dtype} but its parameter has dtype "
                         f"{param_info.dtype}")
    if info.shape != param_info.shape:
        raise ValueError(f"{where} has shape {info.shape} but its parameter has shape "
                         f"{param_info.shape}")
    if info.device != device:
        raise ValueError(f"{where} is on device {info.device} but its parameter on "
                         f"device {device}")
    return info


def zeros_like(obj, n, dtype, device):
    """A zero 1-D array of ``n`` elements of ``obj``'s kind (CuPy, torch, else
    Numba) on ``device``; slices of it are views of the same kind."""
    module = type(obj).__module__.split(".")[0]
    if module == "cupy":
        import cupy
        with cupy.cuda.Device(device):
            return cupy.zeros(n, dtype)
    if module == "torch":
        import torch
        return torch.zeros(n, dtype=obj.dtype, device=obj.device)
    with _on_device(device):
        return cuda.to_device(np.zeros(n, dtype))


def fill_zero(array, stream, threads):
    """Set a 1-D device array of any supported kind to zero, on its own terms."""
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        array.fill(0)
    elif module == "torch":
        array.zero_()
    else:
        from numadam.cuda.kernels import fill
        fill(array, 0, stream, threads)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _on_device(device):
    """A context that makes ``device`` current (nothing to do for device 0 alone)."""
    if SIMULATED or len(cuda.gpus) == 1:
        return _Nothing()
    return cuda.gpus[device]


_STREAMS = {}


def stream_for(handle):
    """The Numba stream for an interface ``stream`` entry (None: default stream).

    Version 3 of the interface says 1 is the legacy default stream, 2 the
    per-thread default stream, any other integer a ``cudaStream_t``.
    """
    if SIMULATED or handle is None:
        return cuda.default_stream()
    stream = _STREAMS.get(handle)
    if stream is None:
        if handle == 1:
            stream = cuda.legacy_default_stream()
        elif handle == 2:
            stream = cuda.per_thread_default_stream()
        else:
            stream = cuda.external_stream(handle)
        _STREAMS[handle] = stream
    return stream
