"""Compressed state on the device under the simulator (run by
tests/test_cuda_formats_sim.py): bfloat16 and 8-bit state of float32 device
parameters give the CPU's bits, for every rule.

Run only with ``NUMBA_ENABLE_CUDASIM=1``. As in ``sim_backend.py``, the
simulator runs the kernels as Python with the CPU-compiled element and
format functions, so this checks the device plumbing (the block of each
thread, padding, the absmax reduction, the stored layout, state dicts); the
device's arithmetic is checked by ``ptx_check.py`` (no contracted multiply)
and by ``scripts/gpu_check.py`` on a GPU. RMSprop's reference is its rule
with CUDA's correctly rounded square root, as in ``sim_backend.py``.
"""

import dataclasses
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numba import cuda  # noqa: E402
from numba.core import config as numba_config  # noqa: E402

import numadam  # noqa: E402
from helpers import assert_bits_equal  # noqa: E402
from internals import device_element  # noqa: E402

if not numba_config.ENABLE_CUDASIM:
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run through tests/test_cuda_formats_sim.py)",
                allow_module_level=True)

# Non-finite values: NumPy warns where the simulator computes (x - x) != 0.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")


class DeviceRootRMSprop(numadam.RMSprop):
    """RMSprop on the CPU with the square root CUDA computes (correctly rounded)."""

    rule = dataclasses.replace(numadam.RMSprop.rule, name="rmsprop_device_root",
                               element=device_element(numadam.RMSprop.rule))


# One configuration of each rule with every state row it can have.
CONFIGS = {
    "adam": (numadam.Adam, dict(lr=1e-2)),
    "amsgrad_adamw_maximize": (numadam.AdamW, dict(lr=1e-2, amsgrad=True, maximize=True,
                                                   weight_decay=0.1)),
    "sgd_nesterov": (numadam.SGD, dict(lr=1e-2, momentum=0.85, nesterov=True,
                                       weight_decay=0.05)),
    "sgd_plain": (numadam.SGD, dict(lr=1e-2)),
    "adagrad_initial_accumulator": (numadam.Adagrad, dict(lr=3e-2, lr_decay=0.01,
                                                          initial_accumulator_value=0.1,
                                                          weight_decay=0.05)),
    "rmsprop_centered_momentum": (numadam.RMSprop, dict(lr=7e-4, alpha=0.9, centered=True,
                                                        momentum=0.6, weight_decay=0.03)),
}
# Under 4096 elements (full state under "8bit"), a whole number of blocks,
# and a last block of 4 elements.
SHAPES = [300, (16, 256), 4100]
# Every rule's check has one 8-bit parameter: the simulator runs a Python
# thread per CUDA thread, and a step of 17 blocks takes seconds.
RULE_SHAPES = [300, 4100]
STEPS = 2


def _problem(name, fmt, shapes=SHAPES, **extra):
    cls, kwargs = CONFIGS[name]
    rng = np.random.default_rng(sorted(CONFIGS).index(name))
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    reference = DeviceRootRMSprop if cls is numadam.RMSprop else cls
    cpu = reference([h.copy() for h in host], state_format=fmt, **kwargs, **extra)
    params = [cuda.to_device(h) for h in host]
    dev = cls(params, state_format=fmt, **kwargs, **extra)
    return cpu, host, dev, params, rng


def _gradients(rng, shapes, step):
    grads = [(rng.standard_normal(s) * 2.0 ** rng.integers(-8, 4)).astype(np.float32)
             for s in shapes]
    if step == 1:
        # A parameter without a gradient: its blocks are skipped, and at the
        # next step the parameters' step counts (and scalars) differ.
        grads[-1] = None
    return grads


def _steps(cpu, dev, rng, shapes, steps=STEPS, edit=None):
    for step in range(1, steps + 1):
        grads = _gradients(rng, shapes, step)
        if edit is not None:
            edit(step, grads)
        cpu.step(grads)
        dev.step([None if g is None else cuda.to_device(g) for g in grads])


def _same(cpu, host, dev, params, what):
    for k, (a, b) in enumerate(zip(cpu.param_groups[0]["params"], params)):
        assert_bits_equal(b.copy_to_host(), a, f"{what} param {k}")
    sa, sb = cpu.state_dict(), dev.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for index, entry in sa["state"].items():
        assert entry.keys() == sb["state"][index].keys(), (what, index)
        for key, value in entry.items():
            got = sb["state"][index][key]
            if key == "step":
                assert got == value
            else:
                assert isinstance(got, np.ndarray) and got.dtype == value.dtype, (what, key)
                assert np.array_equal(got.view(np.uint8), value.view(np.uint8)), \
                    f"{what} {index} {key}"


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_rule_matches_the_cpu_bit_for_bit(name, fmt):
    cpu, host, dev, params, rng = _problem(name, fmt, RULE_SHAPES)
    _steps(cpu, dev, rng, RULE_SHAPES)
    _same(cpu, host, dev, params, f"{name} {fmt}")
    kinds = sorted(type(b).__name__ for b in dev._buckets)
    assert kinds == (["CompressedDeviceBucket"] if fmt == "bfloat16"
                     else ["CompressedDeviceBucket", "DeviceBucket"])
    assert dev.state_nbytes == cpu.state_nbytes


def test_stored_state_is_what_the_format_says():
    """Two 8-bit parameters (the second's blocks start at block 16), AMSGrad's
    three rows, and the stored arrays' types and sizes."""
    cpu, host, dev, params, rng = _problem("amsgrad_adamw_maximize", "8bit")
    _steps(cpu, dev, rng, SHAPES)
    _same(cpu, host, dev, params, "two 8-bit parameters")
    entry = dev.state_dict()["state"][2]        # 4100 elements: 17 blocks
    assert entry["exp_avg"].dtype == np.uint8 and entry["exp_avg"].shape == (4100,)
    assert entry["exp_avg_absmax"].dtype == np.float32 and entry["exp_avg_absmax"].shape == (17,)
    assert dev.state_dict()["state"][0]["exp_avg"].dtype == np.float32   # under 4096: full
    # 3 rows of codes and absmax for 4096 + 4352 padded columns, and 3 full rows of 300
    assert dev.state_nbytes == 3 * (8448 + 4 * 33) + 3 * 4 * 300
    bf16, _, bdev, _, brng = _problem("adam", "bfloat16")
    _steps(bf16, bdev, brng, SHAPES)
    assert bdev.state_dict()["state"][1]["exp_avg_sq"].dtype == np.uint16
    assert bdev.state_nbytes == 2 * 2 * (300 + 4096 + 4100)


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
def test_state_views_are_decoded_copies_that_cannot_be_written(fmt):
    cpu, host, dev, params, rng = _problem("adam", fmt, RULE_SHAPES)
    _steps(cpu, dev, rng, RULE_SHAPES)
    view = dev.state[params[1]]["exp_avg"]
    assert isinstance(view, np.ndarray) and view.dtype == np.float32
    assert_bits_equal(view, cpu.state[1]["exp_avg"], "view")
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        dev.state[params[1]]["exp_avg"] = np.zeros(view.shape, np.float32)


def test_a_non_finite_state_value_makes_its_block_nan_on_both():
    """An infinite gradient element: its block's new absmax is NaN (every
    code then decodes to NaN), the other blocks are untouched by it."""
    def edit(step, grads):
        if step == 1:
            grads[1][3, 5] = np.inf     # in block 3
    cpu, host, dev, params, rng = _problem("adam", "8bit")
    _steps(cpu, dev, rng, SHAPES, edit=edit)
    _same(cpu, host, dev, params, "inf gradient")
    absmax = dev.state_dict()["state"][1]["exp_avg_absmax"]
    assert np.isnan(absmax[3]) and np.isfinite(np.delete(absmax, 3)).all()


def test_parameters_the_device_cannot_hold_compressed_are_refused():
    import ml_dtypes
    with pytest.raises(NotImplementedError, match="CuPy has no bfloat16"):
        numadam.Adam([cuda.to_device(np.zeros(8, ml_dtypes.bfloat16))], state_format="bfloat16")
    with pytest.raises(ValueError, match="float64"):
        numadam.Adam([cuda.to_device(np.zeros(8))], state_format="8bit")
    # float64 with full state stays as it was
    numadam.Adam([cuda.to_device(np.zeros(8))], stochastic_rounding=True)
