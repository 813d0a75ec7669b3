"""Checks that run before anything is touched, with errors that name the culprit."""

from collections.abc import Mapping

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def torch_flag(name, value):
    """A boolean constructor flag of torch's, as a bool, or a ValueError."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def torch_only_flags(foreach, fused, capturable, differentiable):
    """Check torch's implementation flags, which change nothing here.

    ``foreach`` and ``fused`` pick an implementation in torch; numadam has one
    (the fused kernel's bits), so any value but the pair torch refuses is
    accepted. ``capturable`` and ``differentiable`` promise what numadam cannot
    do (CUDA-graph capture, autograd through the step): ``True`` is refused
    rather than silently ignored.
    """
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None:
            torch_flag(name, value)
    if foreach and fused:
        raise ValueError("fused=True and foreach=True cannot be used together (as in torch)")
    if torch_flag("capturable", capturable):
        raise ValueError("capturable=True is not supported: numadam's step is not captured "
                         "into CUDA graphs (its step counts are Python ints); leave it False")
    if torch_flag("differentiable", differentiable):
        raise ValueError("differentiable=True is not supported: numadam has no autograd "
                         "to differentiate through the step; leave it False")


def no_overlap(extents, new):
    """Raise ValueError if any of ``new`` shares memory with another extent.

    An extent is ``(memory, first byte, end byte, where)``. Parameters are
    C-contiguous, so each covers every byte of its range and two share memory
    exactly when their ranges intersect (what ``np.shares_memory`` would find,
    in O(n log n) instead of pairwise). Empty arrays share nothing.
    """
    spans = sorted((e for e in (*extents, *new) if e[2] > e[1]),
                   key=lambda e: (repr(e[0]), e[1]))
    widest = None
    for span in spans:
        if widest is not None and widest[0] == span[0] and span[1] < widest[2]:
            first, second = (widest, span) if widest in new else (span, widest)
            raise ValueError(
                f"{first[3]} shares memory with {second[3]} (overlapping views of one "
                "array); each element can be optimised once, so pass non-overlapping "
                "arrays")
        if widest is None or widest[0] != span[0] or span[2] > widest[2]:
            widest = span


def describe(array):
    """A short description of what the user passed, for error messages."""
    if isinstance(array, np.ndarray):
        return f"array of shape {array.shape} and dtype {array.dtype}"
    return f"object of type {type(array).__module__}.{type(array).__qualname__}"


def is_sparse(obj):
    """True for scipy.sparse matrices and arrays, without importing scipy."""
    module = type(obj).__module__ or ""
    return module.startswith("scipy.sparse") or hasattr(obj, "tocsr")


def is_device_array(obj):
    """True for CUDA arrays (``__cuda_array_interface__``, or the CUDA simulator's).

    Imports nothing: a torch CPU tensor raises AttributeError for the
    interface, so it is not a device array.
    """
    if isinstance(obj, np.ndarray):
        return False
    return (hasattr(obj, "__cuda_array_interface__")
            or type(obj).__module__.startswith("numba.cuda.simulator"))


def parameter(param, where, bfloat16=False):
    """Check one parameter array; return it unchanged (``bfloat16``: accept
    ``ml_dtypes.bfloat16`` arrays too)."""
    if is_sparse(param):
        raise TypeError(f"{where} is a sparse matrix; Adam updates dense arrays only")
    if not isinstance(param, np.ndarray):
        raise TypeError(
            f"{where} must be a NumPy array updated in place, got {describe(param)}")
    if param.dtype not in SUPPORTED_DTYPES and not (bfloat16 and _is_bfloat16(param.dtype)):
        allowed = "float32, float64 or bfloat16" if bfloat16 else "float32 or float64"
        raise ValueError(f"{where} has unsupported dtype {param.dtype}; use {allowed}")
    if not param.flags.c_contiguous:
        raise ValueError(
            f"{where} is not C-contiguous (strides {param.strides}); the optimizer "
            "updates parameters in place through their memory, so pass a contiguous "
            "array (np.ascontiguousarray makes a copy you then keep using)")
    if not param.flags.writeable:
        raise ValueError(f"{where} is read-only; parameters are updated in place")
    return param


def _is_bfloat16(dtype):
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def gradient_error(grad, param, where):
    """The exception for a gradient that does not fit ``param``."""
    if grad is None:
        return None
    if is_sparse(grad):
        return TypeError(
            f"{where} is a sparse matrix; Adam needs a dense gradient "
            "(sparse gradients would silently treat missing entries as zero)")
    if not isinstance(grad, np.ndarray):
        return TypeError(f"{where} must be a NumPy array, got {describe(grad)}")
    if grad.dtype != param.dtype:
        return ValueError(
            f"{where} has dtype {grad.dtype} but its parameter has dtype {param.dtype}")
    if grad.shape != param.shape:
        return ValueError(
            f"{where} has shape {grad.shape} but its parameter has shape {param.shape}")
    if not grad.flags.c_contiguous:
        return ValueError(
            f"{where} is not C-contiguous (strides {grad.strides}); "
            "pass np.ascontiguousarray(grad)")
    return None


def param_list(params, where):
    """``params`` (one array or an ordered sequence of them) as a list."""
    if isinstance(params, np.ndarray):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(f"{where} is a set; parameters need a fixed order, use a list")
    if isinstance(params, Mapping) or not hasattr(params, "__iter__"):
        raise TypeError(f"{where} must be a list of arrays, got {params!r}")
    return list(params)


def param_groups(params):
    """The optimizer's ``params`` argument as a list of group dicts."""
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list of arrays or of dicts, got a single "
                        "array; write Adam([x])")
    params = param_list(params, "params")
    if not params:
        raise ValueError("the optimizer got an empty parameter list")
    if all(isinstance(p, Mapping) for p in params):
        return params
    if any(isinstance(p, Mapping) for p in params):
        raise TypeError("params mixes arrays and parameter-group dicts")
    return [{"params": params}]
