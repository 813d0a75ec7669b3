"""Compile every rule's CUDA step kernel to PTX for sm_90 and check it.

No GPU is needed, only libNVVM and NVRTC (pip: nvidia-nvvm,
nvidia-cuda-nvrtc); without them this exits with 77 (skip). The checks, for
every rule of the registry and both dtypes:

* arithmetic: every floating-point multiply is ``mul.rn`` (which neither
  NVVM nor ptxas may fuse) and there is no plain ``mul.f32/f64``, so no
  multiply-add can be contracted: the only FMAs are the element's explicit
  ``fma`` calls, and they are there (``fma.rn``). How many copies of the
  element NVVM makes (it unrolls the element path's loop and specialises
  branches) varies, so the FMAs are not counted per copy; divisions and
  square roots are IEEE (``.rn``),
  and a rule whose element takes a square root has ``sqrt.rn`` (RMSprop's
  ``torch_sqrt`` is CUDA's correctly rounded root there, not the CPU's MKL
  emulation).
* memory: the parameter, gradient and every state row the rule can have go
  through 16-byte vector accesses (``ld/st.global.v4.f32``, ``v2.f64``) and
  no float access is generic (every one says ``.global``).
* launch ABI: the ``.param`` list of the kernel's entry is, type for type,
  the flattened argument list that ``numadam.cuda.launch`` builds for the
  driver launch.
* compressed state (:mod:`numadam.cuda.compressed`, float32): the same
  arithmetic checks (the decode ``code value * absmax`` and the encode
  ``x * (1 / absmax)`` are ``mul.rn`` too, so no FMA can absorb them); the
  bfloat16 kernel moves its state rows as 16-bit global accesses; the 8-bit
  kernel moves codes as bytes and reduces the block's absmax through
  shared memory between barriers.

Used by tests/test_cuda_sim.py and scripts/gpu_check.py.
"""

import os
import re
import sys
from collections import Counter
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SKIP = 77


def compile_step(rule, dtype_name):
    """``(ptx, Counter of instructions)`` of ``rule``'s step kernel for ``dtype_name``."""
    from numba.cuda import compile_ptx

    from internals import cuda_kernels as _cuda_kernels

    sig = tuple(_cuda_kernels.step_signature(rule, dtype_name))
    ptx, _ = compile_ptx(_cuda_kernels.kernels(rule).step.py_func, sig, cc=(9, 0))
    ops = [line.split()[0] for line in ptx.splitlines()
           if re.match(r"\s*(fma|mul|add|sub|div|sqrt|ld|st)\.\S*", line)]
    return ptx, Counter(ops)


PTX_PARAM = {"u8": 1, "b8": 1, "s8": 1, "u32": 4, "s32": 4, "f32": 4, "b32": 4,
             "u64": 8, "s64": 8, "f64": 8, "b64": 8}


def param_sizes(ptx):
    """Byte sizes of the kernel entry's parameters, in order."""
    entry = ptx[ptx.index(".entry"):]
    entry = entry[entry.index("("):entry.index(")")]
    return [PTX_PARAM[m] for m in re.findall(r"\.param\s+\.(\w+)", entry)]


def source_calls(function, name):
    """How many calls of ``name`` the source of ``function`` makes."""
    import inspect
    return len(re.findall(rf"\b{name}\(", inspect.getsource(function)))


def check(rule, name, width, ptx, counts):
    import ctypes

    from internals import cuda_kernels as _cuda_kernels
    from internals import ctypes_fields

    failures = []
    f = f"f{width}"
    element = rule.element.py_func
    if counts[f"mul.{f}"]:
        failures.append(f"{counts[f'mul.{f}']} plain mul.{f} (contractible)")
    if source_calls(element, "mul_rn") and counts[f"mul.rn.{f}"] == 0:
        failures.append(f"no mul.rn.{f}; mul_rn is not lowered as intended")
    if source_calls(element, "fma") and counts[f"fma.rn.{f}"] == 0:
        failures.append(f"no fma.rn.{f}, though the element calls fma")
    roots = source_calls(element, "sqrt") + source_calls(element, "torch_sqrt")
    if roots and not counts[f"sqrt.rn.{f}"]:
        failures.append(f"no sqrt.rn.{f}, though the element takes a square root")
    for op in ("div", "sqrt"):
        approx = [k for k in counts if k.startswith(op + ".") and ".rn." not in k]
        if approx:
            failures.append(f"non-IEEE {approx}")
    vector = "v4.f32" if width == 32 else "v2.f64"
    per_access = 1 if width == 32 else 2
    rows = len(rule.state)
    if counts[f"ld.global.{vector}"] < (2 + rows) * per_access:    # p, g, each state row
        failures.append(f"{counts[f'ld.global.{vector}']} ld.global.{vector}, expected at "
                        f"least {(2 + rows) * per_access}")
    if counts[f"st.global.{vector}"] < (1 + rows) * per_access:    # p, each state row
        failures.append(f"{counts[f'st.global.{vector}']} st.global.{vector}, expected at "
                        f"least {(1 + rows) * per_access}")
    generic = {k: n for k, n in counts.items()
               if k.split(".")[0] in ("ld", "st") and k.endswith(f)
               and ".global." not in k and ".param." not in k}
    if generic:
        failures.append(f"generic (not .global) float accesses: {generic}")
    expected = [ctypes.sizeof(kind) for ty in _cuda_kernels.step_signature(rule, name)
                for kind in ctypes_fields(ty)]
    actual = param_sizes(ptx)
    if actual != expected:
        failures.append(f"kernel parameters {actual} (bytes) but the driver launch passes "
                        f"{expected}")
    return [f"{rule.name} {name}: {failure}" for failure in failures]


def compile_compressed(rule, name):
    """``(ptx, Counter of instructions)`` of ``rule``'s compressed-state kernel
    ``name`` (``"step16"`` or ``"step8"``)."""
    from numba.cuda import compile_ptx

    from numadam.cuda import compressed

    signature = compressed.signature16(rule) if name == "step16" else \
        compressed.signature8(rule)
    ptx, _ = compile_ptx(getattr(compressed.kernels(rule), name).py_func, tuple(signature),
                         cc=(9, 0))
    ops = [line.split()[0] for line in ptx.splitlines()
           if re.match(r"\s*(fma|mul|add|sub|div|sqrt|ld|st|bar|max)\.\S*", line)]
    return ptx, Counter(ops)


def check_compressed(rule, name, counts):
    failures = []
    element = rule.element.py_func
    if counts["mul.f32"]:
        failures.append(f"{counts['mul.f32']} plain mul.f32 (contractible)")
    if (name == "step8" or source_calls(element, "mul_rn")) and not counts["mul.rn.f32"]:
        failures.append("no mul.rn.f32")
    if source_calls(element, "fma") and not counts["fma.rn.f32"]:
        failures.append("no fma.rn.f32, though the element calls fma")
    for op in ("div", "sqrt"):
        approx = [k for k in counts if k.startswith(op + ".") and ".rn." not in k]
        if approx:
            failures.append(f"non-IEEE {approx}")
    generic = {k: n for k, n in counts.items() if k.split(".")[0] in ("ld", "st")
               and k.split(".")[1] not in ("global", "param", "shared", "const")}
    if generic:
        failures.append(f"generic accesses: {generic}")
    rows = len(rule.state)
    if name == "step16" and (counts["ld.global.u16"] < rows or counts["st.global.u16"] < rows):
        failures.append(f"state rows not moved as 16-bit accesses: {dict(counts)}")
    if name == "step8" and not (counts["bar.sync"] and counts["st.shared.f32"]
                                and counts["ld.global.u8"] >= rows
                                and counts["st.global.u8"] >= 1):
        failures.append(f"no shared-memory absmax or byte codes: {dict(counts)}")
    return [f"{rule.name} {name}: {failure}" for failure in failures]


def main():
    try:
        import numba.cuda.dispatcher as dispatcher
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as error:     # no libNVVM: nothing to compile with
        print(f"libNVVM not available: {type(error).__name__}: {error}".splitlines()[0])
        return SKIP
    # Device functions ask the current device for its compute capability;
    # without a GPU, say sm_90 (what the H200 is).
    try:
        import numba.cuda
        numba.cuda.get_current_device()
    except Exception:
        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    from internals import REGISTRY, rule as rule_named
    failures = []
    for rule in map(rule_named, REGISTRY):
        for name, width in (("float32", 32), ("float64", 64)):
            try:
                ptx, counts = compile_step(rule, name)
            except Exception as error:
                if "nvrtc" in str(error).lower():
                    print(f"NVRTC not available: {str(error).splitlines()[0]}")
                    return SKIP
                raise
            print(rule.name, name, dict(sorted(counts.items())))
            failures += check(rule, name, width, ptx, counts)
        for name in ("step16", "step8"):
            _, counts = compile_compressed(rule, name)
            print(rule.name, name, dict(sorted(counts.items())))
            failures += check_compressed(rule, name, counts)
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
