"""The GPU backend's public helpers: launch settings and flat parameter buffers.

``numadam.Adam`` / ``AdamW`` take device arrays directly (CuPy, Numba device
arrays, torch CUDA tensors, anything with ``__cuda_array_interface__``); this
module only adds what device code needs beyond that. Importing it does not
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
        Threads of a block; each thread updates one element. 256 was the best
        of the sizes tried for a plain elementwise kernel on an H200.
    """

    threads_per_block: int = 256


config = CudaConfig()


class FlatParameters:
    """Views of one contiguous device buffer, in the order of ``shapes``.

    Attributes
    ----------
    buffer : numba device array
        The 1-D buffer holding every parameter back to back.
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
    norm, one all-reduce).

    Parameters
    ----------
    shapes : sequence of int or tuple of int
        The shape of each parameter.
    dtype : float32 or float64
    fill : float, default 0
        Initial value of every element.

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

    from . import _cuda_kernels

    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    shapes = [(int(s),) if np.ndim(s) == 0 else tuple(int(n) for n in s) for s in shapes]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    for shape in shapes:
        if any(n < 0 for n in shape):
            raise ValueError(f"a shape has a negative length: {shape}")
    buffer = cuda.device_array(sum(sizes), dtype)
    _cuda_kernels.fill(buffer, fill, cuda.default_stream(), config.threads_per_block)
    params, offset = [], 0
    for shape, size in zip(shapes, sizes):
        params.append(buffer[offset:offset + size].reshape(shape))
        offset += size
    return FlatParameters(buffer, params)
