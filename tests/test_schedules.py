"""numadam.schedules: torch's lr sequences bit for bit, validation, lr_table,
exact resume through state dicts and checkpoint files, and minimize."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

import numadam
from numadam import schedules as S

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "make_schedules", os.path.join(_HERE, "golden", "make_schedules.py"))
make_schedules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_schedules)      # imports no torch: only build() is used

with np.load(make_schedules.PATH) as _golden:
    GOLDEN = {key: _golden[key] for key in _golden.files}
CONFIGS = json.loads(str(GOLDEN["configs"][()]))


def optimizer(kind, lrs, dtype=np.float64, n=2):
    """A numadam optimizer with one parameter array per group."""
    params = [np.linspace(-1, 1, n).astype(dtype) + k for k in range(len(lrs))]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if kind == "adam":
        return numadam.Adam(groups)
    return numadam.SGD(groups, momentum=0.9)


def momentum_of(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def run_config(config, opt=None):
    opt = opt or optimizer(config["opt"], config["lrs"])
    sched = make_schedules.build(S, opt, config["sched"])
    lrs, moms = [[g["lr"] for g in opt.param_groups]], [momentum_of(opt)]
    for i in range(config["steps"]):
        if "metrics" in config:
            sched.step(config["metrics"][i])
        else:
            sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append(momentum_of(opt))
    return np.array(lrs), np.array(moms)


def test_golden_file_is_torch_2_13():
    assert str(GOLDEN["torch_version"][()]) == "2.13.0"
    assert len(CONFIGS) >= 70 and sum(c["name"].startswith("random") for c in CONFIGS) >= 40


@pytest.mark.parametrize("k", range(len(CONFIGS)), ids=[c["name"] for c in CONFIGS])
def test_lr_sequence_is_torchs_bit_for_bit(k):
    config = CONFIGS[k]
    lrs, moms = run_config(config)
    expected = GOLDEN[f"lr_{k}"]
    assert lrs.shape == expected.shape
    np.testing.assert_array_equal(lrs.view(np.uint64), expected.view(np.uint64))
    if f"momentum_{k}" in GOLDEN:
        np.testing.assert_array_equal(moms.view(np.uint64),
                                      GOLDEN[f"momentum_{k}"].view(np.uint64))
