"""The GPU backend's public helpers: launch settings and flat parameter buffers.

Every optimizer (``numadam.Adam``, ``AdamW``, ``SGD``, ``Adagrad``, ``RMSprop``)
takes device arrays directly (CuPy, Numba device arrays, torch CUDA tensors,
anything with ``__cuda_array_interface__``); this module only adds what device
code needs beyond that. Importing it does not
import ``numba.cuda``; :func:`flat_parameters` does.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["config", "flat_parameters", "FlatParameters"]


@dataclass
class CudaConfig:
    """Launch settings of the CUDA kernels, read at every launch.

    Attributes
    ----------
    threads_per_block : int
        Threads of a block; each thread updates four elements. 256 was the
        best of the sizes tried for a plain elementwise kernel on an H200.
    launcher : {"numba", "driver"}
        How a step is launched. ``"numba"`` (the default) goes through
        Numba's own kernel call. ``"driver"`` (opt-in) keeps the kernel's
        arguments between steps and makes one ``cuLaunchKernel`` call through
        ctypes, which should save about 45 us a step, but it reads the
        compiled function's handle from a numba-cuda internal and has not yet
        run on a GPU (``scripts/gpu_check.py`` checks it there, against
        Numba's launcher); it stays opt-in until that check has passed. The
        results are the same bits; the CUDA simulator has only Numba's
        launcher and uses it whatever this says.
    """

    threads_per_block: int = 256
    launcher: str = "numba"

    def __setattr__(self, name, value):
        if name == "launcher" and value not in ("driver", "numba"):
            raise ValueError(f"launcher must be 'driver' or 'numba', got {value!r}")
        if name == "threads_per_block" and (
                not isinstance(value, int) or not 32 <= value <= 1024 or value % 32):
            raise ValueError("threads_per_block must be a multiple of 32 from 32 to 1024, "
                             f"got {value!r}")
        super().__setattr__(name, value)


config = CudaConfig()


class FlatParameters:
    """Views of one contiguous device buffer, in the order of ``shapes``.

    Attributes
    ----------
    buffer : numba device array
        The 1-D buffer holding every parameter, each starting on a 16-byte
        boundary (the few elements of padding in between are zero).
    params : list of numba device arrays
        One C-contiguous view per shape; hand these to the optimizer and to
        your own kernels (``cupy.asarray(view)`` and ``torch.as_tensor(view,
        device="cuda")`` wrap them without a copy).
    """

    def __init__(self, buffer, params):
        self.buffer = buffer
        self.params = params

    def __iter__(self):
        return iter(self.params)

    def __len__(self):
        return len(self.params)


def flat_parameters(shapes, dtype=np.float32, *, fill=0.0):
    """Allocate parameters of ``shapes`` as views of one device buffer.

    The optimizer updates any number of arrays of a group and dtype in one
    launch already; a flat buffer adds locality (one contiguous span of
    memory for parameters, and the same for gradients made with it) and lets
    the user's own code treat all parameters as one vector (one memset, one
    norm, one all-reduce). Every view starts on a 16-byte boundary, so the
    step kernel moves all of it with 16-byte accesses; the padding between
    views (at most 12 bytes) is zero and no view ever touches it.

    Parameters
    ----------
    shapes : sequence of int or tuple of int
        The shape of each parameter.
    dtype : float32 or float64
    fill : float, default 0
        Initial value of every parameter element.

    Returns
    -------
    FlatParameters

    Examples
    --------
    >>> flat = numadam.cuda.flat_parameters([(3, 4), 5])      # doctest: +SKIP
    >>> grads = numadam.cuda.flat_parameters([(3, 4), 5])     # doctest: +SKIP
    >>> opt = numadam.Adam(flat.params)                       # doctest: +SKIP
    >>> opt.step(grads.params)                                # doctest: +SKIP
    """
    from numba import cuda

    from numadam.cuda import kernels as _cuda_kernels

    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    shapes = [(int(s),) if np.ndim(s) == 0 else tuple(int(n) for n in s) for s in shapes]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    for shape in shapes:
        if any(n < 0 for n in shape):
            raise ValueError(f"a shape has a negative length: {shape}")
    step = _cuda_kernels.VEC_BYTES // dtype.itemsize
    starts = np.concatenate([[0], np.cumsum([-(-n // step) * step for n in sizes])])
    buffer = cuda.device_array(int(starts[-1]), dtype)
    stream, threads = cuda.default_stream(), config.threads_per_block
    _cuda_kernels.fill(buffer, 0.0, stream, threads)
    params = []
    for shape, size, start in zip(shapes, sizes, starts):
        view = buffer[int(start):int(start) + size]
        if fill != 0 and size:
            _cuda_kernels.fill(view, fill, stream, threads)
        params.append(view.reshape(shape))
    return FlatParameters(buffer, params)
