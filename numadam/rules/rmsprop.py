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
    ga  = fma(c, g - ga, ga)                  # grad_avg.lerp_(g, c), |c| < 0.5
    ga  = fma(c - 1, g - ga, g)               #   the same, |c| >= 0.5
    avg = torch_sqrt(fma(-ga, ga, sa)) if centered else torch_sqrt(sa)
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
  GCC builds the ``Vectorized`` operators from generic vector expressions and
  contracts the last product and the sum into one FMA (measured):
  ``fma(value * t1, t2, self)``. With ``value = -1`` the product ``-ga`` is exact.
- ``addcdiv`` is ``self + value * t1 / t2`` (same file): the division keeps the
  product from any add, so three roundings; ``value = 1`` makes ``1 * g`` exact.
- ``lerp`` with a scalar weight is ``lerp_vec`` (``aten/src/ATen/native/cpu/
  LerpKernel.cpp``): ``fmadd(w < 0.5 ? w : w - 1, end - self, w < 0.5 ? self :
  end)``, ``w - 1`` formed in the parameter dtype.
- ``mul`` and ``neg`` round once (``BinaryOpsKernel.cpp``, ``UnaryOpsKernel.cpp``).
- ``sqrt`` is NOT correctly rounded. In an MKL build (torch's CPU wheels)
  ``sqrt_kernel`` goes through ``at::vml::vsqrt`` (``aten/src/ATen/cpu/vml.h``,
  ``IMPLEMENT_VML_MKL``) to MKL's ``vsSqrt``/``vdSqrt`` with ``VML_HA``:
  measured with torch 2.13.0 on an AVX512 CPU, about 0.65% of inputs come out
  one ulp below the correctly rounded root, float32 and float64 alike, and
  torch's bits equal those of MKL's ``VMSSQRT_``/``VMDSQRT_`` called directly.
  :func:`torch_sqrt` reproduces them: on AVX512, ``y = vrsqrt14(x)`` seeds
  ``root = x * y``; float32 applies one Newton correction ``fma(fma(-root,
  root, x), y / 2, root)``, float64 a Goldschmidt iteration first; inputs
  below 2**-64 (float32) or 2**-512 (float64) are scaled by an even power of
  two and back. Measured: no differing bit over 2 million inputs spread over
  every binade, subnormals, zeros, infinities and NaN included. MKL picks its
  code path by CPU, so on a CPU without AVX512 torch's own bits differ and
  this module falls back to the correctly rounded root.

Scalars: every Python scalar (``alpha``, ``1 - alpha``, ``-lr``, ``eps``,
``weight_decay``, ``momentum``) is computed in float64 by the Python code and
rounded once to the parameter dtype by ``Scalar::to<scalar_t>`` (float's
opmath type is float). The branches ``weight_decay != 0`` and ``momentum > 0``
test the float64 values, so a hyperparameter that rounds to zero in float32
still takes torch's branch; they travel as 0/1 flags.
"""

import math

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.extending import intrinsic, overload

from numadam.core import validation as _validation
from numadam.core.jitcache import CACHE
from numadam.core.math import fma, mul_rn
from numadam.core.optimizer import Optimizer
from numadam.core.rule import Hyper, StateArray, UpdateRule

__all__ = ["RMSprop", "RULE"]

# Layout of the per-step scalar vector (parameter dtype) built by scalars_into.
ALPHA, ONE_MINUS_ALPHA, LERP_W, LERP_SMALL, NEG_LR, EPS, WD, HAS_WD, MOMENTUM, \
    HAS_MOMENTUM = range(10)
NSCALARS = 10

# MKL takes its AVX512 code path on a host with AVX512F; the emulation of it
# below needs the same instruction (VRSQRT14) to seed its root.
_AVX512 = bool(binding.get_host_cpu_features().get("avx512f"))


def _rsqrt14_functions(module, ftype):
    """The function ``numadam.rsqrt14.f32`` (or ``.f64``) in ``module``: AVX512's
    scalar ``vrsqrt14ss``/``vrsqrt14sd``, declared with packed twins
    (``vrsqrt14ps``/``vrsqrt14pd`` on 128, 256 and 512 bits) that LLVM's loop
    vectoriser substitutes for it (the ``vector-function-abi-variant``
    attribute). LLVM knows no vector form of the scalar x86 intrinsic, so
    without the twins a loop around it stays scalar. Packed and scalar give the
    same bits (measured: every float32 mantissa of 24 exponents, subnormals,
    infinities and NaN included, both signs; 24 million float64 inputs).
    Both dtypes are defined at once: a module has one ``llvm.compiler.used``.
    """
    name = f"numadam.rsqrt14.f{32 if isinstance(ftype, ir.FloatType) else 64}"
    if name not in module.globals:
        twins = _define_rsqrt14(module, ir.FloatType()) + _define_rsqrt14(module, ir.DoubleType())
        # Nothing calls the twins until the vectoriser does: this keeps them alive.
        pointer = ir.IntType(8).as_pointer()
        used = ir.GlobalVariable(module, ir.ArrayType(pointer, len(twins)), "llvm.compiler.used")
        used.linkage = "appending"
        used.section = "llvm.metadata"
        used.initializer = ir.Constant(used.value_type, [t.bitcast(pointer) for t in twins])
    return module.globals[name]


def _define_rsqrt14(module, ftype):
    """Define ``numadam.rsqrt14.f<bits>`` and its twins; returns the twins."""
    bits = 32 if isinstance(ftype, ir.FloatType) else 64
    name = f"numadam.rsqrt14.f{bits}"
    packed = "ps" if bits == 32 else "pd"
    twins, variants = [], []
    for lanes in (128 // bits, 256 // bits, 512 // bits):
        vector = ir.VectorType(ftype, lanes)
        mask = ir.IntType(max(8, lanes))
        intrinsic_fn = module.declare_intrinsic(
            f"llvm.x86.avx512.rsqrt14.{packed}.{lanes * bits}",
            fnty=ir.FunctionType(vector, [vector, vector, mask]))
        twin = ir.Function(module, ir.FunctionType(vector, [vector]),
                           f"numadam.rsqrt14.v{lanes}f{bits}")
        twin.linkage = "internal"
        twin.attributes.add("nounwind")
        twin.attributes.add("readnone")
        builder = ir.IRBuilder(twin.append_basic_block())
        builder.ret(builder.call(intrinsic_fn, [twin.args[0], twin.args[0],
                                                ir.Constant(mask, -1)]))
        twins.append(twin)
        variants.append(f"_ZGV_LLVM_N{lanes}v_{name}({twin.name})")

    scalar = ir.Function(module, ir.FunctionType(ftype, [ftype]), name)
    scalar.linkage = "internal"
    # Not inlined, so that the vectoriser still sees the call; llvmlite knows
    # neither string attributes nor willreturn (without which a call counts as
    # a side effect and blocks vectorisation), hence set.add.
    for attribute in ("nounwind", "readnone", "noinline"):
        scalar.attributes.add(attribute)
    set.add(scalar.attributes, "willreturn")
    set.add(scalar.attributes, f'"vector-function-abi-variant"="{",".join(variants)}"')
    width, suffix = (4, "ss") if bits == 32 else (2, "sd")
    vector = ir.VectorType(ftype, width)
    zero = ir.Constant(ir.IntType(32), 0)
    builder = ir.IRBuilder(scalar.append_basic_block())
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar.args[0], zero)
    intrinsic_fn = module.declare_intrinsic(
        f"llvm.x86.avx512.rsqrt14.{suffix}",
        fnty=ir.FunctionType(vector, [vector, vector, vector, ir.IntType(8)]))
    result = builder.call(intrinsic_fn, [one, one, one, ir.Constant(ir.IntType(8), -1)])
    builder.ret(builder.extract_element(result, zero))
    return twins


@intrinsic
def _rsqrt14(typingctx, x):
    """AVX512's ``vrsqrt14ss``/``vrsqrt14sd``: 1/sqrt(x) to 14 bits, as the
    hardware gives it (the value MKL's square root starts from); a loop
    around it vectorises to ``vrsqrt14ps``/``vrsqrt14pd``."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.call(_rsqrt14_functions(builder.module, args[0].type), args)

    return x(x), codegen


# Small inputs are scaled by an even power of two (exactly) and the root
# scaled back, so that the residual x - root**2 does not underflow: measured,
# that gives MKL's bits down to the smallest subnormal. NumPy scalars, so that
# Numba types the float32 path's constants as float32.
_SMALL32, _UP32, _DOWN32, _HALF32 = (np.float32(v) for v in (2.0 ** -64, 2.0 ** 126,
                                                              2.0 ** -63, 0.5))


def _mkl_sqrt32(x):
    # x * rsqrt14(x) with one Newton correction, all in float32. Selects, not
    # branches: what the discarded lanes compute (0 * inf, NaN) is harmless.
    small = x < _SMALL32
    v = x * _UP32 if small else x
    y = _rsqrt14(v)
    root = v * y
    root = fma(fma(-root, root, v), y * _HALF32, root)
    root = root * _DOWN32 if small else root
    # +-0, inf, NaN and negatives take IEEE's answers, as MKL gives them.
    return root if x > 0 and x != math.inf else math.sqrt(x)


def _mkl_sqrt64(x):
    # One Goldschmidt iteration on (x * y, y / 2), then the Newton correction.
    small = x < 2.0 ** -512
    v = x * 2.0 ** 1022 if small else x
    y = _rsqrt14(v)
    root = v * y
    half = 0.5 * y
    t = fma(-root, half, 0.5)
    root = fma(root, t, root)
    half = fma(half, t, half)
    root = fma(fma(-root, root, v), half, root)
    root = root * 2.0 ** -511 if small else root
    return root if x > 0 and x != math.inf else math.sqrt(x)


def _correct_sqrt(x):
    return math.sqrt(x)


def torch_sqrt(x):
    """``torch.sqrt`` of one element, as torch computes it on the target.

    On an x86-64 CPU with AVX512, MKL's ``vsSqrt``/``vdSqrt`` (``VML_HA``),
    emulated bit for bit; elsewhere the correctly rounded root: CUDA's
    ``sqrt`` is, and MKL's code paths for other CPUs are not reproduced.
    A loop around it vectorises (see :func:`_rsqrt14_functions`).
    """
    return math.sqrt(x)


@overload(torch_sqrt, target="generic")
def _torch_sqrt_generic(x):
    return _correct_sqrt


@overload(torch_sqrt, target="cpu")
def _torch_sqrt_cpu(x):
    if _AVX512 and x == types.float32:
        return _mkl_sqrt32
    if _AVX512 and x == types.float64:
        return _mkl_sqrt64
    return _correct_sqrt


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
        avg = torch_sqrt(fma(-grad_avg, grad_avg, square_avg)) + eps
    else:
        avg = torch_sqrt(square_avg) + eps
    if has_momentum:
        buf = mul_rn(buf, momentum) + g / avg
        p = fma(buf, neg_lr, p)
    else:
        p = p + mul_rn(neg_lr, g) / avg
    if has_momentum:
        return p, square_avg, buf, grad_avg
    return p, square_avg, grad_avg, c


RULE = UpdateRule(
    name="rmsprop",
    module=__name__,
    hyper=(Hyper("lr", 1e-2), Hyper("alpha", 0.99), Hyper("eps", 1e-8),
           Hyper("weight_decay", 0.0), Hyper("momentum", 0.0),
           Hyper("centered", False, "flag"), Hyper("maximize", False, "flag")),
    state=(StateArray("square_avg", signed=False), StateArray("momentum_buffer", when="momentum"),
           StateArray("grad_avg", when="centered")),
    load_defaults=("momentum", "centered", "maximize"),
    scalars_into=scalars_into, loop_scalars=loop_scalars, element=element,
    nscalars=NSCALARS)


class RMSprop(Optimizer):
    r"""RMSprop, ``torch.optim.RMSprop(foreach=False)`` bit for bit.

    torch has no fused RMSprop; numadam matches its single-tensor path (whose
    bits its foreach path shares on the CPU), including torch's square root
    (see :mod:`numadam.rules.rmsprop`).

    Parameters
    ----------
    params : sequence of arrays, or sequence of dict
        As for :class:`numadam.Adam`: arrays updated in place, or parameter
        groups with per-group overrides of the hyperparameters below.
    lr : float, default 1e-2
        Learning rate (>= 0).
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average (>= 0).
    eps : float, default 1e-8
        Added to the denominator (>= 0).
    weight_decay : float, default 0
        L2 penalty added to the gradient (>= 0).
    momentum : float, default 0
        Momentum factor (>= 0).
    centered : bool, default False
        Normalise by the estimated variance (keeps ``grad_avg``).
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
    :mod:`numadam.rules.rmsprop`. State: ``step``, ``square_avg``,
    ``momentum_buffer`` (with momentum) and ``grad_avg`` (centered), created
    at the first step.

    Examples
    --------
    >>> import numpy as np, numadam
    >>> x = np.array([3.0, -2.0])
    >>> opt = numadam.RMSprop([x], lr=0.01)
    >>> for _ in range(1000):
    ...     opt.step([2 * x])                # gradient of sum(x**2)
    >>> bool(np.all(np.abs(x) < 1e-2))
    True
    """

    rule = RULE

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, *, maximize=False, check_finite=None,
                 max_grad_norm=None, clip_value=None, state_format="full",
                 stochastic_rounding=False, seed=0, foreach=None, fused=None,
                 capturable=False, differentiable=False):
        _validation.torch_only_flags(foreach, fused, capturable, differentiable)
        self._init(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                momentum=momentum, centered=centered, maximize=maximize),
                   check_finite, max_grad_norm, clip_value, state_format,
                   stochastic_rounding, seed)
