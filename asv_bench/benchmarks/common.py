"""Helpers shared by the benchmark modules (not benchmarks themselves)."""

import os
import time

import numpy as np

import numadam

# The default run's largest size stays reasonable on a 2-core machine; set
# NUMADAM_BENCH_MAX=1e8 in the environment to include the largest size.
MAX_SIZE = int(float(os.environ.get("NUMADAM_BENCH_MAX", "1e7")))
SIZES = [n for n in (10, 1_000, 100_000, 10_000_000, 100_000_000) if n <= MAX_SIZE]


def arrays(sizes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) * 1e-2 for n in sizes]


def optimizer(sizes, dtype="float32", amsgrad=False, cls="Adam"):
    """A warmed-up optimizer over fresh arrays and its gradients."""
    params = arrays(sizes, dtype, 1)
    grads = arrays(sizes, dtype, 2)
    opt = getattr(numadam, cls)(params, lr=1e-3, amsgrad=amsgrad)
    opt.step(grads)     # compiles (or loads from cache) and allocates the state
    opt.step(grads)
    return opt, params, grads


def mixed_sizes(count=200, low=100, high=100_000, seed=0):
    sizes = np.geomspace(low, high, count).round().astype(np.int64)
    np.random.default_rng(seed).shuffle(sizes)
    return [int(n) for n in sizes]


def stream_fraction(step, stream, rounds=15):
    """The streaming kernel's median time over ``step``'s: 1.0 is the
    machine's streaming bandwidth for the same traffic."""
    samples = {step: [], stream: []}
    for _ in range(rounds):             # interleaved, so drift hits both alike
        for fn in samples:
            start = time.perf_counter()
            fn()
            samples[fn].append(time.perf_counter() - start)
    return float(np.median(samples[stream]) / np.median(samples[step]))
