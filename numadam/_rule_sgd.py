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

from ._jitcache import CACHE
from ._math import fma, mul_rn

__all__ = ["NSCALARS", "element", "loop_scalars", "scalars_into"]

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
