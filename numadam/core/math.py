"""The per-element Adam update: the one definition every backend compiles.

The grouping of every operation below is deliberate. Together with the scalars
prepared by :func:`scalars_into` it reproduces ``torch.optim.Adam(fused=True)``
on the CPU bit for bit (see ``DESIGN.md`` and ``tests/test_golden.py``):

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

Every scalar is computed once per step in float64 and rounded once to the
parameter dtype; the element math then runs entirely in that dtype.
"""

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from numadam.core.jitcache import CACHE

__all__ = ["fma", "mul_rn", "adam_element", "loop_scalars", "scalars_into", "NSCALARS"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
NEG_STEP, BC2_SQRT, EPS, WD, W1, W1M1, C2, BETA2, DECAY, ONE = range(10)
NSCALARS = 10


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with a single rounding (LLVM's ``llvm.fma``).

    Numba never contracts a multiply and an add by itself, so the places where
    torch's compiled kernels use a fused multiply-add must say so explicitly.
    """
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@intrinsic
def mul_rn(typingctx, a, b):
    """``a * b`` rounded to nearest, which no compiler may fuse into an FMA.

    On the CPU this is a plain multiply: Numba never contracts. NVVM and
    ptxas contract a multiply that feeds an add unless told otherwise, and
    numba-cuda 0.30 offers no ``fma=False`` option, so on a CUDA target the
    product is NVVM's ``mul.rn`` intrinsic (CUDA's ``__fmul_rn``), which both
    leave alone. One definition serves both targets: the lowering looks at the
    LLVM module's target triple.
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        if not builder.module.triple.startswith("nvptx"):
            return builder.fmul(*args)
        name = "llvm.nvvm.mul.rn.f" if signature.return_type.bitwidth == 32 else \
            "llvm.nvvm.mul.rn.d"
        value_type = args[0].type
        function = builder.module.declare_intrinsic(
            name, fnty=ir.FunctionType(value_type, [value_type, value_type]))
        return builder.call(function, args)

    return a(a, b), codegen


@njit(cache=CACHE, error_model="numpy")
def scalars_into(out, step, lr, beta1, beta2, eps, weight_decay):
    """Fill ``out`` (length ``NSCALARS``, parameter dtype) for step ``step``.

    The bias corrections use float64 and libm's ``pow``, exactly as torch's
    fused kernel does (``1 - std::pow(beta1, step)``), and are rounded to the
    parameter dtype only at the end. Each scalar is rounded as torch's compiled
    kernel rounds it, fused multiply-adds included.
    """
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
    out[DECAY] = fma(-float(lr), float(weight_decay), 1.0)
    out[ONE] = 1.0


@njit(cache=CACHE, error_model="numpy", inline="always")
def adam_element(p, g, m, v, vmax, neg_step, bc2_sqrt, eps, weight_decay, lerp_w,
                 lerp_small, c2, beta2, decay, sign, amsgrad, decoupled):
    """One element of the update; returns the new ``(p, m, v, vmax)``.

    Every scalar is already in the element dtype (see :func:`loop_scalars`),
    so no operation here widens to float64. Callers load the scalars into
    locals before their loop: loads from an array inside the loop could alias
    the parameters and would stop LLVM from hoisting the branches and
    vectorising. ``sign`` is -1 to maximise: torch multiplies by -1 too, which
    (unlike a negation) leaves the sign of a NaN alone. ``lerp_w`` and
    ``lerp_small`` select torch's two forms of ``lerp`` without a branch.
    """
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


@njit(cache=CACHE, error_model="numpy", inline="always")
def loop_scalars(s, maximize):
    """The scalars of :func:`adam_element` from the vector ``s``, as locals."""
    lerp_small = abs(s[W1]) < 0.5
    lerp_w = s[W1] if lerp_small else s[W1M1]
    sign = -s[ONE] if maximize else s[ONE]
    return (s[NEG_STEP], s[BC2_SQRT], s[EPS], s[WD], lerp_w, lerp_small, s[C2], s[BETA2],
            s[DECAY], sign)
