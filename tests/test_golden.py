"""Bit-exact parity with torch.optim.Adam/AdamW(fused=True) on the CPU.

The expected values were produced by ``tests/golden/make_golden.py`` with
torch 2.13.0; the comparison is on the bits (so NaN patterns and signed zeros
count too).
"""

import json

import numpy as np
import pytest

import numadam
import optim_configs as oc
from helpers import assert_bits_equal, build, golden, run
from numadam.functional import adam_update

CASES = [(name, dtype) for name in oc.CONFIGS for dtype in oc.DTYPES]


def _check_final(opt, params, expected, name):
    for k, p in enumerate(params):
        assert_bits_equal(p, expected[f"final_{k}"], f"{name} param {k}")
    sd = opt.state_dict()
    keys = [key for key in expected if key.startswith("final_state_")]
    # The same entries as torch's: none at all for SGD without momentum.
    assert sorted(key[len("final_state_"):] for key in keys) == sorted(
        f"{pid}_{entry}" for pid, state in sd["state"].items() for entry in state)
    for key in keys:
        position, entry = key[len("final_state_"):].split("_", 1)
        value = sd["state"][int(position)][entry]
        if entry == "step":
            assert value == int(expected[key]), key
        else:
            assert_bits_equal(value, expected[key], f"{name} {key}")


@pytest.mark.parametrize("name,dtype", CASES)
def test_200_steps_match_torch_bit_for_bit(name, dtype):
    expected = golden(name, dtype)
    opt, params = build(name, dtype)
    for k, p in enumerate(params):
        assert_bits_equal(p, expected[f"initial_{k}"], f"initial {k}")
    run(opt, name, dtype, 1, oc.STEPS)
    _check_final(opt, params, expected, name)


@pytest.mark.parametrize("name,dtype", CASES)
def test_torch_state_dict_converted_to_numpy_resumes_bit_for_bit(name, dtype):
    """A user's torch checkpoint (tensors -> .numpy()) continues exactly."""
    expected = golden(name, dtype)
    params = [expected[f"resume_param_{k}"].copy() for k in range(len(oc.SHAPES))]
    opt, params = build(name, dtype, params=params)
    state = {}
    for key, value in expected.items():
        if key.startswith("resume_state_"):
            pid, entry = key[len("resume_state_"):].split("_", 1)
            state.setdefault(int(pid), {})[entry] = value   # 'step' stays a float32 0-d array
    groups = json.loads(str(expected["resume_params"]))
    assert {"fused", "foreach"} & set(groups[0])    # torch's own keys, ignored
    opt.load_state_dict({"state": state, "param_groups": groups})
    run(opt, name, dtype, oc.RESUME_AT + 1, oc.STEPS)
    _check_final(opt, params, expected, name)


CASE_FILES = [(family, dtype) for family in ("random_hyper", "nonfinite") for dtype in oc.DTYPES]


def _cases(family, dtype):
    expected = golden(f"cases_{family}", dtype)
    return json.loads(str(expected["hyper"])), expected


def _check_case(c, hyper, expected, param, exp_avg, exp_avg_sq, max_exp_avg_sq):
    """Bits equal, except that a NaN's sign and payload are not compared."""
    what = f"case {c} {hyper}"
    arrays = dict(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    if hyper["amsgrad"]:
        arrays["max_exp_avg_sq"] = max_exp_avg_sq
    for key, value in arrays.items():
        assert_bits_equal(value, expected[key][c], f"{what}: {key}", nan_bits=False)


@pytest.mark.parametrize("family,dtype", CASE_FILES)
def test_random_hyperparameters_and_nonfinite_gradients_match_torch(family, dtype):
    """Every host-side scalar rounds as torch's; NaN and Inf flow as in torch.

    ``random_hyper``: no round numbers, so a scalar rounded differently from
    torch's compiled kernel (``1 - lr * weight_decay`` is one fused
    multiply-add there) shows in some case. ``nonfinite``: NaN of either sign
    and infinities in the gradients, through AMSGrad's maximum too.
    """
    hypers, expected = _cases(family, dtype)
    steps = expected["grads"].shape[1]
    for c, hyper in enumerate(hypers):
        kwargs = {k: v for k, v in hyper.items() if k != "cls"}
        param = expected["initial"][c].copy()
        opt = getattr(numadam, hyper["cls"])([param], **kwargs)
        with np.errstate(invalid="ignore"):
            for step in range(steps):
                opt.step([expected["grads"][c, step].copy()])
        state = opt.state_dict()["state"][0]
        assert state["step"] == expected["step"][c] == steps
        _check_case(c, hyper, expected, param, state["exp_avg"], state["exp_avg_sq"],
                    state.get("max_exp_avg_sq"))


@pytest.mark.parametrize("family,dtype", CASE_FILES)
def test_functional_update_matches_torch_on_the_same_cases(family, dtype):
    """``numadam.functional`` builds the same scalars, so it must match too."""
    hypers, expected = _cases(family, dtype)
    steps = expected["grads"].shape[1]
    for c, hyper in enumerate(hypers):
        param = expected["initial"][c].copy()
        m, v, vmax = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
        beta1, beta2 = hyper["betas"]
        with np.errstate(invalid="ignore"):
            for step in range(1, steps + 1):
                adam_update(param, expected["grads"][c, step - 1], m, v, vmax, step,
                            hyper["lr"], beta1, beta2, hyper["eps"], hyper["weight_decay"],
                            hyper["amsgrad"], hyper["maximize"], hyper["cls"] == "AdamW")
        _check_case(c, hyper, expected, param, m, v, vmax)


def test_case_files_cover_what_they_claim():
    """The cases are not a handful of round numbers, and the NaNs really flow."""
    hypers, _ = _cases("random_hyper", "float64")
    assert {h["cls"] for h in hypers} == {"Adam", "AdamW"}
    assert {(h["amsgrad"], h["maximize"]) for h in hypers} == \
        {(a, b) for a in (False, True) for b in (False, True)}
    assert len({h["lr"] for h in hypers}) == len(hypers)
    assert any(h["betas"][0] < 0.5 for h in hypers) and any(h["betas"][0] >= 0.5 for h in hypers)
    assert any(h["weight_decay"] == 0 for h in hypers) and any(h["eps"] == 0 for h in hypers)
    for dtype in oc.DTYPES:
        hypers, expected = _cases("nonfinite", dtype)
        grads = expected["grads"]
        assert np.isnan(grads).any() and np.isposinf(grads).any() and np.isneginf(grads).any()
        assert np.signbit(grads[np.isnan(grads)]).any() and \
            not np.signbit(grads[np.isnan(grads)]).all()
        ams = np.array([h["amsgrad"] for h in hypers])
        # AMSGrad's maximum holds NaNs where torch's NaN-propagating maximum put them.
        assert np.isnan(expected["max_exp_avg_sq"][ams]).any()
        assert str(expected["torch_version"]).startswith("2.13.0")


def test_adamw_decay_factor_rounds_once_as_torch():
    """torch 2.13 gives -5.551115123125783e-17 here: 1 - 0.1*10 in one FMA."""
    param = np.ones(16)
    numadam.AdamW([param], lr=0.1, weight_decay=10.0).step([np.zeros(16)])
    assert param[0] == -5.551115123125783e-17
