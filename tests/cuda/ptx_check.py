"""Compile the CUDA step kernel to PTX for sm_90 and check it.

No GPU is needed, only libNVVM and NVRTC (pip: nvidia-nvvm,
nvidia-cuda-nvrtc); without them this exits with 77 (skip). The checks, for
both dtypes:

* arithmetic: every floating-point multiply is ``mul.rn`` (which neither
  NVVM nor ptxas may fuse) and there is no plain ``mul.f32/f64``, so no
  multiply-add can be contracted: the only FMAs are ``adam_element``'s
  explicit ones (at most three per copy of the element math, one copy per
  ``sqrt``); divisions and square roots are IEEE (``.rn``).
* memory: the parameter, gradient and state go through 16-byte vector
  accesses (``ld/st.global.v4.f32``, ``v2.f64``) and no float access is
  generic (every one says ``.global``).
* launch ABI: the ``.param`` list of the kernel's entry is, type for type,
  the flattened argument list that ``numadam.cuda.launch`` builds for the
  driver launch.

Used by tests/test_cuda_sim.py and scripts/gpu_check.py.
"""

import re
import sys
from collections import Counter
from types import SimpleNamespace

SKIP = 77


def compile_step(dtype_name):
    """``(ptx, Counter of instructions)`` of the step kernel for ``dtype_name``."""
    from numba.cuda import compile_ptx

    from numadam.cuda import kernels as _cuda_kernels

    sig = _cuda_kernels.step_signature(dtype_name)
    ptx, _ = compile_ptx(_cuda_kernels.step_kernel.py_func, sig, cc=(9, 0))
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


def check(name, width, ptx, counts):
    import ctypes

    from numadam.cuda import kernels as _cuda_kernels
    from numadam.cuda.launch import ctypes_fields

    failures = []
    f = f"f{width}"
    if counts[f"mul.{f}"]:
        failures.append(f"{counts[f'mul.{f}']} plain mul.{f} (contractible)")
    if counts[f"mul.rn.{f}"] == 0:
        failures.append(f"no mul.rn.{f}; mul_rn is not lowered as intended")
    copies = counts[f"sqrt.rn.{f}"]
    if not 0 < counts[f"fma.rn.{f}"] <= 3 * copies:
        failures.append(f"{counts[f'fma.rn.{f}']} fma.rn for {copies} copies of the element "
                        "math; adam_element has at most 3 (lerp, second moment, L2 decay)")
    for op in ("div", "sqrt"):
        approx = [k for k in counts if k.startswith(op + ".") and ".rn." not in k]
        if approx:
            failures.append(f"non-IEEE {approx}")
    vector = "v4.f32" if width == 32 else "v2.f64"
    per_access = 1 if width == 32 else 2
    if counts[f"ld.global.{vector}"] < 5 * per_access:     # p, g, m, v, max_v
        failures.append(f"{counts[f'ld.global.{vector}']} ld.global.{vector}, expected at "
                        f"least {5 * per_access}")
    if counts[f"st.global.{vector}"] < 4 * per_access:     # p, m, v, max_v
        failures.append(f"{counts[f'st.global.{vector}']} st.global.{vector}, expected at "
                        f"least {4 * per_access}")
    generic = {k: n for k, n in counts.items()
               if k.split(".")[0] in ("ld", "st") and k.endswith(f)
               and ".global." not in k and ".param." not in k}
    if generic:
        failures.append(f"generic (not .global) float accesses: {generic}")
    expected = [ctypes.sizeof(kind) for ty in _cuda_kernels.step_signature(name)
                for kind in ctypes_fields(ty)]
    actual = param_sizes(ptx)
    if actual != expected:
        failures.append(f"kernel parameters {actual} (bytes) but the driver launch passes "
                        f"{expected}")
    return [f"{name}: {failure}" for failure in failures]


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
    failures = []
    for name, width in (("float32", 32), ("float64", 64)):
        try:
            ptx, counts = compile_step(name)
        except Exception as error:
            if "nvrtc" in str(error).lower():
                print(f"NVRTC not available: {str(error).splitlines()[0]}")
                return SKIP
            raise
        print(name, dict(sorted(counts.items())))
        failures += check(name, width, ptx, counts)
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
