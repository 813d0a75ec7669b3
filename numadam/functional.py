"""The update of one array, callable from Python and from your own ``@njit`` code.

One function per rule, each the per-array form of the rule's classes: you
own the state arrays and the step counter, and the arithmetic is the same
compiled code (the rule's element function driven by the CPU backend's span
loop), so the results agree with the classes bit for bit.

- :func:`adam_update`: :class:`numadam.Adam`, :class:`numadam.AdamW`
- :func:`sgd_update`: :class:`numadam.SGD`
- :func:`adagrad_update`: :class:`numadam.Adagrad`
- :func:`rmsprop_update`: :class:`numadam.RMSprop`

Every function takes ``param, grad``, the rule's state arrays in its
declared order (torch's names), ``step`` (the count after the increment),
then the rule's hyperparameters in torch's order. Inside a compiled loop it
costs no Python at all::

    from numba import njit
    from numadam.functional import adam_update

    @njit
    def fit(theta, grad, m, v, steps):
        for t in range(1, steps + 1):
            compute_gradient(theta, grad)        # your own njit code
            adam_update(theta, grad, m, v, v[:0], t, 1e-2, 0.9, 0.999, 1e-8,
                        0.0, False, False, False)

The checks (of arrays, memory sharing and hyperparameters), the compiled
update and the ``@njit`` overloads are one machinery, :class:`_Functional`,
derived from each rule's declaration (:mod:`numadam.core.rule`).
"""

import inspect
import math
import operator
import sys

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.core.rule import MAX_ROWS, Hyper
from numadam.cpu.kernels import _instantiate, kernels
from numadam.rules import rule as _rule

__all__ = ["adam_update", "sgd_update", "adagrad_update", "rmsprop_update"]

# When a state row exists (``StateArray.when``): always; with a flag; with a
# non-zero real hyperparameter; never (the padding up to MAX_ROWS slots).
_ALWAYS, _FLAG, _NONZERO, _NEVER = range(4)
# What a float of ``hyp`` must be: a finite real >= 0, a finite real, in [0, 1).
_NONNEG, _REAL, _UNIT = range(3)
# Inclusive low and exclusive high bound of each kind, for the Python fast
# path (-max, not -inf: a real must be finite, and NaN fails every comparison).
_BOUNDS = {_NONNEG: (0.0, math.inf), _REAL: (-sys.float_info.max, math.inf),
           _UNIT: (0.0, 1.0)}
_JIT = dict(error_model="numpy")


# --------------------------------------------------------------- public API

def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                beta2, eps, weight_decay, amsgrad, maximize, decoupled):
    r"""One Adam / AdamW / AMSGrad step of one array, in place.

    Updates ``param``, ``exp_avg``, ``exp_avg_sq`` and (with AMSGrad)
    ``max_exp_avg_sq`` exactly as one ``step()`` of :class:`numadam.Adam`
    (``decoupled=False``) or :class:`numadam.AdamW` (``decoupled=True``)
    would, bit for bit. The update, with its rounding, is stated in
    :mod:`numadam.rules.adam`.

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
        Before anything is touched; see Notes.

    Notes
    -----
    The checks, the same for every ``*_update`` function:

    * From Python, arrays that do not fit ``param`` (shape, dtype,
      contiguity, read-only), a step below 1 or not an integer, or an
      invalid hyperparameter raise ``TypeError`` or ``ValueError``. Inside
      ``@njit`` code, dtype, dimension, layout and argument-type mismatches
      fail at compile time (``TypingError``) and shape or value errors raise
      ``ValueError`` at run time.
    * ``param`` and ``grad`` may be the same array. Any other sharing of
      memory (two state arrays, a state array and ``param`` or ``grad``, a
      ``grad`` that overlaps ``param`` without being it) is a ``ValueError``,
      from Python and inside ``@njit`` code.
    * A state array the configuration does not use (here
      ``max_exp_avg_sq`` without AMSGrad) is never touched: it may be empty,
      or any array of the dtype shaped like ``param``.

    Every error is raised before any array is written.

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
    _machinery("adam")(param, grad, (exp_avg, exp_avg_sq, max_exp_avg_sq), step,
                       (lr, beta1, beta2, eps, weight_decay), (amsgrad, maximize, decoupled))


def sgd_update(param, grad, momentum_buffer, step, lr, momentum, dampening, weight_decay,
               nesterov, maximize):
    r"""One SGD step of one array, in place.

    Updates ``param`` and (with momentum) ``momentum_buffer`` exactly as one
    ``step()`` of :class:`numadam.SGD` would, bit for bit. The update, with
    its rounding, is stated in :mod:`numadam.rules.sgd`.

    Parameters
    ----------
    param, grad : numpy.ndarray
        As for :func:`adam_update`.
    momentum_buffer : numpy.ndarray
        With ``momentum != 0``: like ``param``. Its content at ``step == 1``
        is not read: the first step sets it to the (decayed) gradient, as
        torch does for a parameter without a buffer. Without momentum it is
        not touched and may be empty.
    step : int
        The step count after the increment; only ``step == 1`` (the first
        update) differs from the others. SGD keeps no step of its own.
    lr, momentum, weight_decay : float
        As in :class:`numadam.SGD`, each ``>= 0``.
    dampening : float
        A finite number.
    nesterov, maximize : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``);
        ascend instead of descend.

    Raises
    ------
    TypeError, ValueError
        Before anything is touched; see the Notes of :func:`adam_update`.

    Examples
    --------
    >>> import numpy as np
    >>> from numadam.functional import sgd_update
    >>> x = np.array([3.0, -2.0]); buf = np.zeros(2)
    >>> for t in range(1, 301):
    ...     sgd_update(x, 2 * x, buf, t, 0.1, 0.9, 0.0, 0.0, False, False)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """
    _machinery("sgd")(param, grad, (momentum_buffer,), step,
                      (lr, momentum, dampening, weight_decay), (nesterov, maximize))


def adagrad_update(param, grad, sum, step, lr, lr_decay, weight_decay, eps, maximize):
    r"""One Adagrad step of one array, in place.

    Updates ``param`` and ``sum`` exactly as one ``step()`` of
    :class:`numadam.Adagrad` would, bit for bit. The update, with its
    rounding, is stated in :mod:`numadam.rules.adagrad`.

    Parameters
    ----------
    param, grad : numpy.ndarray
        As for :func:`adam_update`.
    sum : numpy.ndarray
        The sum of squared gradients, like ``param``. Start it at the
        class's ``initial_accumulator_value`` (``np.full_like(param, v)``).
    step : int
        The step count after the increment: 1 for the first update.
    lr, lr_decay, weight_decay, eps : float
        As in :class:`numadam.Adagrad`, each ``>= 0``.
    maximize : bool
        Ascend instead of descend.

    Raises
    ------
    TypeError, ValueError
        Before anything is touched; see the Notes of :func:`adam_update`.

    Examples
    --------
    >>> import numpy as np
    >>> from numadam.functional import adagrad_update
    >>> x = np.array([3.0, -2.0]); s = np.zeros(2)
    >>> for t in range(1, 501):
    ...     adagrad_update(x, 2 * x, s, t, 0.5, 0.0, 0.0, 1e-10, False)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """
    _machinery("adagrad")(param, grad, (sum,), step, (lr, lr_decay, weight_decay, eps),
                          (maximize,))


def rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, step, lr, alpha, eps,
                   weight_decay, momentum, centered, maximize):
    r"""One RMSprop step of one array, in place.

    Updates ``param``, ``square_avg``, and ``momentum_buffer`` (with
    momentum) and ``grad_avg`` (centered) exactly as one ``step()`` of
    :class:`numadam.RMSprop` would, bit for bit. The update, with its
    rounding, is stated in :mod:`numadam.rules.rmsprop`.

    Parameters
    ----------
    param, grad : numpy.ndarray
        As for :func:`adam_update`.
    square_avg : numpy.ndarray
        The average of squared gradients, like ``param`` (zeros at first).
    momentum_buffer : numpy.ndarray
        With ``momentum > 0``: like ``param`` (zeros at first). Otherwise not
        touched, and may be empty.
    grad_avg : numpy.ndarray
        With ``centered``: like ``param`` (zeros at first). Otherwise not
        touched, and may be empty.
    step : int
        The step count after the increment (RMSprop's update does not depend
        on it, but it is checked as for the other rules).
    lr, alpha, eps, weight_decay, momentum : float
        As in :class:`numadam.RMSprop`, each ``>= 0``.
    centered, maximize : bool
        Normalise by the estimated variance; ascend instead of descend.

    Raises
    ------
    TypeError, ValueError
        Before anything is touched; see the Notes of :func:`adam_update`.

    Examples
    --------
    >>> import numpy as np
    >>> from numadam.functional import rmsprop_update
    >>> x = np.array([3.0, -2.0]); sq = np.zeros(2)
    >>> for t in range(1, 1001):
    ...     rmsprop_update(x, 2 * x, sq, x[:0], x[:0], t, 0.01, 0.99, 1e-8, 0.0,
    ...                    0.0, False, False)
    >>> bool(np.all(np.abs(x) < 1e-2))
    True
    """
    _machinery("rmsprop")(param, grad, (square_avg, momentum_buffer, grad_avg), step,
                          (lr, alpha, eps, weight_decay, momentum), (centered, maximize))


# ------------------------------------------------ rule-specific njit checks
#
# A rule's cross-field ``check`` is Python (it reads a dict of values); code
# compiled into an @njit caller cannot call it, so its compiled twin lives
# here. ``hyp`` and ``flags`` are the kernel tuples (``KernelArgs``).

@njit(cache=CACHE, error_model="numpy")
def _sgd_check(hyp, flags):
    momentum, dampening = hyp[1], hyp[2]
    if flags[0] and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd_update: nesterov=True requires a momentum > 0 and zero "
                         "dampening (as in torch)")


@njit(cache=CACHE, error_model="numpy")
def _no_check(hyp, flags):
    pass


# name -> (public function, the public names of hyperparameters renamed or
# split, the compiled cross-field check)
_PUBLIC = {
    "adam": (adam_update, {"betas": ("beta1", "beta2"), "decoupled_weight_decay": "decoupled"},
             _no_check),
    "sgd": (sgd_update, {}, _sgd_check),
    "adagrad": (adagrad_update, {}, _no_check),
    "rmsprop": (rmsprop_update, {}, _no_check),
}
_BUILT = {}


def _machinery(name):
    """The :class:`_Functional` of rule ``name``, built on first use."""
    try:
        return _BUILT[name]
    except KeyError:
        function, renames, check = _PUBLIC[name]
        built = _BUILT[name] = _Functional(_rule(name), function, renames, check)
        return built


# ----------------------------------------------------------- the machinery

class _Functional:
    """The functional update of one rule, derived from its declaration.

    The public function passes ``(param, grad, states, step, reals, flags)``:
    ``states`` the rule's state arrays in declared order, ``reals`` and
    ``flags`` its hyperparameters as the kernels take them (``hyp`` and
    ``flags`` of :class:`~numadam.core.rule.KernelArgs`: declared order,
    ``betas`` split in two, ``"init"`` ones left out).
    """

    def __init__(self, rule, function, renames, check):
        self.rule = rule
        self.fname = function.__name__
        self.states = tuple(s.name for s in rule.state)
        self.optional = tuple(s.when is not None for s in rule.state)
        reals, kinds, flags = [], [], []
        # declared name of each float of hyp and each flag (where a state's
        # ``when`` points)
        self.real_names, self.flag_names = [], []
        for h in rule.hyper:
            if h.kind == "flag":
                flags.append(renames.get(h.name, h.name))
                self.flag_names.append(h.name)
            elif h.kind == "betas":
                reals.extend(renames.get(h.name, (f"{h.name}[0]", f"{h.name}[1]")))
                kinds.extend((_UNIT, _UNIT))
                self.real_names.extend((None, None))
            elif h.kind != "init":
                reals.append(renames.get(h.name, h.name))
                kinds.append(_REAL if h.kind == "real" else _NONNEG)
                self.real_names.append(h.name)
        self.reals, self.flags, self.kinds = tuple(reals), tuple(flags), tuple(kinds)
        self.low = tuple(_BOUNDS[k][0] for k in kinds)
        self.high = tuple(_BOUNDS[k][1] for k in kinds)
        expected = ("param", "grad", *self.states, "step", *self.reals, *self.flags)
        given = tuple(inspect.signature(function).parameters)
        if given != expected:
            raise TypeError(f"{self.fname}{given} does not follow the declaration of rule "
                            f"{rule.name!r}: {expected}")
        self.padding = MAX_ROWS - len(self.states)
        # (when kind, index into flags or reals) of each state array
        self.when = tuple(
            (_ALWAYS, 0) if s.when is None
            else (_FLAG, self.flag_names.index(s.when))
            if rule.hyper_by_name[s.when].kind == "flag"
            else (_NONZERO, self.real_names.index(s.when)) for s in rule.state)
        self.update = _compile(self, rule, check)

    # ------------------------------------------------------------ Python
    def __call__(self, param, grad, states, step, reals, flags):
        """Check everything (fast for the common case), then update."""
        values = None
        if not self._plain_hyperparameters(reals, flags):
            reals, flags, values = self._validated(reals, flags)
        if self._plain_arrays(param, grad, states, reals, flags):
            slots = states + (param,) * self.padding
        else:
            if values is None:
                reals, flags, values = self._validated(reals, flags)
            slots = self._checked_arrays(param, grad, states, values)
        if type(step) is not int or not 1 <= step <= _MAX_STEP:
            step = _as_step(step)
        self.update(param, grad, *slots, step, reals, flags)

    def _plain_hyperparameters(self, reals, flags):
        """True for Python floats within bounds and bools: the common case,
        checked in a fraction of the general validation's time. A rule's
        cross-field check runs in the compiled update."""
        for value, low, high in zip(reals, self.low, self.high):
            if type(value) is not float or not low <= value < high:
                return False
        for flag in flags:
            if type(flag) is not bool:
                return False
        return True

    def _validated(self, reals, flags):
        """``(reals, flags, values)``: the hyperparameters as Python floats
        and bools, and by declared name; or the ``ValueError`` that names the
        first bad one as the public function does."""
        reals = tuple(_check_real(name, kind, value)
                      for name, kind, value in zip(self.reals, self.kinds, reals))
        flags = tuple(Hyper(name, False, "flag").check(value)
                      for name, value in zip(self.flags, flags))
        values = {}
        real, flag = iter(reals), iter(flags)
        for h in self.rule.hyper:
            if h.kind == "flag":
                values[h.name] = next(flag)
            elif h.kind == "betas":
                values[h.name] = (next(real), next(real))
            elif h.kind == "init":
                values[h.name] = h.default
            else:
                values[h.name] = next(real)
        if self.rule.check is not None:
            self.rule.check(values)
        return reals, flags, values

    def _plain_arrays(self, param, grad, states, reals, flags):
        """True when every array is a C-contiguous ndarray like ``param``,
        the state arrays writeable, an unused one possibly empty: the common
        case."""
        # ``flags`` is read once per array: each read builds a new object.
        if type(param) is not np.ndarray or param.dtype not in _validation.SUPPORTED_DTYPES:
            return False
        flags_of = param.flags
        if not (flags_of.writeable and flags_of.c_contiguous):
            return False
        dtype, shape = param.dtype, param.shape
        if type(grad) is not np.ndarray or grad.dtype != dtype or grad.shape != shape \
                or not grad.flags.c_contiguous:
            return False
        for array, (kind, index) in zip(states, self.when):
            if type(array) is not np.ndarray or array.dtype != dtype:
                return False
            flags_of = array.flags
            if not (flags_of.c_contiguous and flags_of.writeable):
                return False
            if array.shape != shape and not (
                    array.size == 0 and (kind == _FLAG and not flags[index]
                                         or kind == _NONZERO and not reals[index])):
                return False
        return True

    def _checked_arrays(self, param, grad, states, values):
        """The state slots of the compiled update (an unused state array
        replaced by ``param``, which it never reads), or the error that
        names the first array that does not fit."""
        _validation.parameter(param, "param")
        error = _validation.gradient_error(grad, param, "grad")
        if grad is None:
            error = TypeError("grad must be a NumPy array, got None")
        if error is not None:
            raise error
        used = self.rule.state_names(values)
        slots = []
        for name, array in zip(self.states, states):
            if name not in used and isinstance(array, np.ndarray) and array.size == 0 \
                    and array.dtype == param.dtype:
                slots.append(param)
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
            slots.append(array if name in used else param)
        return tuple(slots) + (param,) * self.padding

    # -------------------------------------------------------------- njit
    def typing_error(self, param, grad, states, step, reals, flags):
        """What is wrong with the argument types of a call from njit code."""
        f = self.fname
        arrays = dict(param=param, grad=grad, **dict(zip(self.states, states)))
        optional = dict(zip(self.states, self.optional))
        for name, array in arrays.items():
            if not isinstance(array, types.Array):
                return f"{f}: {name} must be an array, got {array}"
            if array.dtype not in (types.float32, types.float64):
                return f"{f}: {name} has dtype {array.dtype}; use float32 or float64"
            if array.dtype != param.dtype or (array.ndim != param.ndim
                                              and not optional.get(name)):
                return (f"{f}: {name} is {array}, but param is {param}; all arrays need "
                        "the dtype and number of dimensions of param")
            if array.layout != "C":
                return (f"{f}: {name} is {array}, not known to be C-contiguous; pass "
                        "contiguous arrays (np.ascontiguousarray, or slices a[i:j])")
            if name != "grad" and not array.mutable:
                return f"{f}: {name} is read-only; it is updated in place"
        if not isinstance(step, types.Integer):
            return f"{f}: step must be an integer, got {step}"
        for name, value in zip(self.reals, reals):
            if not isinstance(value, (types.Integer, types.Float)):
                return f"{f}: {name} must be a real number, got {value}"
        for name, flag in zip(self.flags, flags):
            if not isinstance(flag, types.Boolean):
                return f"{f}: {name} must be a bool, got {flag}"
        return None

    def check_types(self, *args):
        message = self.typing_error(*args)
        if message is not None:
            raise TypingError(message)


def _check_real(name, kind, value):
    """``value`` as a float of the bounds of ``kind``, or a ``ValueError``."""
    if kind == _UNIT:
        value = Hyper(name, 0.0, "nonneg").check(value)
        if not value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        return value
    return Hyper(name, 0.0, "real" if kind == _REAL else "nonneg").check(value)


def _as_step(step):
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be an integer, got {step!r}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, got {step!r}") from None
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count after the increment), got {step}")
    if step > _MAX_STEP:
        # The compiled update takes an int64 (Numba's unboxing would raise
        # OverflowError); the classes' step counts have the same bound.
        raise ValueError(f"step must be at most 2**63 - 1, got {step}")
    return step


_MAX_STEP = 2 ** 63 - 1


@njit(inline="always")
def _span(a):
    """The byte range ``[start, end)`` of C-contiguous ``a``; ``(0, 0)`` when
    empty, which meets no other range. Two arrays share memory exactly when
    their ranges meet."""
    if a.size == 0:
        return np.uintp(0), np.uintp(0)
    start = a.ctypes.data
    return start, start + np.uintp(a.nbytes)


# -------------------------------------------------- the compiled update
#
# Compiled once per rule from the template below, the way numadam.cpu.kernels
# builds its kernels: the template reads the rule's constants and functions as
# globals from a dict of its own, and its closure holds only the rule's cache
# stamp, so Numba's disk cache keys each rule's build apart.

def _templates(stamp):
    def _present(i, hyp, flags):
        """Whether state slot ``i`` is used under ``hyp`` and ``flags``."""
        stamp  # noqa: B018 (the cache key)
        kind = WHEN_KIND[i]
        if kind == ALWAYS:
            return True
        if kind == FLAG:
            return flags[WHEN_INDEX[i]]
        if kind == NONZERO:
            return hyp[WHEN_INDEX[i]] != 0.0
        return False

    def _update(param, grad, s0, s1, s2, step, hyp, flags):
        """Check shapes, values and memory sharing (cheap, before any
        write), then update the whole array with the rule's span loop.

        ``s0, s1, s2`` are the state slots in declared order (``param``
        stands in for a rule's missing ones); ``hyp`` is float64.
        """
        stamp  # noqa: B018
        shape = param.shape
        n = param.size
        if grad.shape != shape:
            raise ValueError(GRAD_SHAPE)
        u0 = present(0, hyp, flags)
        u1 = present(1, hyp, flags)
        u2 = present(2, hyp, flags)
        if (u0 and s0.shape != shape or u1 and s1.shape != shape
                or u2 and s2.shape != shape):
            raise ValueError(STATE_SHAPE)
        if (s0.size != 0 and s0.shape != shape or s1.size != 0 and s1.shape != shape
                or s2.size != 0 and s2.shape != shape):
            raise ValueError(UNUSED_SHAPE)
        if step < 1:
            raise ValueError(STEP)
        for i in range(len(hyp)):
            x = hyp[i]
            kind = HYP_KIND[i]
            if not (x < np.inf and (x >= 0 if kind == NONNEG else
                                    x > -np.inf if kind == REAL else 0 <= x < 1)):
                raise ValueError(HYP_MESSAGE[i])
        cross_check(hyp, flags)
        p0, p1 = _span(param)
        g0, g1 = _span(grad)
        a0, a1 = _span(s0) if u0 else (np.uintp(0), np.uintp(0))
        b0, b1 = _span(s1) if u1 else (np.uintp(0), np.uintp(0))
        c0, c1 = _span(s2) if u2 else (np.uintp(0), np.uintp(0))
        if a0 < b1 and b0 < a1 or a0 < c1 and c0 < a1 or b0 < c1 and c0 < b1:
            raise ValueError(STATE_STATE)
        if (a0 < p1 and p0 < a1 or a0 < g1 and g0 < a1 or b0 < p1 and p0 < b1
                or b0 < g1 and g0 < b1 or c0 < p1 and p0 < c1 or c0 < g1 and g0 < c1):
            raise ValueError(STATE_PARAM)
        if p0 < g1 and g0 < p1 and not (p0 == g0 and p1 == g1):
            raise ValueError(GRAD_PARAM)
        scalars = np.empty(NSCALARS, param.dtype)
        scalars_into(scalars, step, step == 1, hyp)
        p = param.reshape(n)
        # The rule's element takes the used rows first, in declared order;
        # p stands in for the others, which the span loop never touches.
        x0 = s0.reshape(n) if u0 else p
        x1 = s1.reshape(n) if u1 else p
        x2 = s2.reshape(n) if u2 else p
        a = x0 if u0 else (x1 if u1 else x2)
        b = (x1 if u1 else x2) if u0 else x2
        update_span(p, grad.reshape(n), a, b, x2, np.int64(u0) + np.int64(u1) + np.int64(u2),
                    0, n, 0, scalars, flags, None)

    return dict(present=_present, update=_update)


def _compile(spec, rule, check):
    """The compiled update of ``rule`` (``spec`` gives its names)."""
    f = spec.fname
    when_kind = [kind for kind, _ in spec.when]
    when_index = [index for _, index in spec.when]
    when_kind += [_NEVER] * spec.padding
    when_index += [0] * spec.padding
    kind_words = {_NONNEG: "a finite number >= 0", _REAL: "a finite number",
                  _UNIT: "in [0, 1)"}
    states = spec.states
    listed = states[0] if len(states) == 1 else ", ".join(states[:-1]) + " and " + states[-1]
    namespace = dict(
        np=np, _span=_span, scalars_into=rule.scalars_into,
        update_span=kernels(rule).update_span, cross_check=check, NSCALARS=rule.nscalars,
        WHEN_KIND=tuple(when_kind), WHEN_INDEX=tuple(when_index), HYP_KIND=spec.kinds,
        ALWAYS=_ALWAYS, FLAG=_FLAG, NONZERO=_NONZERO, NONNEG=_NONNEG, REAL=_REAL,
        GRAD_SHAPE=f"{f}: grad must have the shape of param",
        STATE_SHAPE=f"{f}: the state arrays in use ({listed}) must have the shape of param",
        UNUSED_SHAPE=f"{f}: a state array not in use must be empty or have the shape of param",
        STEP=f"{f}: step must be >= 1 (the count after the increment)",
        HYP_MESSAGE=tuple(f"{f}: {name} must be {kind_words[kind]}"
                          for name, kind in zip(spec.reals, spec.kinds)),
        STATE_STATE=f"{f}: {listed} must not share memory",
        STATE_PARAM=f"{f}: the state arrays must not share memory with param or grad",
        GRAD_PARAM=f"{f}: grad overlaps param without being param itself")
    templates = _templates(rule.stamp())
    namespace["present"] = _instantiate(templates["present"], namespace, rule, inline="always")
    return _instantiate(templates["update"], namespace, rule)


# ------------------------------------------------------ the njit overloads
#
# One per public function, with its exact signature (Numba matches the
# argument names); each checks the types and calls the rule's compiled update.

@overload(adam_update, jit_options=_JIT)
def _adam_update_njit(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                      beta2, eps, weight_decay, amsgrad, maximize, decoupled):
    spec = _machinery("adam")
    spec.check_types(param, grad, (exp_avg, exp_avg_sq, max_exp_avg_sq), step,
                     (lr, beta1, beta2, eps, weight_decay), (amsgrad, maximize, decoupled))
    update = spec.update

    def impl(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
             weight_decay, amsgrad, maximize, decoupled):
        # float64 before any arithmetic: float32 scalars from njit callers
        # would otherwise round lr * weight_decay in float32 and break parity.
        update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step,
               (np.float64(lr), np.float64(beta1), np.float64(beta2), np.float64(eps),
                np.float64(weight_decay)), (amsgrad, maximize, decoupled))

    return impl


@overload(sgd_update, jit_options=_JIT)
def _sgd_update_njit(param, grad, momentum_buffer, step, lr, momentum, dampening,
                     weight_decay, nesterov, maximize):
    spec = _machinery("sgd")
    spec.check_types(param, grad, (momentum_buffer,), step,
                     (lr, momentum, dampening, weight_decay), (nesterov, maximize))
    update = spec.update

    def impl(param, grad, momentum_buffer, step, lr, momentum, dampening, weight_decay,
             nesterov, maximize):
        update(param, grad, momentum_buffer, param, param, step,
               (np.float64(lr), np.float64(momentum), np.float64(dampening),
                np.float64(weight_decay)), (nesterov, maximize))

    return impl


@overload(adagrad_update, jit_options=_JIT)
def _adagrad_update_njit(param, grad, sum, step, lr, lr_decay, weight_decay, eps, maximize):
    spec = _machinery("adagrad")
    spec.check_types(param, grad, (sum,), step, (lr, lr_decay, weight_decay, eps),
                     (maximize,))
    update = spec.update

    def impl(param, grad, sum, step, lr, lr_decay, weight_decay, eps, maximize):
        update(param, grad, sum, param, param, step,
               (np.float64(lr), np.float64(lr_decay), np.float64(weight_decay),
                np.float64(eps)), (maximize,))

    return impl


@overload(rmsprop_update, jit_options=_JIT)
def _rmsprop_update_njit(param, grad, square_avg, momentum_buffer, grad_avg, step, lr, alpha,
                         eps, weight_decay, momentum, centered, maximize):
    spec = _machinery("rmsprop")
    spec.check_types(param, grad, (square_avg, momentum_buffer, grad_avg), step,
                     (lr, alpha, eps, weight_decay, momentum), (centered, maximize))
    update = spec.update

    def impl(param, grad, square_avg, momentum_buffer, grad_avg, step, lr, alpha, eps,
             weight_decay, momentum, centered, maximize):
        update(param, grad, square_avg, momentum_buffer, grad_avg, step,
               (np.float64(lr), np.float64(alpha), np.float64(eps), np.float64(weight_decay),
                np.float64(momentum)), (centered, maximize))

    return impl
