"""Gradient clipping: Adam's step with ``max_grad_norm`` (and ``clip_value``)
fused, against the plain step and a NumPy clip pass before it."""

import math

import numpy as np

import numadam

from .common import MAX_SIZE, arrays, stream_fraction

CLIP_SIZES = [n for n in (100_000, 10_000_000, 100_000_000) if n <= MAX_SIZE]
MODES = ["plain", "max_grad_norm", "max_grad_norm+clip_value", "numpy pass"]
_SETTINGS = {"plain": {}, "numpy pass": {}, "max_grad_norm": dict(max_grad_norm=1.0),
             "max_grad_norm+clip_value": dict(max_grad_norm=1.0, clip_value=1e-2)}


def _step(size, mode):
    """A warmed-up step function of ``mode`` over fresh float32 arrays."""
    params = arrays([size], "float32", 1)
    grads = arrays([size], "float32", 2)
    opt = numadam.Adam(params, lr=1e-3, **_SETTINGS[mode])
    if mode == "numpy pass":
        # The float64 norm of each gradient (fsum-free), then one multiply.
        scaled = [np.empty_like(g) for g in grads]

        def step():
            norm = math.sqrt(sum(float(np.dot(w, w)) for w in
                                 (g.astype(np.float64) for g in grads)))
            coef = np.float32(min(1.0, 1.0 / (norm + 1e-6)))
            for g, s in zip(grads, scaled):
                np.multiply(g, coef, out=s)
            opt.step(scaled)
    else:
        def step():
            opt.step(grads)
    step()
    step()
    return step


class TimeClippedStep:
    """One float32 Adam step in each mode."""

    params = (CLIP_SIZES, MODES)
    param_names = ["size", "mode"]
    timeout = 300

    def setup(self, size, mode):
        self.step = _step(size, mode)

    def time_step(self, size, mode):
        self.step()


class TrackClipCost:
    """The clipped step's time over the plain step's, interleaved (1.0: free)."""

    params = (CLIP_SIZES, MODES[1:])
    param_names = ["size", "mode"]
    timeout = 300

    def setup(self, size, mode):
        self.plain = _step(size, "plain")
        self.clipped = _step(size, mode)

    def track_vs_plain(self, size, mode):
        return stream_fraction(self.plain, self.clipped, rounds=7)

    track_vs_plain.unit = "x plain step"
