"""opt.jit() with gradient clipping: compiled steps clip as opt.step() does, bit for bit."""

import math
import zlib

import numpy as np
import pytest
from numba import njit

import numadam
import optim_configs as oc
from helpers import assert_bits_equal
from test_handle import assert_same, fill, random_hyper


@njit
def steps(h, n):
    for _ in range(n):
        h.step()


# (max_grad_norm, clip_value) as multiples of the gradients' typical size,
# so that each clips some steps and not others.
_SETTINGS = [(0.05, None), (None, 0.3), (0.2, 0.5), (1e9, None)]


def clipped_twins(name, dtype, setting):
    rng = np.random.default_rng(zlib.crc32(f"{name} {dtype} {setting}".encode()))
    config = oc.CONFIGS[name]
    kwargs = random_hyper(name, rng)
    c, v = setting
    kwargs["max_grad_norm"] = None if c is None else c * rng.uniform(0.5, 2.0)
    kwargs["clip_value"] = None if v is None else v * rng.uniform(0.5, 2.0)
    out = []
    for _ in range(2):
        params = oc.initial_params(oc.index(name), dtype)
        groups = [dict(params=[params[k] for k in shapes], **over)
                  for shapes, over in oc.layout(config)]
        out.append(getattr(numadam, config["cls"])(groups, **kwargs))
    return out, rng


@pytest.mark.parametrize("setting", _SETTINGS)
@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", list(oc.CONFIGS))
def test_clipped_compiled_steps_are_clipped_python_steps_bit_for_bit(name, dtype, setting):
    (a, b), rng = clipped_twins(name, dtype, setting)
    h = b.jit()
    for t in range(1, 7):
        fill([a, b], rng, dtype)
        a.step()
        if t % 3 == 0:
            b.step()
        else:
            steps(h, 1)
        assert_same(a, b, f"{name} {dtype} {setting} step {t}")
        assert repr(a.last_grad_norm) == repr(b.last_grad_norm), (t, a.last_grad_norm,
                                                                  b.last_grad_norm)


def test_mixed_dtypes_share_one_norm():
    arrays = [np.linspace(-3, 3, 40).astype(np.float32), np.linspace(5, -1, 17)]
    twin = [a.copy() for a in arrays]
    a = numadam.Adam(arrays, lr=0.1, max_grad_norm=0.5, clip_value=2.0)
    b = numadam.Adam(twin, lr=0.1, max_grad_norm=0.5, clip_value=2.0)
    h = b.jit()
    rng = np.random.default_rng(5)
    for _ in range(4):
        for k, g in enumerate(a.grads):
            g[...] = rng.standard_normal(g.shape) * 4
            b.grads[k][...] = g
        a.step()
        steps(h, 1)
    for p, q in zip(arrays, twin):
        assert_bits_equal(p, q, "mixed dtypes")
    # the norm of every clamped gradient of both dtypes, in float64, once rounded
    clamped = [np.clip(g, -2.0, 2.0).astype(np.float64) for g in b.grads]
    exact = math.sqrt(math.fsum(float(x) ** 2 for g in clamped for x in g))
    assert b.last_grad_norm == exact


def test_settings_changed_in_python_reach_the_handle_and_switching_refuses():
    p, q = np.linspace(-1, 1, 9), np.linspace(-1, 1, 9)
    a = numadam.SGD([p], lr=0.1, momentum=0.9, max_grad_norm=1.0)
    b = numadam.SGD([q], lr=0.1, momentum=0.9, max_grad_norm=1.0)
    h = b.jit()
    for c in (1.0, 0.01, 3.0):
        a.max_grad_norm = b.max_grad_norm = c
        a.clip_value = b.clip_value = c / 2
        for opt in (a, b):
            opt.grads[0][...] = np.arange(9.0) - 4
        a.step()
        steps(h, 1)
        assert_bits_equal(p, q, f"max_grad_norm {c}")
        assert a.last_grad_norm == b.last_grad_norm
    b.max_grad_norm = b.clip_value = None
    with pytest.raises(RuntimeError, match="^numadam: this handle was made before clipping"):
        steps(h, 1)
    h2 = b.jit()
    a.max_grad_norm = a.clip_value = None
    a.step()
    steps(h2, 1)
    assert_bits_equal(p, q, "unclipped after the switch")


@pytest.mark.parametrize("setting", [(1.0, None), (None, 1.0), (1.0, 1.0)])
def test_check_finite_with_clipping_inside_njit(setting):
    c, v = setting
    p = np.linspace(-1, 1, 6)
    opt = numadam.Adam([p], lr=0.1, max_grad_norm=c, clip_value=v, check_finite="raise")
    h = opt.jit()
    opt.grads[0][...] = 1.0
    opt.grads[0][3] = np.nan
    before = p.copy()
    with pytest.raises(FloatingPointError, match="parameter 0"):
        steps(h, 1)
    assert_bits_equal(p, before, "refused step")
    if c is not None:
        assert math.isnan(opt.last_grad_norm)
    skip = numadam.Adam([p], lr=0.1, max_grad_norm=c, clip_value=v, check_finite="skip")
    hs = skip.jit()
    skip.grads[0][...] = 1.0
    skip.grads[0][0] = np.nan
    steps(hs, 2)
    assert skip.skipped_steps == 2
    assert_bits_equal(p, before, "skipped steps")
    # +-Inf is clamped to the bound by clip_value, as np.clip does: not a NaN
    skip.grads[0][0] = np.inf
    steps(hs, 1)
    assert skip.skipped_steps == (3 if v is None else 2)
