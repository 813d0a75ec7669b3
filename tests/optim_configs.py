"""The registry of optimizer configurations every parity test runs.

Shared by ``tests/golden/make_golden.py`` (which runs them through torch) and
the tests (which run them through numadam and the NumPy reference), so the
two sides cannot drift apart. Gradients come from :func:`gradient`, a
counter-based generator (splitmix64) whose stream no library upgrade changes;
the golden files also carry every gradient torch saw, and the tests step with
those (see ``helpers.step_grads``).
"""

import numpy as np

STEPS = 200
RESUME_AT = 120          # the torch state dict is captured after this many steps
DTYPES = ("float32", "float64")

# Parameter shapes; every size is a multiple of 16 so that torch computes every
# element with its vectorised formula (its scalar tail rounds differently).
SHAPES = [(16,), (4, 8), (3, 16)]

# name -> class, constructor keywords, parameter groups (indices into SHAPES
# plus per-group overrides), lr schedule {step: [lr per group]}, and steps at
# which one parameter gets no gradient at all (None).
CONFIGS = {
    "adam": dict(cls="Adam", kwargs=dict(lr=1e-2)),
    "adam_l2": dict(cls="Adam", kwargs=dict(lr=1e-2, weight_decay=0.05)),
    "adamw": dict(cls="AdamW", kwargs=dict(lr=1e-2, weight_decay=0.05)),
    "amsgrad": dict(cls="Adam", kwargs=dict(lr=1e-2, amsgrad=True)),
    "amsgrad_adamw_maximize": dict(
        cls="AdamW", kwargs=dict(lr=1e-2, amsgrad=True, maximize=True, weight_decay=0.1)),
    "maximize_l2": dict(cls="Adam", kwargs=dict(lr=1e-2, maximize=True, weight_decay=0.02)),
    "small_beta1_eps0": dict(cls="Adam", kwargs=dict(lr=1e-2, betas=(0.3, 0.9), eps=0.0)),
    "groups_schedule": dict(
        cls="Adam", kwargs=dict(lr=1e-2),
        groups=[dict(shapes=[0, 2]),
                dict(shapes=[1], lr=3e-3, weight_decay=0.01, amsgrad=True)],
        schedule={100: [5e-3, 1e-3], 150: [2e-3, 1e-3]}),
    "adamw_groups_missing_grads": dict(
        cls="AdamW", kwargs=dict(lr=2e-2, weight_decay=0.03),
        groups=[dict(shapes=[0]), dict(shapes=[1, 2], betas=(0.8, 0.99), weight_decay=0.0)],
        skip_every=7),
}

# SGD and Adagrad. Configurations after the Adam ones carry an explicit
# ``seed`` (see :func:`index`), so that their gradients and initial parameters
# do not depend on where they sit in this dict.
CONFIGS.update({
    "sgd_plain": dict(cls="SGD", seed=100, kwargs=dict(lr=1e-2)),
    "sgd_momentum_dampening": dict(
        cls="SGD", seed=101, kwargs=dict(lr=1e-2, momentum=0.9, dampening=0.3)),
    "sgd_nesterov_weight_decay": dict(
        cls="SGD", seed=102,
        kwargs=dict(lr=1e-2, momentum=0.85, nesterov=True, weight_decay=0.05)),
    "sgd_maximize": dict(
        cls="SGD", seed=103,
        kwargs=dict(lr=3e-3, momentum=0.7, dampening=0.1, weight_decay=0.02, maximize=True)),
    "sgd_groups_schedule_missing_grads": dict(
        cls="SGD", seed=104, kwargs=dict(lr=2e-2),
        groups=[dict(shapes=[0], weight_decay=0.01),
                dict(shapes=[1, 2], momentum=0.8, dampening=0.2, weight_decay=0.03)],
        schedule={100: [5e-3, 1e-2], 150: [2e-3, 4e-3]}, skip_every=7),
    "adagrad_plain": dict(cls="Adagrad", seed=110, kwargs=dict(lr=1e-2)),
    "adagrad_lr_decay_initial_accumulator_weight_decay": dict(
        cls="Adagrad", seed=111,
        kwargs=dict(lr=3e-2, lr_decay=0.01, initial_accumulator_value=0.1,
                    weight_decay=0.05)),
    "adagrad_maximize_eps0": dict(
        cls="Adagrad", seed=112, kwargs=dict(lr=1e-2, eps=0.0, maximize=True)),
    "adagrad_groups_schedule_missing_grads": dict(
        cls="Adagrad", seed=113, kwargs=dict(lr=2e-2, lr_decay=0.003),
        groups=[dict(shapes=[0]),
                dict(shapes=[1, 2], lr_decay=0.0, weight_decay=0.02, eps=1e-6)],
        schedule={100: [5e-3, 1e-2], 150: [2e-3, 4e-3]}, skip_every=7),
})

# RMSprop, run through torch's single-tensor path (it has no fused kernel).
CONFIGS.update({
    "rmsprop": dict(cls="RMSprop", seed=100, kwargs=dict(lr=3e-3, alpha=0.93)),
    "rmsprop_centered": dict(
        cls="RMSprop", seed=101, kwargs=dict(lr=2e-3, alpha=0.97, eps=3e-7, centered=True)),
    "rmsprop_momentum": dict(cls="RMSprop", seed=102, kwargs=dict(lr=1e-3, momentum=0.87)),
    "rmsprop_centered_momentum_wd": dict(
        cls="RMSprop", seed=103,
        kwargs=dict(lr=7e-4, alpha=0.9, centered=True, momentum=0.6, weight_decay=0.03)),
    "rmsprop_maximize": dict(
        cls="RMSprop", seed=104, kwargs=dict(lr=2e-3, maximize=True, weight_decay=0.01)),
    "rmsprop_groups_schedule_missing_grads": dict(
        cls="RMSprop", seed=105, kwargs=dict(lr=3e-3, alpha=0.95),
        groups=[dict(shapes=[0, 2], centered=True),
                dict(shapes=[1], lr=1e-3, alpha=0.8, momentum=0.5, weight_decay=0.02)],
        schedule={100: [1.5e-3, 7e-4], 150: [6e-4, 2e-4]},
        skip_every=5),
})


def _splitmix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed, n):
    """``n`` floats in [0, 1) from stream ``seed`` (53 random bits each)."""
    with np.errstate(over="ignore"):
        counter = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 32)
        bits = _splitmix64(counter)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def gradient(config_index, step, param_index, shape, dtype):
    """A fresh gradient: signed, with magnitudes spread over four decades.

    Only exact operations and correctly rounded conversions, so that every
    NumPy version gives the same bits (``10.0 ** x`` does not: its last bit
    differs between NumPy 1.24 and 2.x). The golden files carry the gradients
    anyway; this keeps regenerating them reproducible.
    """
    n = int(np.prod(shape))
    seed = (config_index * 1000 + step) * 16 + param_index
    u = _uniform(2 * seed, n)
    # Scales 2**-7 to 2**6, about four decades, times a uniform in (-1, 1).
    exponent = np.floor(14.0 * _uniform(2 * seed + 1, n)).astype(np.int64) - 7
    return np.ldexp(2.0 * u - 1.0, exponent).reshape(shape).astype(dtype)


def index(name):
    """The number that seeds configuration ``name``'s gradients and parameters:
    its ``seed`` where it has one, else its position in ``CONFIGS``."""
    return CONFIGS[name].get("seed", list(CONFIGS).index(name))


def initial_params(config_index, dtype):
    return [(_uniform(10**9 + config_index * 16 + k, int(np.prod(s))) * 2 - 1)
            .reshape(s).astype(dtype) for k, s in enumerate(SHAPES)]


def layout(config):
    """The groups of ``config`` as (parameter indices, overrides) pairs."""
    groups = config.get("groups") or [dict(shapes=list(range(len(SHAPES))))]
    return [(g["shapes"], {k: v for k, v in g.items() if k != "shapes"}) for g in groups]


def has_gradient(config, step, param_index):
    """False where the config withholds parameter 1's gradient (None)."""
    every = config.get("skip_every")
    return not (every and param_index == 1 and step % every == 0)


def param_order(config):
    """Parameter indices in group order (the order of step()'s grads)."""
    return [k for shapes, _ in layout(config) for k in shapes]
