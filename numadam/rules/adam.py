"""Adam, AdamW and AMSGrad: ``torch.optim.Adam(fused=True)`` bit for bit.

The update of one element, with ``t`` the step count after the increment.
Every scalar is computed once per step in float64 (``pow`` from libm, as
torch's ``FusedAdamKernel.cpp`` does) and rounded once to the parameter dtype;
the element math then runs entirely in that dtype, grouped exactly as below:

.. code-block:: text

    g     = grad * (-1 if maximize else 1)   # as torch: a NaN keeps its sign
    p     = p * fma(-lr, wd, 1)              # AdamW, wd != 0
    g     = fma(p, wd, g)                    # Adam (L2), wd != 0
    m     = fma(w, g - m, m)                 # lerp(m, g, w), w = 1 - beta1 < 0.5
    m     = fma(w - 1, g - m, g)             # lerp(m, g, w), w >= 0.5
    v     = fma(c2 * g, g, v * beta2)        # c2 = 1 - beta2
    vmax  = max(vmax, v)                     # AMSGrad, NaN-propagating
    denom = sqrt(v or vmax) / sqrt(1 - beta2**t) + eps
    p     = p + (-(lr / (1 - beta1**t)) * m) / denom

State (torch's names): ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
AMSGrad, ``max_exp_avg_sq`` (vmax), created at the first step.
"""

import math

from numba import njit

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.core.math import fma, mul_rn
from numadam.core.optimizer import Optimizer
from numadam.core.rule import Hyper, StateArray, UpdateRule

__all__ = ["Adam", "AdamW", "RULE"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
NEG_STEP, BC2_SQRT, EPS, WD, W1, W1M1, C2, BETA2, DECAY, ONE = range(10)
NSCALARS = 10


@njit(cache=CACHE, error_model="numpy")
def scalars_into(out, step, first, hyp):
    """Fill ``out`` (length ``NSCALARS``, parameter dtype) for step ``step``.

    ``hyp`` is ``(lr, beta1, beta2, eps, weight_decay)``. The bias corrections
    use float64 and libm's ``pow``, exactly as torch's fused kernel does
    (``1 - std::pow(beta1, step)``), and are rounded to the parameter dtype
    only at the end. Each scalar is rounded as torch's compiled kernel rounds
    it, fused multiply-adds included.
    """
    lr, beta1, beta2, eps, weight_decay = hyp
    t = float(step)
    bias_correction1 = 1.0 - math.pow(beta1, t)
    bias_correction2 = 1.0 - math.pow(beta2, t)
    out[NEG_STEP] = -(lr / bias_correction1)
    out[BC2_SQRT] = math.sqrt(bias_correction2)
    out[EPS] = eps
    out[WD] = weight_decay
    out[W1] = 1.0 - beta1
    # torch forms (w - 1) from w already rounded to the parameter dtype; the
    # subtraction is exact for w in [0.5, 1], so float64 gives the same value.
    out[W1M1] = out[W1] - 1.0
    out[C2] = 1.0 - beta2
    out[BETA2] = beta2
    # GCC contracts torch's host-side ``1 - lr * weight_decay`` into one FMA
    # (its only product feeding an add or subtraction; the other scalars are
    # sums, quotients, pow and sqrt): a separately rounded product differs in
    # the last bit of float64 for some pairs, e.g. lr=0.1, weight_decay=10.
    out[DECAY] = fma(-lr, weight_decay, 1.0)
    out[ONE] = 1.0


@njit(cache=CACHE, error_model="numpy", inline="always")
def loop_scalars(s, flags):
    """The scalars of :func:`element` from the vector ``s``, as locals.

    ``lerp_w`` and ``lerp_small`` select torch's two forms of ``lerp``
    without a branch in the loop. ``sign`` is -1 to maximise: torch
    multiplies by -1 too, which (unlike a negation) leaves the sign of a NaN
    alone.
    """
    maximize = flags[1]
    lerp_small = abs(s[W1]) < 0.5
    lerp_w = s[W1] if lerp_small else s[W1M1]
    sign = -s[ONE] if maximize else s[ONE]
    return (s[NEG_STEP], s[BC2_SQRT], s[EPS], s[WD], lerp_w, lerp_small, s[C2], s[BETA2],
            s[DECAY], sign)


@njit(cache=CACHE, error_model="numpy", inline="always")
def element(p, g, m, v, vmax, sc, flags):
    """One element of the update; returns the new ``(p, m, v, vmax)``.

    ``flags`` is ``(amsgrad, maximize, decoupled)``; without AMSGrad ``vmax``
    is a dummy and is returned unchanged.
    """
    (neg_step, bc2_sqrt, eps, weight_decay, lerp_w, lerp_small, c2, beta2, decay,
     sign) = sc
    amsgrad, _, decoupled = flags
    g = mul_rn(g, sign)
    if weight_decay != 0:
        if decoupled:
            p = mul_rn(p, decay)
        else:
            g = fma(p, weight_decay, g)
    m = fma(lerp_w, g - m, m if lerp_small else g)
    v = fma(mul_rn(c2, g), g, mul_rn(v, beta2))
    if amsgrad:
        # torch's vectorised maximum propagates a NaN from either side.
        if vmax == vmax and not (v <= vmax):
            vmax = v
        denom = math.sqrt(vmax) / bc2_sqrt + eps
    else:
        denom = math.sqrt(v) / bc2_sqrt + eps
    p = p + mul_rn(neg_step, m) / denom
    return p, m, v, vmax


RULE = UpdateRule(
    name="adam",
    module=__name__,
    hyper=(Hyper("lr", 1e-3), Hyper("betas", (0.9, 0.999), "betas"), Hyper("eps", 1e-8),
           Hyper("weight_decay", 0.0), Hyper("amsgrad", False, "flag"),
           Hyper("maximize", False, "flag"), Hyper("decoupled_weight_decay", False, "flag")),
    state=(StateArray("exp_avg"), StateArray("exp_avg_sq", signed=False),
           StateArray("max_exp_avg_sq", when="amsgrad", signed=False)),
    # Written by torch versions older than the flag; absent means the default.
    load_defaults=("amsgrad", "maximize", "decoupled_weight_decay"),
    scalars_into=scalars_into, loop_scalars=loop_scalars, element=element,
    nscalars=NSCALARS)


class Adam(Optimizer):
    r"""Adam with the update of ``torch.optim.Adam(fused=True)``, bit for bit.

    Parameters
    ----------
    params : sequence of arrays, or sequence of dict
        The arrays to optimise (float32 or float64, C-contiguous, writeable,
        any shape), updated **in place**: NumPy arrays, or device arrays (CuPy,
        Numba, any ``__cuda_array_interface__`` object; experimental, see the
        README); or parameter groups: dicts with a ``"params"`` list and any
        hyperparameter below as a per-group override.
    lr : float, default 1e-3
        Learning rate (>= 0). Edit ``opt.param_groups[i]["lr"]`` between
        steps to schedule it.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator (>= 0).
    weight_decay : float, default 0
        L2 penalty added to the gradient (``AdamW``: decoupled decay).
    amsgrad : bool, default False
        Use the running maximum of the second moment (AMSGrad).
    maximize : bool, default False
        Maximise the objective instead of minimising it.
    check_finite : {None, "raise", "skip"}, default None
        Guard against gradients holding NaN or Inf (see :class:`Optimizer`).
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
        torch's implementation flags (see :class:`Optimizer`).
    decoupled_weight_decay : bool, default False
        ``True`` decays the parameters as :class:`AdamW` does (torch's flag
        of the same name). Not an argument of ``AdamW``, which always decays
        this way.

    Notes
    -----
    The update, with its exact rounding, is stated once in
    :mod:`numadam.rules.adam`. State: ``step``, ``exp_avg``, ``exp_avg_sq``
    and, with AMSGrad, ``max_exp_avg_sq``.

    Examples
    --------
    >>> import numpy as np, numadam
    >>> x = np.array([3.0, -2.0])
    >>> opt = numadam.Adam([x], lr=0.1)
    >>> for _ in range(500):
    ...     opt.step([2 * x])                # gradient of sum(x**2)
    >>> bool(np.all(np.abs(x) < 1e-3))
    True
    """

    rule = RULE

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, state_format="full",
                 stochastic_rounding=False, seed=0, foreach=None, fused=None, capturable=False,
                 differentiable=False, decoupled_weight_decay=False):
        _validation.torch_only_flags(foreach, fused, capturable, differentiable)
        self._init(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=_validation.torch_flag(
                "decoupled_weight_decay", decoupled_weight_decay)),
            check_finite, max_grad_norm, clip_value, state_format,
                   stochastic_rounding, seed)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW(fused=True)``).

    The parameters are first scaled by ``1 - lr * weight_decay``, then take
    the Adam step. Same arguments as :class:`Adam`; ``weight_decay``
    defaults to 1e-2.
    """

    # torch's AdamW.__setstate__ sets this whatever a loaded state dict says:
    # an Adam state dict loaded into AdamW decays the AdamW way. Adam keeps the
    # saved value (an AdamW state dict makes it decouple), as torch's does.
    _forced = {"decoupled_weight_decay": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, state_format="full",
                 stochastic_rounding=False, seed=0, foreach=None, fused=None, capturable=False,
                 differentiable=False):
        _validation.torch_only_flags(foreach, fused, capturable, differentiable)
        self._init(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=True),
            check_finite, max_grad_norm, clip_value, state_format,
                   stochastic_rounding, seed)
