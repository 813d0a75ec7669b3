"""Bit-exact parity with torch.optim.Adam/AdamW(fused=True) on the CPU.

The expected values were produced by ``tests/golden/make_golden.py`` with
torch 2.13.0; the comparison is on the bits (so NaN patterns and signed zeros
count too).
"""

import json

import pytest

import optim_configs as oc
from helpers import assert_bits_equal, build, golden, run

CASES = [(name, dtype) for name in oc.CONFIGS for dtype in oc.DTYPES]


def _check_final(opt, params, expected, name):
    for k, p in enumerate(params):
        assert_bits_equal(p, expected[f"final_{k}"], f"{name} param {k}")
    sd = opt.state_dict()
    keys = [key for key in expected if key.startswith("final_state_")]
    assert keys
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
    assert "fused" in groups[0]          # torch's own keys are present and ignored
    opt.load_state_dict({"state": state, "param_groups": groups})
    run(opt, name, dtype, oc.RESUME_AT + 1, oc.STEPS)
    _check_final(opt, params, expected, name)
