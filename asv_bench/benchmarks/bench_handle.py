"""A step inside a compiled loop: ``opt.jit()``'s ``h.step()`` against
``numadam.functional.adam_update`` on arrays the caller owns.

Both loops run ``STEPS`` Adam steps of one float array in one ``@njit``
call (the gradient is left as it is: only the update is timed), so a
sample divided by ``STEPS`` is the cost of one step in a user's compiled
loop. ``TrackHandleOverFunctional`` is the ratio of the two from samples
interleaved in one process (1.0: the handle costs what the function does).

Run as a script for the figures of BENCHMARKS.md::

    python asv_bench/benchmarks/bench_handle.py
"""

import os
import statistics
import subprocess
import sys
import time

import numpy as np
from numba import njit

import numadam
from numadam.functional import adam_update

MAX_SIZE = int(float(os.environ.get("NUMADAM_BENCH_MAX", "1e7")))
SIZES = [n for n in (10, 1_000_000) if n <= MAX_SIZE]
DTYPES = ["float32", "float64"]
LOOPS = ["handle", "adam_update"]


def steps_for(size):
    """Steps per sample: about a millisecond of work or more."""
    return max(10, 100_000 // size)


@njit
def handle_loop(h, steps):
    for _ in range(steps):
        h.step()


@njit
def function_loop(param, grad, m, v, t0, steps):
    for t in range(t0, t0 + steps):
        adam_update(param, grad, m, v, param[:0], t, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                    False, False, False)


def setup_loop(loop, size, dtype):
    """A function running ``steps_for(size)`` steps of ``loop``, warmed up."""
    rng = np.random.default_rng(0)
    param = (rng.standard_normal(size) * 1e-2).astype(dtype)
    grad = (rng.standard_normal(size) * 1e-2).astype(dtype)
    steps = steps_for(size)
    if loop == "handle":
        opt = numadam.Adam([param], lr=1e-3)
        opt.grads[0][...] = grad
        h = opt.jit()

        def run():
            handle_loop(h, steps)
    else:
        m, v = np.zeros_like(param), np.zeros_like(param)
        count = [1]

        def run():
            function_loop(param, grad, m, v, count[0], steps)
            count[0] += steps
    run()
    run()
    return run


class TimeCompiledStep:
    """``steps_for(size)`` steps in one compiled call."""

    params = (SIZES, DTYPES, LOOPS)
    param_names = ["size", "dtype", "loop"]
    timeout = 300

    def setup(self, size, dtype, loop):
        self.run = setup_loop(loop, size, dtype)

    def time_steps(self, size, dtype, loop):
        self.run()


def interleaved(size, dtype, rounds=15, summary=statistics.median):
    """Seconds per step of each loop (``summary`` of its samples, the
    median unless told), sampled in turn."""
    runs = {loop: setup_loop(loop, size, dtype) for loop in LOOPS}
    samples = {loop: [] for loop in LOOPS}
    steps = steps_for(size)
    for _ in range(rounds):
        for loop, run in runs.items():
            start = time.perf_counter()
            run()
            samples[loop].append((time.perf_counter() - start) / steps)
    return {loop: summary(s) for loop, s in samples.items()}


class TrackHandleOverFunctional:
    """The handle's step time over ``adam_update``'s, interleaved samples."""

    params = (SIZES, DTYPES)
    param_names = ["size", "dtype"]
    unit = "ratio"
    timeout = 300

    def track_ratio(self, size, dtype):
        medians = interleaved(size, dtype)
        return medians["handle"] / medians["adam_update"]


_FIRST_CALL = """
import time, numpy as np, numadam
from numba import njit
opt = numadam.{cls}([np.zeros(16, np.{dtype}), np.zeros(3)], lr=1e-3)
h = opt.jit()
@njit
def loop(h, n):
    for _ in range(n):
        h.step()
start = time.perf_counter()
loop(h, 1)
print(time.perf_counter() - start)
"""


def first_call_seconds(cls="Adam", dtype="float32"):
    """Seconds of the first call of a fresh ``@njit`` loop over a handle (its
    compilation; the rule's kernels come from Numba's disk cache), in a
    fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(cls=cls, dtype=dtype)],
                          capture_output=True, text=True, check=True, timeout=600)
    return float(done.stdout.split()[-1])


class TrackFirstCall:
    """Compile time of the first call of a loop stepping a handle."""

    params = [["Adam", "SGD", "RMSprop"]]
    param_names = ["cls"]
    unit = "seconds"
    timeout = 600

    def track_first_call(self, cls):
        return first_call_seconds(cls)


def main():
    print(f"numadam {numadam.__version__}, numba {__import__('numba').__version__}; "
          "seconds per step inside one @njit loop, 31 interleaved rounds: median "
          "(minimum)")
    for size in SIZES:
        for dtype in DTYPES:
            med = interleaved(size, dtype, rounds=31)
            low = interleaved(size, dtype, rounds=31, summary=min)
            print(f"{size:>9} {dtype}: h.step() {med['handle'] * 1e6:9.3f} "
                  f"({low['handle'] * 1e6:9.3f}) us   adam_update "
                  f"{med['adam_update'] * 1e6:9.3f} ({low['adam_update'] * 1e6:9.3f}) us   "
                  f"ratio {med['handle'] / med['adam_update']:.2f} "
                  f"({low['handle'] / low['adam_update']:.2f})")
    for cls in ("Adam", "SGD", "RMSprop"):
        print(f"first call of a loop over a {cls} handle (a float32 and a float64 "
              f"bucket): {first_call_seconds(cls):.2f} s")


if __name__ == "__main__":
    main()
