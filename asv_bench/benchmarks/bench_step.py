"""Step time: one flat array over sizes, many mixed arrays, and peak memory."""

import resource

from .common import MAX_SIZE, SIZES, mixed_sizes, optimizer


class TimeFlat:
    """One step on one flat array."""

    params = (SIZES, ["float32", "float64"], [False, True], ["Adam", "AdamW"])
    param_names = ["size", "dtype", "amsgrad", "cls"]
    timeout = 300

    def setup(self, size, dtype, amsgrad, cls):
        self.opt, _, self.grads = optimizer([size], dtype, amsgrad, cls)

    def time_step(self, size, dtype, amsgrad, cls):
        self.opt.step(self.grads)


class TimeOwnedGrads:
    """``step()`` on the optimizer's own gradient buffers (no per-step checks)."""

    params = [10, 100_000]
    param_names = ["size"]

    def setup(self, size):
        self.opt, _, grads = optimizer([size])
        for own, g in zip(self.opt.grads, grads):
            own[...] = g
        self.opt.step()

    def time_step(self, size):
        self.opt.step()


class TimeMixed:
    """200 arrays of 1e2..1e5 elements (2.9 million) in one group, and the same
    total in one flat array: the gap is the cost of many arrays."""

    params = (["mixed", "flat"], ["float32", "float64"])
    param_names = ["layout", "dtype"]

    def setup(self, layout, dtype):
        sizes = mixed_sizes()
        self.opt, _, self.grads = optimizer(
            sizes if layout == "mixed" else [sum(sizes)], dtype)

    def time_step(self, layout, dtype):
        self.opt.step(self.grads)


class MemStep:
    """A step allocates nothing proportional to the parameters."""

    params = [min(10_000_000, MAX_SIZE)]
    param_names = ["size"]

    def setup(self, size):
        self.opt, _, self.grads = optimizer([size], "float32")

    def peakmem_five_steps(self, size):
        for _ in range(5):
            self.opt.step(self.grads)

    def track_peak_growth_during_steps(self, size):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(5):
            self.opt.step(self.grads)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024

    track_peak_growth_during_steps.unit = "bytes"
