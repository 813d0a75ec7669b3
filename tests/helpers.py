"""Drive numadam through a configuration of the registry."""

import os

import numpy as np

import numadam
import optim_configs as oc

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def golden(name, dtype):
    with np.load(os.path.join(GOLDEN, f"{name}_{dtype}.npz"), allow_pickle=False) as data:
        return dict(data)


def build(name, dtype, params=None, **extra):
    """A numadam optimizer for configuration ``name`` over ``params``."""
    config = oc.CONFIGS[name]
    index = list(oc.CONFIGS).index(name)
    if params is None:
        params = oc.initial_params(index, dtype)
    groups = [dict(params=[params[k] for k in shapes], **over) for shapes, over in oc.layout(config)]
    cls = getattr(numadam, config["cls"])
    return cls(groups, **config["kwargs"], **extra), params


def step_grads(name, dtype, step):
    """The gradients of ``step`` in group order (None where withheld)."""
    config = oc.CONFIGS[name]
    index = list(oc.CONFIGS).index(name)
    return [oc.gradient(index, step, k, oc.SHAPES[k], dtype)
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


def assert_bits_equal(actual, expected, what):
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    width = actual.dtype.itemsize
    differ = (actual.reshape(-1).view(np.uint8).reshape(-1, width)
              != expected.reshape(-1).view(np.uint8).reshape(-1, width))
    bad = int(np.any(differ, axis=1).sum())
    assert bad == 0, f"{what}: {bad} of {actual.size} elements differ in their bits"
