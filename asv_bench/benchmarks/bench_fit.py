"""A fit loop whose gradient runs on NumPy's threaded BLAS.

What numadam must cost in a user's loop is its own step and nothing more:
its threads must not slow the user's BLAS down between steps. ``TimeFitLoop``
times whole iterations (gradient + update) with numadam, with a hand-written
NumPy Adam, and the gradient alone; ``TrackFitLoop`` tracks the two ratios
the targets are stated in, from samples interleaved in one process.
"""

import time

import numpy as np

from numadam.bench import contenders as contenders

from .common import MAX_SIZE

SIZES = [n for n in (1_000, 10_000, 100_000, 1_000_000, 10_000_000) if n <= MAX_SIZE]
LOOPS = {"numadam": contenders.fit_numadam, "NumPy Adam": contenders.fit_numpy,
         "gradient only": contenders.fit_gradient_only}


class TimeFitLoop:
    """One iteration of the loop."""

    params = (SIZES, list(LOOPS))
    param_names = ["size", "loop"]
    timeout = 300

    def setup(self, size, loop):
        self.iteration = LOOPS[loop].setup([size], "float32", False)
        for _ in range(3):
            self.iteration()

    def time_iteration(self, size, loop):
        self.iteration()


class TrackFitLoop:
    """``vs_numpy_loop``: the numadam loop's time over the NumPy Adam loop's
    (at most 1.0). ``vs_parts``: the numadam loop's time over the gradient's
    plus numadam's step's, each timed alone (1.0: nothing but the step added).
    ``numpy_vs_parts``: the same for the NumPy Adam loop, the control: what
    the machine and the BLAS threads add to any loop."""

    params = [SIZES]
    param_names = ["size"]
    unit = "ratio"
    timeout = 300

    def setup(self, size):
        self.fns = {name: c.setup([size], "float32", False) for name, c in (
            ("loop", contenders.fit_numadam), ("numpy", contenders.fit_numpy),
            ("gradient", contenders.fit_gradient_only), ("step", contenders.numadam_step),
            ("numpy step", contenders.fit_numpy_step))}
        self.number = max(1, int(1e6 // size))
        self.medians = None

    def _measure(self):
        if self.medians is None:
            samples = {name: [] for name in self.fns}
            names = list(self.fns)
            for r in range(15):          # interleaved, rotating, so drift hits all alike
                for name in names[r % len(names):] + names[:r % len(names)]:
                    fn = self.fns[name]
                    start = time.perf_counter()
                    for _ in range(self.number):
                        fn()
                    samples[name].append((time.perf_counter() - start) / self.number)
            self.medians = {name: float(np.median(s)) for name, s in samples.items()}
        return self.medians

    def track_vs_numpy_loop(self, size):
        m = self._measure()
        return m["loop"] / m["numpy"]

    def track_vs_parts(self, size):
        m = self._measure()
        return m["loop"] / (m["gradient"] + m["step"])

    def track_numpy_vs_parts(self, size):
        m = self._measure()
        return m["numpy"] / (m["gradient"] + m["numpy step"])
