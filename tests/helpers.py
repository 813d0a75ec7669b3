"""Drive numadam through a configuration of the registry."""

import functools
import os
import threading

import numpy as np

import numadam
from internals import cpu_kernels as _cpu
import optim_configs as oc

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


@functools.lru_cache(maxsize=None)
def _golden(name, dtype):
    with np.load(os.path.join(GOLDEN, f"{name}_{dtype}.npz"), allow_pickle=False) as data:
        arrays = dict(data)
    for value in arrays.values():
        value.flags.writeable = False
    return arrays


def golden(name, dtype):
    """The arrays of ``tests/golden/<name>_<dtype>.npz`` (read-only, cached)."""
    return dict(_golden(name, dtype))


def build(name, dtype, params=None, **extra):
    """A numadam optimizer for configuration ``name`` over ``params``."""
    config = oc.CONFIGS[name]
    index = oc.index(name)
    if params is None:
        params = oc.initial_params(index, dtype)
    groups = [dict(params=[params[k] for k in shapes], **over) for shapes, over in oc.layout(config)]
    cls = getattr(numadam, config["cls"])
    return cls(groups, **config["kwargs"], **extra), params


def step_grads(name, dtype, step):
    """The gradients of ``step`` in group order (None where withheld).

    They are the very gradients torch saw, read from the golden file rather
    than regenerated, so no NumPy version's rounding can change them.
    """
    config = oc.CONFIGS[name]
    expected = _golden(name, dtype)
    return [expected[f"grads_{k}"][step - 1].copy()
            if oc.has_gradient(config, step, k) else None
            for k in oc.param_order(config)]


def run(opt, name, dtype, first, last):
    """Steps ``first..last`` (1-based, inclusive), with the config's lr schedule."""
    schedule = oc.CONFIGS[name].get("schedule", {})
    for step in range(first, last + 1):
        if step in schedule:
            for group, lr in zip(opt.param_groups, schedule[step]):
                group["lr"] = lr
        opt.step(step_grads(name, dtype, step))


def assert_bits_equal(actual, expected, what, nan_bits=True):
    """Every element has the same bits; with ``nan_bits=False`` a NaN only has
    to meet a NaN (of any sign and payload: IEEE 754 and LLVM leave those of a
    result unspecified, and the compiler may swap the operands that pick them).
    """
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    width = actual.dtype.itemsize
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    differ = np.any(actual.view(np.uint8).reshape(-1, width)
                    != expected.view(np.uint8).reshape(-1, width), axis=1)
    if not nan_bits and actual.dtype.kind == "f":
        differ &= ~(np.isnan(actual) & np.isnan(expected))
    bad = int(differ.sum())
    assert bad == 0, f"{what}: {bad} of {actual.size} elements differ in their bits"


def patch_kernel(monkeypatch, name, make):
    """Make every rule's CPU kernel ``name`` (see ``numadam.cpu.kernels.Kernels``)
    built from now on ``make(real kernel)``, for tests that watch or interrupt
    kernel calls. Optimizers created after the patch use it."""
    built = _cpu.kernels

    def patched(rule):
        real = built(rule)
        return real._replace(**{name: make(getattr(real, name))})

    monkeypatch.setattr(_cpu, "kernels", patched)


def run_threads(target, count):
    """Run ``target(k)`` for ``k < count`` on as many threads at once; fail
    on a hang or on any thread's exception."""
    errors = []

    def guarded(k):
        try:
            target(k)
        except BaseException as error:     # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
