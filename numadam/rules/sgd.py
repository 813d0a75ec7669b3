"""The per-element SGD update (momentum, dampening, Nesterov): the one definition.

It reproduces ``torch.optim.SGD(fused=True)`` on the CPU bit for bit wherever
torch takes its vectorised path (ATen ``native/cpu/FusedSGDKernel.cpp``,
``sgd_math`` for float and double). The source writes only plain ``*`` and
``+``; GCC contracts each product that feeds an addition into a fused
multiply-add, and the grouping below is the one it produces:

.. code-block:: text

    g   = grad * (-1 if maximize else 1)     # as torch: a NaN keeps its sign
    g   = fma(p, wd, g)                      # wd != 0
    buf = g                                  # momentum != 0, first step
    buf = fma(g, c, buf * momentum)          # momentum != 0, later steps; c = 1 - dampening
    g   = fma(buf, momentum, g)              # nesterov
    g   = buf                                # momentum != 0, not nesterov
    p   = fma(g, -lr, p)

The scalars ``wd``, ``momentum``, ``1 - dampening`` and ``-lr`` are formed in
float64 (``1 - dampening`` and ``-lr`` on the host, exactly) and rounded once
to the parameter dtype (``scalar_t(...)`` in the kernel). Whether weight decay
and momentum apply is decided on the float64 values, as torch's
``weight_decay != 0.0`` and ``momentum != 0.0``: a value that rounds to zero
in float32 still runs its branch. The "first step" is torch's
``_fused_sgd`` rule: the buffer is the (decayed) gradient itself when no
momentum buffer of the group exists yet.
"""

from numba import njit

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.core.math import fma, mul_rn
from numadam.core.optimizer import Optimizer
from numadam.core.rule import Hyper, StateArray, UpdateRule

__all__ = ["SGD", "RULE"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
NEG_LR, MOMENTUM, DAMP1, WD, WD_ON, MOMENTUM_ON, FIRST, ONE = range(8)
NSCALARS = 8


@njit(cache=CACHE, error_model="numpy")
def scalars_into(out, step, first, hyp):
    """Fill ``out`` (length ``NSCALARS``, parameter dtype) for one parameter.

    ``hyp`` is ``(lr, momentum, dampening, weight_decay)`` in float64; SGD has
    no step count, so ``step`` is unused. ``first`` is True when the parameter
    has no momentum buffer yet. torch's host code only negates ``lr`` and
    forms ``1 - dampening`` (no product, so nothing for GCC to contract); the
    kernel casts each to ``scalar_t``.
    """
    lr, momentum, dampening, weight_decay = hyp
    out[NEG_LR] = -lr
    out[MOMENTUM] = momentum
    out[DAMP1] = 1.0 - dampening
    out[WD] = weight_decay
    out[WD_ON] = 1.0 if weight_decay != 0.0 else 0.0
    out[MOMENTUM_ON] = 1.0 if momentum != 0.0 else 0.0
    out[FIRST] = 1.0 if first else 0.0
    out[ONE] = 1.0


@njit(cache=CACHE, error_model="numpy", inline="always")
def loop_scalars(s, flags):
    """The scalars of :func:`element` from the vector ``s``, as locals.

    ``flags`` is ``(nesterov, maximize)``. The 0/1 entries become booleans
    here, before the caller's loop, so that the branches they select are
    loop-invariant and LLVM hoists them out of the vectorised loop.
    """
    maximize = flags[1]
    sign = -s[ONE] if maximize else s[ONE]
    return (s[NEG_LR], s[MOMENTUM], s[DAMP1], s[WD], s[WD_ON] != 0,
            s[MOMENTUM_ON] != 0, s[FIRST] != 0, sign)


@njit(cache=CACHE, error_model="numpy", inline="always")
def element(p, g, a, b, c, sc, flags):
    """One element; returns ``(p, buf, b, c)`` (``a`` is the momentum buffer).

    Without momentum there are no state rows and ``a`` is a dummy; ``b`` and
    ``c`` always are. ``sign`` is -1 to maximise: torch multiplies by -1,
    which (unlike a negation) leaves the sign of a NaN alone.
    """
    neg_lr, momentum, damp1, weight_decay, wd_on, momentum_on, first, sign = sc
    nesterov = flags[0]
    g = mul_rn(g, sign)
    if wd_on:
        g = fma(p, weight_decay, g)
    if momentum_on:
        a = g if first else fma(g, damp1, mul_rn(a, momentum))
        g = fma(a, momentum, g) if nesterov else a
    p = fma(g, neg_lr, p)
    return p, a, b, c


def _check(values):
    # torch's SGD.__init__ rule, applied to every group here.
    if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
        raise ValueError("nesterov=True requires a momentum > 0 and zero dampening (as in "
                         f"torch), got momentum={values['momentum']!r}, "
                         f"dampening={values['dampening']!r}")


RULE = UpdateRule(
    name="sgd",
    module=__name__,
    hyper=(Hyper("lr", 1e-3), Hyper("momentum", 0.0), Hyper("dampening", 0.0, "real"),
           Hyper("weight_decay", 0.0), Hyper("nesterov", False, "flag"),
           Hyper("maximize", False, "flag")),
    # torch keeps no state without momentum, and no step count at all.
    state=(StateArray("momentum_buffer", when="momentum"),),
    keeps_step=False,
    load_defaults=("nesterov", "maximize"),
    check=_check,
    scalars_into=scalars_into, loop_scalars=loop_scalars, element=element,
    nscalars=NSCALARS)


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, ``torch.optim.SGD(fused=True)``
    bit for bit.

    Parameters
    ----------
    params : sequence of arrays, or sequence of dict
        As for :class:`numadam.Adam`: arrays updated in place, or parameter
        groups with per-group overrides of the hyperparameters below.
    lr : float, default 1e-3
        Learning rate (>= 0).
    momentum : float, default 0
        Momentum factor (>= 0). Zero keeps no state, as in torch.
    dampening : float, default 0
        Dampening of the momentum (a finite number).
    weight_decay : float, default 0
        L2 penalty added to the gradient (>= 0).
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    maximize : bool, default False
        Maximise the objective instead of minimising it.
    check_finite : {None, "raise", "skip"}, default None
        Guard against gradients holding NaN or Inf (see
        :class:`numadam.core.optimizer.Optimizer`).
    max_grad_norm, clip_value : float, optional
        Gradient clipping by the global norm and elementwise, fused into
        the step (see :class:`numadam.core.optimizer.Optimizer`).
    state_format : {"full", "bfloat16", "8bit"}, default "full"
        How the state arrays are stored (see :mod:`numadam.formats`).
    stochastic_rounding : bool, default False
        Write bfloat16 parameters back with stochastic rounding instead of
        round-to-nearest-even.
    seed : int, default 0
        The seed of stochastic rounding's counter-based generator.
    foreach, fused, capturable, differentiable
        torch's implementation flags (see :class:`~numadam.core.optimizer.Optimizer`).

    Notes
    -----
    The update, with its exact rounding, is stated once in
    :mod:`numadam.rules.sgd`. State: ``momentum_buffer`` (with momentum),
    made from the gradient at a parameter's first step; no ``step``.

    Examples
    --------
    >>> import numpy as np, numadam
    >>> x = np.array([3.0, -2.0])
    >>> opt = numadam.SGD([x], lr=0.1, momentum=0.9)
    >>> for _ in range(300):
    ...     opt.step([2 * x])                # gradient of sum(x**2)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """

    rule = RULE

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, state_format="full",
                 stochastic_rounding=False, seed=0, foreach=None, fused=None, capturable=False,
                 differentiable=False):
        _validation.torch_only_flags(foreach, fused, capturable, differentiable)
        self._init(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                weight_decay=weight_decay, nesterov=nesterov,
                                maximize=maximize),
                   check_finite, max_grad_norm, clip_value, state_format,
                   stochastic_rounding, seed)
