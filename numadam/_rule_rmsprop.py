"""The per-element RMSprop update, bit for bit ``torch.optim.RMSprop`` on the CPU.

torch has no fused RMSprop kernel: ``_single_tensor_rmsprop`` (and, with the
same bits, ``_multi_tensor_rmsprop``) runs one ATen operation per line, each
rounding its result to the parameter dtype. The only fusions are the ones
ATen's vectorised CPU kernels write or its compiler makes:

.. code-block:: text

    g   = -grad if maximize else grad         # torch.neg: flips a NaN's sign too
    g   = fma(p, wd, g)                       # g.add(p, alpha=wd), wd != 0
    sa  = sa * alpha                          # square_avg.mul_(alpha)
    sa  = fma(c * g, g, sa)                   # .addcmul_(g, g, value=c), c = 1 - alpha
    ga  = fma(w, g - ga, ga)                  # grad_avg.lerp_(g, c), |c| < 0.5
    ga  = fma(c - 1, g - ga, g)               #   the same, |c| >= 0.5
    avg = sqrt(fma(-ga, ga, sa)) if centered else sqrt(sa)
    avg = avg + eps
    buf = buf * momentum + g / avg            # buf.mul_(momentum).addcdiv_(g, avg), momentum > 0
    p   = fma(buf, -lr, p)                    # p.add_(buf, alpha=-lr), momentum > 0
    p   = p + ((-lr) * g) / avg               # p.addcdiv_(g, avg, value=-lr), momentum == 0

Where each rounding comes from (torch 2.13, x86-64 AVX2/AVX512 build, every
element on the vectorised path):

- ``add`` with ``alpha`` is ``vec::fmadd(other, alpha, self)``
  (``aten/src/ATen/native/ufunc/add.h``): one rounding. ``avg + eps`` is the
  same kernel with ``alpha = 1``, so a plain sum.
- ``addcmul`` is ``self + value * t1 * t2`` on ``Vectorized<scalar_t>``
  (``addcmul_cpu_kernel``, ``aten/src/ATen/native/cpu/PointwiseOpsKernel.cpp``);
  the operators are GCC vector expressions, which GCC contracts into one FMA:
  ``fma(value * t1, t2, self)``. With ``value = -1`` the product ``-ga`` is exact.
- ``addcdiv`` is ``self + value * t1 / t2`` (same file): the division keeps the
  product from any add, so three roundings; ``value = 1`` makes ``1 * g`` exact.
- ``lerp`` with a scalar weight is ``lerp_vec`` (``aten/src/ATen/native/cpu/
  LerpKernel.cpp``): ``fmadd(w < 0.5 ? w : w - 1, end - self, w < 0.5 ? self :
  end)``, ``w - 1`` formed in the parameter dtype.
- ``mul`` and ``neg`` round once (``BinaryOpsKernel.cpp``, ``UnaryOpsKernel.cpp``).
- ``sqrt`` is the one operation this module does NOT reproduce. In an MKL
  build (torch's CPU wheels) ``sqrt_kernel`` goes through ``at::vml::vsqrt``
  (``aten/src/ATen/cpu/vml.h``, ``IMPLEMENT_VML_MKL``) to MKL's
  ``vsSqrt``/``vdSqrt`` in ``VML_HA`` mode, which is faithfully but not
  correctly rounded: measured with torch 2.13.0 on an AVX512 machine, about
  0.65% of random inputs come out one ulp below the correctly rounded root
  (the exact root lies 0.50 to 0.54 ulp above the returned value), in float32
  and float64 alike, and torch's results equal MKL's own ``VMSSQRT_``/
  ``VMDSQRT_`` called directly. ``math.sqrt`` here is correctly rounded, so
  an element whose root MKL rounds down differs from torch from that step on.
  MKL picks its code path by CPU, so torch's own bits can differ between
  machines there.

Scalars: every Python scalar (``alpha``, ``1 - alpha``, ``-lr``, ``eps``,
``weight_decay``, ``momentum``) is computed in float64 by the Python code and
rounded once to the parameter dtype by ``Scalar::to<scalar_t>`` (float's
opmath type is float). The branches ``weight_decay != 0`` and ``momentum > 0``
test the float64 values, so a hyperparameter that rounds to zero in float32
still takes torch's branch; they travel as 0/1 flags.
"""

import math

from numba import njit

from ._jitcache import CACHE
from ._math import fma, mul_rn

__all__ = ["scalars_into", "loop_scalars", "element", "NSCALARS"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
ALPHA, ONE_MINUS_ALPHA, LERP_W, LERP_SMALL, NEG_LR, EPS, WD, HAS_WD, MOMENTUM, \
    HAS_MOMENTUM = range(10)
NSCALARS = 10


@njit(cache=CACHE, error_model="numpy")
def scalars_into(out, step, first, hyp):
    """Fill ``out`` (length ``NSCALARS``, parameter dtype) for one parameter.

    ``hyp`` is ``(lr, alpha, eps, weight_decay, momentum)`` in float64.
    RMSprop's scalars do not depend on ``step`` or ``first``.
    """
    lr, alpha, eps, weight_decay, momentum = hyp
    out[ALPHA] = alpha
    out[ONE_MINUS_ALPHA] = 1.0 - alpha
    # lerp_vec picks its form by |w| < 0.5 on w in the parameter dtype, and
    # subtracts 1 there: the float64 difference of two such values is exact,
    # so storing it rounds once, as the vector subtraction does.
    w = out[ONE_MINUS_ALPHA]
    small = abs(w) < 0.5
    out[LERP_W] = w if small else w - 1.0
    out[LERP_SMALL] = 1.0 if small else 0.0
    out[NEG_LR] = -lr
    out[EPS] = eps
    out[WD] = weight_decay
    out[HAS_WD] = 1.0 if weight_decay != 0.0 else 0.0
    out[MOMENTUM] = momentum
    out[HAS_MOMENTUM] = 1.0 if momentum > 0.0 else 0.0


@njit(cache=CACHE, error_model="numpy", inline="always")
def loop_scalars(s, flags):
    """The scalars of :func:`element` from the vector ``s``, as locals."""
    return (s[ALPHA], s[ONE_MINUS_ALPHA], s[LERP_W], s[LERP_SMALL] != 0, s[NEG_LR], s[EPS],
            s[WD], s[HAS_WD] != 0, s[MOMENTUM], s[HAS_MOMENTUM] != 0)


@njit(cache=CACHE, error_model="numpy", inline="always")
def element(p, g, a, b, c, sc, flags):
    """One element; returns the new ``(p, a, b, c)``.

    ``a`` is ``square_avg``; ``b`` and ``c`` are ``momentum_buffer`` and
    ``grad_avg`` in that order, each present only when its option is on (the
    present rows come first). ``sc`` is :func:`loop_scalars`' tuple and
    ``flags`` is ``(centered, maximize)``.
    """
    alpha, one_minus_alpha, lerp_w, lerp_small, neg_lr, eps, wd, has_wd, momentum, \
        has_momentum = sc
    centered, maximize = flags
    if maximize:
        g = -g
    if has_wd:
        g = fma(p, wd, g)
    square_avg = fma(mul_rn(one_minus_alpha, g), g, mul_rn(a, alpha))
    buf = b
    grad_avg = c if has_momentum else b
    if centered:
        grad_avg = fma(lerp_w, g - grad_avg, grad_avg if lerp_small else g)
        avg = math.sqrt(fma(-grad_avg, grad_avg, square_avg)) + eps
    else:
        avg = math.sqrt(square_avg) + eps
    if has_momentum:
        buf = mul_rn(buf, momentum) + g / avg
        p = fma(buf, neg_lr, p)
    else:
        p = p + mul_rn(neg_lr, g) / avg
    if has_momentum:
        return p, square_avg, buf, grad_avg
    return p, square_avg, grad_avg, c
