"""Tracked quantities: bandwidth against the machine's own, and accuracy."""

import math

import numpy as np

from numadam.bench import contenders as contenders

from .common import MAX_SIZE, arrays, stream_fraction


class TrackBandwidth:
    """numadam's step time over the time of an in-process streaming kernel that
    moves the same bytes (4 reads, 3 writes; 5 and 4 with AMSGrad). 1.0 is the
    machine's streaming bandwidth."""

    params = ([n for n in (100_000, 1_000_000, 10_000_000) if n <= MAX_SIZE] or [MAX_SIZE],
              [False, True])
    param_names = ["size", "amsgrad"]
    unit = "fraction of streaming bandwidth"
    timeout = 300

    def setup(self, size, amsgrad):
        self.step = contenders.numadam_step.setup([size], "float32", amsgrad)
        self.stream = contenders.stream.setup([size], "float32", amsgrad)
        for fn in (self.step, self.stream, self.step, self.stream):
            fn()

    def track_stream_fraction(self, size, amsgrad):
        return stream_fraction(self.step, self.stream)


def _reference(params, grads, steps, lr, betas, eps, wd, amsgrad, decoupled):
    """The textbook update in float64 (see tests/naive.py)."""
    b1, b2 = betas
    p = params.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grads[t % len(grads)].astype(np.float64)
        if wd and decoupled:
            p *= 1 - lr * wd
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) / math.sqrt(1 - b2 ** t) + eps
        p -= lr / (1 - b1 ** t) * m / denom
    return p


class TrackAccuracy:
    """Largest absolute difference from the float64 NumPy reference after 100
    steps (lr 1e-2) on 10,000 elements."""

    params = (["float32", "float64"], [False, True], ["Adam", "AdamW"])
    param_names = ["dtype", "amsgrad", "cls"]
    unit = "max abs difference"

    def track_max_difference(self, dtype, amsgrad, cls):
        import numadam
        x0 = arrays([10_000], dtype, 3)[0]
        grads = arrays([10_000] * 4, dtype, 4)
        x = x0.copy()
        kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                      amsgrad=amsgrad)
        opt = getattr(numadam, cls)([x], **kwargs)
        for t in range(1, 101):
            opt.step([grads[t % len(grads)]])
        ref = _reference(x0, grads, 100, kwargs["lr"], kwargs["betas"], kwargs["eps"],
                         kwargs["weight_decay"], amsgrad, cls == "AdamW")
        return float(np.max(np.abs(x - ref)))
