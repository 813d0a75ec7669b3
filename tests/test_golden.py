"""Bit-exact parity with torch.optim on the CPU: Adam, AdamW, SGD and Adagrad
(fused=True) and RMSprop (its single-tensor path).

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


FAMILIES = ("random_hyper", "nonfinite")
# rule -> case file prefix, and the state keys torch keeps under a case's
# hyperparameters, in torch's order (the generator's RULES; its files hold
# zeros where torch keeps no buffer). Written out here, not read from the
# rule declarations, so that a wrong declaration shows.
CASE_RULES = {
    "adam": ("cases_", lambda h: ["step", "exp_avg", "exp_avg_sq"]
             + (["max_exp_avg_sq"] if h["amsgrad"] else [])),
    "sgd": ("cases_sgd_", lambda h: ["momentum_buffer"] if h["momentum"] != 0 else []),
    "adagrad": ("cases_adagrad_", lambda h: ["step", "sum"]),
    "rmsprop": ("cases_rmsprop_", lambda h: ["step", "square_avg"]
                + (["momentum_buffer"] if h["momentum"] > 0 else [])
                + (["grad_avg"] if h["centered"] else [])),
}
CASE_FILES = [(rule, family, dtype) for rule in CASE_RULES for family in FAMILIES
              for dtype in oc.DTYPES]


def _cases(family, dtype, rule="adam"):
    expected = golden(f"{CASE_RULES[rule][0]}{family}", dtype)
    return json.loads(str(expected["hyper"])), expected


def _check_case(c, hyper, expected, arrays):
    """Bits equal, except that a NaN's sign and payload are not compared."""
    what = f"case {c} {hyper}"
    for key, value in arrays.items():
        assert_bits_equal(value, expected[key][c], f"{what}: {key}", nan_bits=False)


@pytest.mark.parametrize("rule,family,dtype", CASE_FILES)
def test_random_hyperparameters_and_nonfinite_gradients_match_torch(rule, family, dtype):
    """Every host-side scalar rounds as torch's; NaN and Inf flow as in torch.

    ``random_hyper``: no round numbers, so a scalar rounded differently from
    torch's compiled kernel (``1 - lr * weight_decay`` is one fused
    multiply-add there, Adagrad's ``1 + (step - 1) * lr_decay`` too) shows in
    some case. ``nonfinite``: NaN of either sign and infinities in the
    gradients, through AMSGrad's maximum, momentum buffers and averages too.
    The state has torch's keys in torch's order; where torch keeps no buffer
    the golden file holds zeros.
    """
    hypers, expected = _cases(family, dtype, rule)
    steps = expected["grads"].shape[1]
    for c, hyper in enumerate(hypers):
        kwargs = {k: v for k, v in hyper.items() if k != "cls"}
        param = expected["initial"][c].copy()
        opt = getattr(numadam, hyper["cls"])([param], **kwargs)
        with np.errstate(invalid="ignore"):
            for step in range(steps):
                opt.step([expected["grads"][c, step].copy()])
        keys = CASE_RULES[rule][1](hyper)
        state = opt.state_dict()["state"].get(0, {})
        assert list(state) == keys, (c, hyper)
        if "step" in keys:
            assert state["step"] == expected["step"][c] == steps
        arrays = {key: value for key, value in state.items() if key != "step"}
        _check_case(c, hyper, expected, dict(param=param, **arrays))
        for key in expected:
            if key not in ("initial", "grads", "hyper", "param", "step", "torch_version") \
                    and key not in arrays:
                assert not expected[key][c].any(), (c, key)    # torch kept no such buffer


@pytest.mark.parametrize("family,dtype", [(f, d) for f in FAMILIES for d in oc.DTYPES])
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
        arrays = dict(param=param, exp_avg=m, exp_avg_sq=v)
        if hyper["amsgrad"]:
            arrays["max_exp_avg_sq"] = vmax
        _check_case(c, hyper, expected, arrays)


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


# rule -> predicates some random case must meet (every flag both ways, the
# zeros that switch a branch off, both sides of a formula's switch).
COVERAGE = {
    "sgd": dict(nesterov=lambda h: h["nesterov"], plain=lambda h: not h["nesterov"],
                maximize=lambda h: h["maximize"], no_momentum=lambda h: h["momentum"] == 0,
                dampened=lambda h: 0 < h["dampening"], no_decay=lambda h: h["weight_decay"] == 0),
    "adagrad": dict(maximize=lambda h: h["maximize"], minimize=lambda h: not h["maximize"],
                    lr_decay=lambda h: h["lr_decay"] > 0, no_lr_decay=lambda h: h["lr_decay"] == 0,
                    initial=lambda h: h["initial_accumulator_value"] > 0,
                    eps0=lambda h: h["eps"] == 0, no_decay=lambda h: h["weight_decay"] == 0),
    "rmsprop": dict(centered=lambda h: h["centered"], plain=lambda h: not h["centered"],
                    maximize=lambda h: h["maximize"], momentum=lambda h: h["momentum"] > 0,
                    no_momentum=lambda h: h["momentum"] == 0,
                    small_weight=lambda h: 1 - h["alpha"] < 0.5,    # lerp's two formulas
                    large_weight=lambda h: 1 - h["alpha"] >= 0.5,
                    eps0=lambda h: h["eps"] == 0, no_decay=lambda h: h["weight_decay"] == 0),
}


@pytest.mark.parametrize("rule", sorted(COVERAGE))
def test_case_files_of_every_rule_cover_what_they_claim(rule):
    hypers, _ = _cases("random_hyper", "float64", rule)
    assert len({h["lr"] for h in hypers}) == len(hypers)
    for what, holds in COVERAGE[rule].items():
        assert any(holds(h) for h in hypers), what
    for dtype in oc.DTYPES:
        hypers, expected = _cases("nonfinite", dtype, rule)
        grads = expected["grads"]
        assert np.isnan(grads).any() and np.isposinf(grads).any() and np.isneginf(grads).any()
        # The NaNs reach the parameters, so the comparison sees them flow.
        assert np.isnan(expected["param"]).any()
        assert str(expected["torch_version"]).startswith("2.13.0")


def test_adamw_decay_factor_rounds_once_as_torch():
    """torch 2.13 gives -5.551115123125783e-17 here: 1 - 0.1*10 in one FMA."""
    param = np.ones(16)
    numadam.AdamW([param], lr=0.1, weight_decay=10.0).step([np.zeros(16)])
    assert param[0] == -5.551115123125783e-17
