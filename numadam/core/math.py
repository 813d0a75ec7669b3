"""Arithmetic the update rules share: a fused multiply-add and a product
no compiler may fuse.

torch's compiled kernels contract some products into fused multiply-adds and
round others on their own; a rule states which is which with these two
intrinsics, and every backend (CPU and CUDA) compiles the same statement.
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["fma", "mul_rn", "float_bits", "bits_float"]


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


@intrinsic
def float_bits(typingctx, x):
    """The IEEE bits of a float32 as a uint32 (or of a float64 as a uint64):
    an LLVM ``bitcast``, free on both targets and vectorisable, where a view
    through an array would not be."""
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth
    out = types.uint32 if width == 32 else types.uint64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(width))

    return out(x), codegen


@intrinsic
def bits_float(typingctx, u):
    """The float32 whose IEEE bits are the uint32 ``u`` (float64 for a
    uint64): the inverse of :func:`float_bits`."""
    if not (isinstance(u, types.Integer) and u.bitwidth in (32, 64)):
        return None
    out = types.float32 if u.bitwidth == 32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(out))

    return out(u), codegen
