"""Compile the CUDA step kernel to PTX for sm_90 and check its arithmetic.

No GPU is needed, only libNVVM and NVRTC (pip: nvidia-nvvm,
nvidia-cuda-nvrtc); without them this exits with 77 (skip). The checks:
every floating-point multiply is ``mul.rn`` (which neither NVVM nor ptxas
may fuse), there is no plain ``mul.f32/f64`` for ptxas to contract with an
add, and the FMAs are exactly the explicit ones of ``adam_element`` (lerp
and second moment, plus the L2 decay), for both dtypes.
Used by tests/test_cuda_sim.py and scripts/gpu_check.py.
"""

import re
import sys
from collections import Counter
from types import SimpleNamespace

SKIP = 77


def ptx_counts(dtype_name):
    from numba import types
    from numba.cuda import compile_ptx

    from numadam import _cuda_kernels

    dtype = getattr(types, dtype_name)
    sig = (types.int64[:, ::1], dtype[:, ::1], dtype[:, ::1],
           types.boolean, types.boolean, types.boolean)
    ptx, _ = compile_ptx(_cuda_kernels._step_kernel.py_func, sig, cc=(9, 0))
    ops = [line.split()[0] for line in ptx.splitlines()
           if re.match(r"\s*(fma|mul|add|sub|div|sqrt)\S*\.f(32|64)\b", line)]
    return Counter(ops)


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
            counts = ptx_counts(name)
        except Exception as error:
            if "nvrtc" in str(error).lower():
                print(f"NVRTC not available: {str(error).splitlines()[0]}")
                return SKIP
            raise
        print(name, dict(sorted(counts.items())))
        if counts[f"mul.f{width}"]:
            failures.append(f"{name}: {counts[f'mul.f{width}']} plain mul.f{width} (contractible)")
        if counts[f"mul.rn.f{width}"] == 0:
            failures.append(f"{name}: no mul.rn.f{width}; mul_rn is not lowered as intended")
        if counts[f"fma.rn.f{width}"] != 6:
            failures.append(f"{name}: {counts[f'fma.rn.f{width}']} fma.rn, expected 6 "
                            "(lerp, second moment, L2 decay; AMSGrad and plain copies)")
        for op in ("div", "sqrt"):
            approx = [k for k in counts if k.startswith(op) and ".rn." not in k]
            if approx:
                failures.append(f"{name}: non-IEEE {approx}")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
