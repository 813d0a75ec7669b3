"""The host side of a small GPU step, measured without a GPU.

Runs under Numba's CUDA simulator with the driver launch replaced by a stub
that does everything the real one does except the calls into libcuda
(``cuCtxGetCurrent``, ``cuLaunchKernel`` and, when a gradient address
changed, ``cuMemcpyHtoDAsync`` of the address table): validation, scalars,
stream lookup, the argument buffer. A real step costs this plus those driver
calls. Simulator arrays stand in for device arrays, so the gradient check
measured is the simulator's, not a CuPy or torch interface's. The driver
launch is opt-in (``numadam.cuda.config.launcher = "driver"``); this script
opts in, and counts the stubbed launches and uploads so that a run which
missed that path shows it.

    python scripts/cuda_host_overhead.py [--reps N]
"""

import argparse
import os
import sys
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

import numadam  # noqa: E402
import numadam.cuda  # noqa: E402
from numadam.cuda import bucket as _cuda_bucket, kernels as _cuda_kernels, launch as _cuda_launch  # noqa: E402,E501


class _StubKernel:
    def __init__(self, rule, dtype):
        self.signature = _cuda_kernels.step_signature(rule, dtype)

    def handles(self, device):
        return 0, 0


COUNTS = {"launches": 0, "uploads": 0}


class _StubLaunchArgs(_cuda_launch.LaunchArgs):
    """LaunchArgs with the driver calls left out."""

    def set_array(self, name, array):
        pass    # a simulator array has no device pointer; done once, not per step

    def launch(self, blocks, threads, stream_handle):
        COUNTS["launches"] += 1

    def upload(self, address, host_array, stream_handle):
        host_array.ctypes.data, host_array.nbytes    # what the real one reads
        COUNTS["uploads"] += 1


def install_stub():
    numadam.cuda.config.launcher = "driver"
    _cuda_kernels.SIMULATED = False            # take the driver path ...
    _cuda_bucket._DEFAULT_HANDLE[:] = [0]
    _cuda_bucket._driver_kernel = _StubKernel  # ... with a kernel that needs no GPU
    _cuda_launch.LaunchArgs = _StubLaunchArgs
    _cuda_launch._driver = lambda: None


def per_call_us(call, reps, rounds=5):
    call()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return float(np.median(times)), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20000)
    options = parser.parse_args(argv)
    install_stub()
    x = cuda.to_device(np.ones(10, np.float32))
    g = cuda.to_device(np.full(10, 0.5, np.float32))
    with_grads = numadam.Adam([x])
    owned = numadam.Adam([cuda.to_device(np.ones(10, np.float32))])
    owned.grads[0].copy_to_device(np.full(10, 0.5, np.float32))
    other = [numadam.Adam([cuda.to_device(np.ones(10, np.float32))]),
             [cuda.to_device(np.full(10, 0.5, np.float32)) for _ in range(2)], 0]

    def alternating():     # another object (and address) every step: checked, uploaded
        other[2] ^= 1
        other[0].step([other[1][other[2]]])

    rows = [("step([g]), the same g each step", lambda: with_grads.step([g])),
            ("step([g]), g alternates between two", alternating),
            ("step(), opt.grads", owned.step)]
    print("10-element float32 step, host side, driver launch stubbed (simulator)")
    print(f"{'call':36s} {'median us':>10s} {'best us':>8s}")
    results = {}
    for label, call in rows:
        median, best = per_call_us(call, options.reps)
        results[label] = median
        print(f"{label:36s} {median:10.2f} {best:8.2f}")
    print(f"stubbed driver calls: {COUNTS['launches']} launches, {COUNTS['uploads']} uploads")
    return results


if __name__ == "__main__":
    main()
