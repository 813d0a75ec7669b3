"""The compressed-state CPU kernels across parameters and threads: a bucket of
several parameters gives each one the bits it gets alone, whatever the
thread count and the cut into tasks."""

import numpy as np
import pytest

import numadam

# Sizes off the 256-element block, so each parameter's 8-bit state is padded
# and the next one starts after its padding; 5000 is a short one between.
SIZES = (4097, 70001, 5000, 23457)
RULES = [(numadam.Adam, dict(lr=1e-2, amsgrad=True)),
         (numadam.SGD, dict(lr=1e-2, momentum=0.9)),
         (numadam.RMSprop, dict(lr=1e-3, centered=True, momentum=0.5))]


def _run(cls, kw, fmt, groups, threads, serial_below):
    """Final parameter and state bytes of ``groups`` (lists of parameter
    indices, one optimizer each) after three steps."""
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = [[(rng.standard_normal(n) * 3).astype(np.float32) for n in SIZES]
             for _ in range(3)]
    saved = (numadam.config.threads, numadam.config.serial_below, numadam.config.min_task)
    out = {}
    try:
        numadam.config.threads, numadam.config.serial_below = threads, serial_below
        numadam.config.min_task = 1000
        for group in groups:
            params = [start[k].copy() for k in group]
            opt = cls(params, state_format=fmt, **kw)
            for g in grads:
                opt.step([g[k] for k in group])
            state = opt.state_dict()["state"]
            for j, k in enumerate(group):
                arrays = [np.atleast_1d(np.asarray(v)).view(np.uint8)
                          for _, v in sorted(state[j].items())]
                out[k] = [params[j].view(np.uint8)] + arrays
    finally:
        numadam.config.threads, numadam.config.serial_below, numadam.config.min_task = saved
    return [out[k] for k in range(len(SIZES))]


@pytest.mark.parametrize("fmt", ["8bit", "bfloat16"])
@pytest.mark.parametrize("cls, kw", RULES, ids=[cls.__name__ for cls, _ in RULES])
def test_a_bucket_matches_each_parameter_alone_on_any_thread_count(cls, kw, fmt):
    alone = _run(cls, kw, fmt, [[k] for k in range(len(SIZES))], 1, 1 << 40)
    together = range(len(SIZES))
    for threads, serial_below in ((1, 1 << 40), (1, 16), (2, 16), (3, 16)):
        got = _run(cls, kw, fmt, [list(together)], threads, serial_below)
        for want, have in zip(alone, got):
            assert len(want) == len(have)
            for a, b in zip(want, have):
                assert np.array_equal(a, b), (threads, serial_below)
