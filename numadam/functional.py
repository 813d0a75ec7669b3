"""The update of one array, callable from Python and from your own ``@njit`` code.

:func:`adam_update` is the per-array form of :class:`numadam.Adam` /
:class:`numadam.AdamW`: you own the state arrays and the step counter, and the
arithmetic is the same compiled code (the rule's element function driven by
the CPU backend's span loop), so the results agree with the classes bit for
bit. Inside a compiled loop it costs no Python at all::

    from numba import njit
    from numadam.functional import adam_update

    @njit
    def fit(theta, grad, m, v, steps):
        for t in range(1, steps + 1):
            compute_gradient(theta, grad)        # your own njit code
            adam_update(theta, grad, m, v, v[:0], t, 1e-2, 0.9, 0.999, 1e-8,
                        0.0, False, False, False)
"""

import math
import operator

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.cpu.kernels import kernels
from numadam.rules import adam as _adam

_adam_span = kernels(_adam.RULE).update_span
_adam_scalars = _adam.RULE.scalars_into

__all__ = ["adam_update"]

_STATE_NAMES = ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                beta2, eps, weight_decay, amsgrad, maximize, decoupled):
    r"""One Adam / AdamW / AMSGrad step of one array, in place.

    Updates ``param``, ``exp_avg``, ``exp_avg_sq`` and (with AMSGrad)
    ``max_exp_avg_sq`` exactly as one ``step()`` of :class:`numadam.Adam`
    (``decoupled=False``) or :class:`numadam.AdamW` (``decoupled=True``)
    would, bit for bit. Callable from Python and from inside ``@njit``
    functions (Numba compiles it into the caller; no Python is involved).

    Parameters
    ----------
    param : numpy.ndarray
        float32 or float64, C-contiguous, writeable, any shape.
    grad : numpy.ndarray
        The gradient: same shape and dtype as ``param``, C-contiguous.
    exp_avg, exp_avg_sq : numpy.ndarray
        First and second moment estimates, like ``param`` (start from zeros).
    max_exp_avg_sq : numpy.ndarray
        The running maximum of ``exp_avg_sq`` with AMSGrad (like ``param``,
        zeros at first). Without AMSGrad it is not touched and may be empty
        (``param.ravel()[:0]``, or ``np.empty(0, param.dtype)``).
    step : int
        The step count **after** the increment: 1 for the first update.
    lr, beta1, beta2, eps, weight_decay : float
        As in :class:`numadam.Adam`: ``lr >= 0``, betas in ``[0, 1)``,
        ``eps >= 0``, ``weight_decay >= 0``.
    amsgrad, maximize, decoupled : bool
        AMSGrad; ascend instead of descend; decoupled weight decay (AdamW)
        instead of the L2 penalty added to the gradient (Adam).

    Raises
    ------
    TypeError, ValueError
        From Python, before anything is touched: arrays that do not fit
        ``param`` (shape, dtype, contiguity, read-only) or share memory
        where they must not (see Notes), a step below 1, or an invalid
        hyperparameter. Inside ``@njit`` code, dtype, dimension and
        layout mismatches fail at compile time (``TypingError``) and shape or
        value errors raise ``ValueError`` at run time, also before any write.

    Notes
    -----
    With ``t = step`` and every scalar computed in float64, then rounded once
    to the parameter dtype::

        g     = -grad if maximize else grad
        p     = p * (1 - lr * wd)             (decoupled)
        g     = fma(p, wd, g)                 (not decoupled)
        m     = lerp(m, g, 1 - beta1)
        v     = fma((1 - beta2) * g, g, beta2 * v)
        vmax  = max(vmax, v)                  (amsgrad; the denominator uses vmax)
        p     = p + (-(lr / (1 - beta1**t)) * m) / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The arrays are updated one element at a time in a single pass; ``param``
    and ``grad`` may be the same array. Any other sharing of memory (the
    same array as ``exp_avg`` and ``exp_avg_sq``, a state array that is or
    overlaps ``param`` or ``grad``, a ``grad`` that is a shifted view of
    ``param``) is a ``ValueError``, from Python and inside ``@njit`` code,
    before any write.

    Examples
    --------
    >>> import numpy as np
    >>> from numadam.functional import adam_update
    >>> x = np.array([3.0, -2.0]); m = np.zeros(2); v = np.zeros(2)
    >>> for t in range(1, 501):
    ...     adam_update(x, 2 * x, m, v, x[:0], t, 0.1, 0.9, 0.999, 1e-8,
    ...                 0.0, False, False, False)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """
    hyper = (lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled)
    if not _plain_hyperparameters(*hyper):
        values, args = _adam.RULE.validate(dict(
            lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled))
        hyper = args.hyp + args.flags
    if not _plain_arrays(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad):
        _check_arrays(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad)
    _update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, _as_step(step), *hyper)


def _plain_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                           decoupled):
    """The common case, checked in a fraction of the general validation's time."""
    return (type(lr) is float and type(beta1) is float and type(beta2) is float
            and type(eps) is float and type(weight_decay) is float
            and type(amsgrad) is bool and type(maximize) is bool and type(decoupled) is bool
            and 0.0 <= lr < math.inf and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0
            and 0.0 <= eps < math.inf and 0.0 <= weight_decay < math.inf)


def _plain_arrays(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad):
    """True when every array is a C-contiguous ndarray like ``param`` (the common case)."""
    if type(param) is not np.ndarray or param.dtype not in _validation.SUPPORTED_DTYPES \
            or not param.flags.writeable:
        return False
    dtype, shape = param.dtype, param.shape
    for array in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
        if type(array) is not np.ndarray or array.dtype != dtype \
                or not array.flags.c_contiguous:
            return False
        if array is not grad and not array.flags.writeable:
            return False
        if array.shape != shape and not (array is max_exp_avg_sq and not amsgrad
                                         and array.size == 0):
            return False
    return True


def _as_step(step):
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be an integer, got {step!r}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, got {step!r}") from None
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count after the increment), got {step}")
    return step


def _check_arrays(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad):
    _validation.parameter(param, "param")
    error = _validation.gradient_error(grad, param, "grad")
    if grad is None:
        error = TypeError("grad must be a NumPy array, got None")
    if error is not None:
        raise error
    arrays = (exp_avg, exp_avg_sq, max_exp_avg_sq)
    for name, array in zip(_STATE_NAMES[1:], arrays):
        if name == "max_exp_avg_sq" and not amsgrad and isinstance(array, np.ndarray) \
                and array.size == 0 and array.dtype == param.dtype:
            continue
        if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
            raise ValueError(
                f"{name} is not C-contiguous (strides {array.strides}); the state is "
                "updated in place, so pass a contiguous array (np.ascontiguousarray "
                "makes a copy you then keep using)")
        error = _validation.gradient_error(array, param, name)
        if array is None:
            error = TypeError(f"{name} must be a NumPy array, got None")
        if error is None and not array.flags.writeable:
            error = ValueError(f"{name} is read-only; the state is updated in place")
        if error is not None:
            raise error


@njit(cache=CACHE, error_model="numpy")
def _update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
            eps, weight_decay, amsgrad, maximize, decoupled):
    """Check shapes and values (cheap, before any write), then update."""
    shape = param.shape
    if grad.shape != shape or exp_avg.shape != shape or exp_avg_sq.shape != shape:
        raise ValueError("adam_update: grad, exp_avg and exp_avg_sq must have "
                         "the shape of param")
    if amsgrad and max_exp_avg_sq.shape != shape:
        raise ValueError("adam_update: with amsgrad, max_exp_avg_sq must have "
                         "the shape of param")
    if step < 1:
        raise ValueError("adam_update: step must be >= 1 (the count after the increment)")
    p0, p1 = _span(param)
    g0, g1 = _span(grad)
    m0, m1 = _span(exp_avg)
    v0, v1 = _span(exp_avg_sq)
    w0, w1 = _span(max_exp_avg_sq) if amsgrad else (np.uintp(0), np.uintp(0))
    if m0 < v1 and v0 < m1 or w0 < m1 and m0 < w1 or w0 < v1 and v0 < w1:
        raise ValueError("adam_update: exp_avg, exp_avg_sq and max_exp_avg_sq must not "
                         "share memory")
    if (m0 < p1 and p0 < m1 or m0 < g1 and g0 < m1 or v0 < p1 and p0 < v1
            or v0 < g1 and g0 < v1 or w0 < p1 and p0 < w1 or w0 < g1 and g0 < w1):
        raise ValueError("adam_update: the state arrays must not share memory with "
                         "param or grad")
    if p0 < g1 and g0 < p1 and not (p0 == g0 and p1 == g1):
        raise ValueError("adam_update: grad overlaps param without being param itself")
    # float64 before any arithmetic: float32 scalars from njit callers would
    # otherwise round lr * weight_decay in float32 and break parity.
    lr = np.float64(lr)
    beta1 = np.float64(beta1)
    beta2 = np.float64(beta2)
    eps = np.float64(eps)
    weight_decay = np.float64(weight_decay)
    if not (lr >= 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1 and eps >= 0
            and weight_decay >= 0 and lr < np.inf and eps < np.inf
            and weight_decay < np.inf):
        raise ValueError("adam_update: need finite lr, eps, weight_decay >= 0 "
                         "and betas in [0, 1)")
    scalars = np.empty(_adam.NSCALARS, param.dtype)
    _adam_scalars(scalars, step, step == 1, (lr, beta1, beta2, eps, weight_decay))
    n = param.size
    m = exp_avg.reshape(n)
    _adam_span(param.reshape(n), grad.reshape(n), m, exp_avg_sq.reshape(n),
               max_exp_avg_sq.reshape(max_exp_avg_sq.size) if amsgrad else m,
               3 if amsgrad else 2, 0, n, 0, scalars, (amsgrad, maximize, decoupled))


@njit(inline="always")
def _span(a):
    """The byte range ``[start, end)`` of C-contiguous ``a``; ``(0, 0)`` when
    empty, which meets no other range. Two arrays share memory exactly when
    their ranges meet."""
    if a.size == 0:
        return np.uintp(0), np.uintp(0)
    start = a.ctypes.data
    return start, start + np.uintp(a.nbytes)


def _typing_errors(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, flags):
    """What is wrong with the argument types of a call from njit code."""
    arrays = dict(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                  max_exp_avg_sq=max_exp_avg_sq)
    for name, array in arrays.items():
        if not isinstance(array, types.Array):
            return f"adam_update: {name} must be an array, got {array}"
        if array.dtype not in (types.float32, types.float64):
            return f"adam_update: {name} has dtype {array.dtype}; use float32 or float64"
        if array.dtype != param.dtype or (array.ndim != param.ndim
                                          and name != "max_exp_avg_sq"):
            return (f"adam_update: {name} is {array}, but param is {param}; all "
                    "arrays need the dtype and number of dimensions of param")
        if array.layout != "C":
            return (f"adam_update: {name} is {array}, not known to be C-contiguous; "
                    "pass contiguous arrays (np.ascontiguousarray, or slices a[i:j])")
        if name != "grad" and not array.mutable:
            return f"adam_update: {name} is read-only; it is updated in place"
    if not isinstance(step, types.Integer):
        return f"adam_update: step must be an integer, got {step}"
    for name, flag in flags.items():
        if not isinstance(flag, types.Boolean):
            return f"adam_update: {name} must be a bool, got {flag}"
    return None


@overload(adam_update, jit_options=dict(error_model="numpy"))
def _adam_update_njit(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                      beta2, eps, weight_decay, amsgrad, maximize, decoupled):
    message = _typing_errors(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step,
                             dict(amsgrad=amsgrad, maximize=maximize, decoupled=decoupled))
    if message is not None:
        raise TypingError(message)

    def impl(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
             beta2, eps, weight_decay, amsgrad, maximize, decoupled):
        _update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                beta2, eps, weight_decay, amsgrad, maximize, decoupled)

    return impl
