"""Attacks on the step path and state dicts: sequences a user or a hostile
caller can produce, compared bit for bit with an optimizer that never saw
the attack (whose own bits the golden tests pin to torch), or with what
torch's own arithmetic does."""

import numpy as np
import pytest

import numadam


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def test_sgd_loads_a_none_momentum_buffer_as_no_buffer():
    # torch before 2.0 wrote momentum_buffer=None; torch's SGD reads None as
    # "no buffer yet" and its next momentum step starts the buffer from the
    # gradient, as for a parameter never stepped.
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(7)
        p0 = rng.standard_normal(16).astype(dtype)
        hyper = dict(lr=0.0173, momentum=0.83, dampening=0.21, weight_decay=0.0041)
        loaded, fresh = p0.copy(), p0.copy()
        opt = numadam.SGD([loaded], **hyper)
        ref = numadam.SGD([fresh], **hyper)
        groups = opt.state_dict()["param_groups"]
        opt.load_state_dict({"state": {0: {"momentum_buffer": None}}, "param_groups": groups})
        for _ in range(3):
            g = rng.standard_normal(16).astype(dtype)
            opt.step([g])
            ref.step([g])
        assert np.array_equal(_bits(loaded), _bits(fresh))
        assert np.array_equal(_bits(opt.state[loaded]["momentum_buffer"]),
                              _bits(ref.state[fresh]["momentum_buffer"]))


@pytest.mark.xfail(strict=True, reason="the step count is an exact int64; torch's is a "
                   "float32 tensor that stops advancing at 2**24 (not fixed: every kernel "
                   "and the sharded step mirror increment it)")
@pytest.mark.parametrize("cls", ["Adam", "Adagrad", "RMSprop"])
def test_the_step_count_rounds_as_torchs_float32_step(cls):
    # torch keeps ``step`` in a float32 tensor (``_get_scalar_dtype()``, and
    # float32 for fused=True) and adds 1 in float32: from 2**24 on, 2**24 + 1
    # rounds back to 2**24. Adam's bias corrections read that step: with
    # beta2 = 0.999999999 torch 2.13's fused Adam and numadam part in 17 of 32
    # float32 parameters within two steps past 2**24.
    assert np.float32(2 ** 24) + np.float32(1) == np.float32(2 ** 24)
    p = np.ones(16, np.float32)
    opt = getattr(numadam, cls)([p])
    opt.step([np.ones(16, np.float32)])
    opt.state[p]["step"] = 2 ** 24
    opt.step([np.ones(16, np.float32)])
    assert opt.state[p]["step"] == 2 ** 24


@pytest.mark.parametrize("step", [2 ** 63, 2 ** 64, np.uint64(2 ** 63)])
def test_a_functional_step_past_int64_is_a_value_error(step):
    # The documented contract is TypeError or ValueError before anything is
    # touched; Numba's int64 unboxing raised OverflowError.
    from numadam.functional import adagrad_update
    x, s = np.ones(4), np.zeros(4)
    with pytest.raises(ValueError, match="step"):
        adagrad_update(x, np.ones(4), s, step, 0.1, 0.0, 0.0, 1e-10, False)
    assert np.array_equal(x, np.ones(4)) and np.array_equal(s, np.zeros(4))


@pytest.mark.parametrize("cls", ["Adam", "Adagrad", "RMSprop"])
def test_a_step_count_near_int64_max_is_refused(cls):
    # The kernels add 1 to an int64 count: a loaded 2**63 - 1 wrapped to
    # -2**63 at the next step (Adam's parameters became NaN, and the state
    # dict it then exported did not load).
    p = np.ones(16, np.float32)
    opt = getattr(numadam, cls)([p])
    opt.step([np.ones(16, np.float32)])
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2 ** 63 - 1
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="step"):
        opt.state[p]["step"] = 2 ** 63 - 1
    sd["state"][0]["step"] = 2 ** 62          # the largest accepted
    opt.load_state_dict(sd)
    opt.step([np.ones(16, np.float32)])
    assert opt.state[p]["step"] == 2 ** 62 + 1 and np.isfinite(p).all()
