"""numadam.schedules under attack: degenerate arguments torch divides by
zero for, optimizers whose groups change under a schedule, checkpoints that
must load back. Each case failed before its fix; the torch behaviour quoted
was measured with torch 2.13 (scripts/fuzz_schedules.py)."""

import numpy as np
import pytest

import numadam
from numadam import schedules as S


def _opt(kind="sgd", lrs=(0.1, 0.03)):
    groups = [{"params": [np.linspace(-1, 1, 3) + k], "lr": lr} for k, lr in enumerate(lrs)]
    if kind == "adam":
        return numadam.Adam(groups)
    return numadam.SGD(groups, momentum=0.9)


# ------------------------------------------------ OneCycleLR's phases
@pytest.mark.parametrize("kwargs", [
    dict(total_steps=10, pct_start=0.1),                       # warm-up ends at step 0
    dict(total_steps=100, pct_start=0.01),
    dict(total_steps=20, pct_start=0.05, three_phase=True),
    dict(total_steps=7, pct_start=1.0),                        # last phase of no length
    dict(epochs=2, steps_per_epoch=5, pct_start=0.1),
])
def test_onecycle_with_a_phase_of_no_length_is_a_value_error(kwargs):
    """torch 2.13 raises ZeroDivisionError for these (at construction, or at
    the last step for pct_start=1.0); numadam names the arguments, before
    any group is touched."""
    opt = _opt()
    before = [dict(g, params=None) for g in opt.param_groups]
    with pytest.raises(ValueError, match=f"pct_start={kwargs['pct_start']}"):
        S.OneCycleLR(opt, max_lr=1.0, **kwargs)
    assert [dict(g, params=None) for g in opt.param_groups] == before


@pytest.mark.parametrize("total, pct, three", [(10, 0.0, False), (10, 0.05, False),
                                               (10, 0.2, True), (9, 1.0, True)])
def test_onecycle_near_the_degenerate_phases_still_runs_to_its_end(total, pct, three):
    opt = _opt()
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=pct, three_phase=three)
    for _ in range(total):
        sched.step()
    assert all(np.isfinite(g["lr"]) for g in opt.param_groups)
