"""The per-element Adagrad update: the one definition.

It reproduces ``torch.optim.Adagrad(fused=True)`` on the CPU bit for bit
wherever torch takes its vectorised path (ATen
``native/cpu/FusedAdagradKernel.cpp``, ``adagrad_math`` for float and double,
and ``adagrad_fused_step_impl`` for the learning rate). The source writes only
plain ``*``, ``+`` and ``/``; GCC contracts the products that feed an addition
into fused multiply-adds, and the grouping below is the one it produces:

.. code-block:: text

    g     = grad * (-1 if maximize else 1)   # as torch: a NaN keeps its sign
    g     = fma(p, wd, g)                    # wd != 0
    sum   = fma(g, g, sum)
    denom = sqrt(sum) + eps
    p     = p - (clr * g) / denom
    clr   = lr / fma(t - 1, lr_decay, 1)     # host, float64, t = step after increment

``clr``, ``eps`` and ``wd`` are computed in float64 and rounded once to the
parameter dtype (``scalar_t(...)`` in the kernel); whether weight decay
applies is decided on the float64 value (torch's ``weight_decay != 0.0``).
The state ``sum`` starts at ``initial_accumulator_value`` rounded to the
parameter dtype (``torch.full_like``) and ``step`` at 0, both created by the
constructor.
"""

import math

from numba import njit

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.core.math import fma, mul_rn
from numadam.core.optimizer import Optimizer
from numadam.core.rule import Hyper, StateArray, UpdateRule

__all__ = ["Adagrad", "RULE"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
CLR, EPS, WD, WD_ON, ONE = range(5)
NSCALARS = 5


@njit(cache=CACHE, error_model="numpy")
def scalars_into(out, step, first, hyp):
    """Fill ``out`` (length ``NSCALARS``, parameter dtype) for step ``step``.

    ``hyp`` is ``(lr, lr_decay, weight_decay, eps)`` in float64; ``first`` is
    unused (the state exists from construction). torch reads the step from
    its float32 state tensor into a double and computes
    ``lr / (1.0 + (step - 1.0) * lr_decay)``; GCC contracts the product and
    the sum into one FMA (a separately rounded product differs in the last
    bit of float64 for some decays: with lr_decay=0.1 at step 8 it gives
    1.7000000000000002 instead of 1.7).
    """
    lr, lr_decay, weight_decay, eps = hyp
    out[CLR] = lr / fma(float(step) - 1.0, float(lr_decay), 1.0)
    out[EPS] = eps
    out[WD] = weight_decay
    out[WD_ON] = 1.0 if weight_decay != 0.0 else 0.0
    out[ONE] = 1.0


@njit(cache=CACHE, error_model="numpy", inline="always")
def loop_scalars(s, flags):
    """The scalars of :func:`element` from the vector ``s``, as locals.

    ``flags`` is ``(maximize,)``. ``WD_ON`` becomes a boolean here, before
    the caller's loop, so that its branch is loop-invariant.
    """
    sign = -s[ONE] if flags[0] else s[ONE]
    return s[CLR], s[EPS], s[WD], s[WD_ON] != 0, sign


@njit(cache=CACHE, error_model="numpy", inline="always")
def element(p, g, a, b, c, sc, flags):
    """One element; returns ``(p, sum, b, c)`` (``a`` is the sum).

    ``sign`` is -1 to maximise: torch multiplies by -1, which (unlike a
    negation) leaves the sign of a NaN alone.
    """
    clr, eps, weight_decay, wd_on, sign = sc
    g = mul_rn(g, sign)
    if wd_on:
        g = fma(p, weight_decay, g)
    a = fma(g, g, a)
    p = p - mul_rn(clr, g) / (math.sqrt(a) + eps)
    return p, a, b, c


RULE = UpdateRule(
    name="adagrad",
    module=__name__,
    hyper=(Hyper("lr", 1e-2), Hyper("lr_decay", 0.0), Hyper("weight_decay", 0.0),
           Hyper("initial_accumulator_value", 0.0, "init"), Hyper("eps", 1e-10),
           Hyper("maximize", False, "flag")),
    state=(StateArray("sum", init="initial_accumulator_value", signed=False),),
    # torch's Adagrad.__init__ creates step 0 and the sum for every parameter.
    eager_state=True,
    load_defaults=("maximize",),
    scalars_into=scalars_into, loop_scalars=loop_scalars, element=element,
    nscalars=NSCALARS)


class Adagrad(Optimizer):
    r"""Adagrad, ``torch.optim.Adagrad(fused=True)`` bit for bit.

    Parameters
    ----------
    params : sequence of arrays, or sequence of dict
        As for :class:`numadam.Adam`: arrays updated in place, or parameter
        groups with per-group overrides of the hyperparameters below.
    lr : float, default 1e-2
        Learning rate (>= 0).
    lr_decay : float, default 0
        The rate at step ``t`` is ``lr / (1 + (t - 1) * lr_decay)`` (>= 0).
    weight_decay : float, default 0
        L2 penalty added to the gradient (>= 0).
    initial_accumulator_value : float, default 0
        The value every element of ``sum`` starts from (>= 0). As in torch,
        the constructor's value: a group's own entry is kept in
        ``param_groups`` but initialises nothing.
    eps : float, default 1e-10
        Added to the denominator (>= 0).
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
    :mod:`numadam.rules.adagrad`. State: ``step`` and ``sum``, created for
    every parameter by the constructor (and by ``add_param_group``), as
    torch's are.

    Examples
    --------
    >>> import numpy as np, numadam
    >>> x = np.array([3.0, -2.0])
    >>> opt = numadam.Adagrad([x], lr=0.5)
    >>> for _ in range(500):
    ...     opt.step([2 * x])                # gradient of sum(x**2)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """

    rule = RULE

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False,
                 check_finite=None, max_grad_norm=None, clip_value=None, state_format="full",
                 stochastic_rounding=False, seed=0, foreach=None,
                 fused=None, capturable=False, differentiable=False):
        _validation.torch_only_flags(foreach, fused, capturable, differentiable)
        self._init(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                initial_accumulator_value=initial_accumulator_value,
                                eps=eps, maximize=maximize),
                   check_finite, max_grad_norm, clip_value, state_format,
                   stochastic_rounding, seed)
