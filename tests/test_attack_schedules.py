"""numadam.schedules under attack: degenerate arguments torch divides by
zero for, optimizers whose groups change under a schedule, checkpoints that
must load back. Each case failed before its fix; the torch behaviour quoted
was measured with torch 2.13 (scripts/fuzz_schedules.py)."""

import json

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


# ------------------------------------------- groups added under a schedule
FACTORIES = {
    "StepLR": lambda o: S.StepLR(o, 1, 0.5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, 0.5),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, 5),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda epoch: 0.9),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, 3),
    "OneCycleLR": lambda o: S.OneCycleLR(o, 1.0, total_steps=10),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.5, 2),
                                                      S.ExponentialLR(o, 0.5)]),
    "SequentialLR": lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.5, 2),
                                                 S.ExponentialLR(o, 0.5)], [1]),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_a_group_added_under_a_schedule_is_a_value_error_that_changes_nothing(name, tmp_path):
    """torch's chained forms go on over the new group (its state dict then
    holds one base_lr too few, and OneCycleLR a KeyError): the file such a
    state went into loaded into no optimizer of that shape."""
    opt = _opt("adam", (0.1,))
    sched = FACTORIES[name](opt)
    state = sched.state_dict()
    opt.add_param_group({"params": [np.zeros(2)], "lr": 0.3})
    lrs = [g["lr"] for g in opt.param_groups]
    for act in (sched.step, lambda: sched.lr_table(3), sched.state_dict,
                lambda: opt.save(tmp_path / "c.npz", schedule=sched)):
        with pytest.raises(ValueError, match="2 parameter groups"):
            act()
        assert [g["lr"] for g in opt.param_groups] == lrs
    opt.param_groups.pop()
    assert sched.state_dict() == state
    assert not (tmp_path / "c.npz").exists()


def test_plateau_follows_an_added_group_and_its_checkpoint_loads(tmp_path):
    """torch extends a single min_lr to added groups (at its next reduction;
    before that its state held one min_lr too few and loaded nowhere)."""
    opt = _opt("adam", (0.1,))
    sched = S.ReduceLROnPlateau(opt, patience=0, factor=0.5, min_lr=0.001)
    opt.add_param_group({"params": [np.zeros(2)], "lr": 0.3})
    sched.step(1.0)
    path = tmp_path / "c.npz"
    opt.save(path, schedule=sched)
    fresh = _opt("adam", (0.1,))
    fresh.add_param_group({"params": [np.zeros(2)], "lr": 0.3})
    again = S.ReduceLROnPlateau(fresh, patience=0, factor=0.5, min_lr=0.001)
    fresh.load(path, schedule=again)
    for metric in (2.0, 3.0, 4.0, 5.0, 6.0):
        sched.step(metric)
        again.step(metric)
        assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["lr"] for g in opt.param_groups] == [0.1 * 0.5 ** 5, 0.3 * 0.5 ** 5]
    listed = S.ReduceLROnPlateau(_opt("adam", (0.1,)), min_lr=[0.0])
    listed.optimizer.add_param_group({"params": [np.zeros(2)], "lr": 0.3})
    with pytest.raises(ValueError, match="one per group"):
        listed.step(1.0)
    assert listed.last_epoch == 0


def test_a_rate_that_would_not_load_back_is_refused_at_save(tmp_path):
    opt = _opt()
    sched = S.ExponentialLR(opt, 0.5)
    opt.param_groups[0]["lr"] = float("nan")      # set by hand, then kept by the schedule
    sched.step()
    with pytest.raises(ValueError, match=r"would not load back.*_last_lr'\]\[0\]"):
        opt.save(tmp_path / "c.npz", schedule=sched)
    assert not (tmp_path / "c.npz").exists()


# ------------------------------------------------------------- nesting
@pytest.mark.parametrize("inner", [
    lambda o: S.ChainedScheduler([S.CosineAnnealingLR(o, 20), S.MultiStepLR(o, [3, 3, 8])]),
    lambda o: S.SequentialLR(o, [S.ExponentialLR(o, 0.9), S.StepLR(o, 2)], [3]),
], ids=["chained", "sequential"])
def test_a_composite_after_a_milestone_is_refused_when_built(inner):
    """torch 2.13 raises NotImplementedError at the milestone (mid-run);
    numadam raised AttributeError there, with SequentialLR's epoch already
    advanced."""
    opt = _opt()
    with pytest.raises(ValueError, match="at index 1 at its milestone"):
        S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=5), inner(opt)], [5])


def test_a_composite_first_in_a_sequence_runs_as_torchs():
    """Values from torch 2.13 (SGD, lr 0.1): ChainedScheduler of
    ConstantLR(0.5, 2) and ExponentialLR(0.5) until 3, then StepLR(2, 0.1)."""
    opt = _opt("sgd", (0.1,))
    sched = S.SequentialLR(opt, [S.ChainedScheduler([S.ConstantLR(opt, 0.5, 2),
                                                     S.ExponentialLR(opt, 0.5)]),
                                 S.StepLR(opt, 2, 0.1)], [3])
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.025, 0.0125, 0.0125, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002]


# ------------------------------------------------ corrupted checkpoints
def _edited(path, edit):
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    header = json.loads(str(members["__numadam__"]))
    edit(header["schedule"])
    members["__numadam__"] = np.array(json.dumps(header))
    np.savez(path, **members)


@pytest.mark.parametrize("spelling", [[], {}, ["inf"], 1, None])
def test_a_nonfinite_number_spelled_with_another_type_is_a_checkpoint_error(spelling, tmp_path):
    """{"__float__": []} raised TypeError (unhashable) out of numadam.load."""
    opt = _opt()
    sched = S.ReduceLROnPlateau(opt, mode="max")
    path = tmp_path / "c.npz"
    opt.save(path, schedule=sched)
    _edited(path, lambda s: s.update(best={"__float__": spelling}))
    with pytest.raises(numadam.CheckpointError, match="malformed number"):
        numadam.load(path)


def _onecycle(opt):
    return S.OneCycleLR(opt, [0.5, 0.2], total_steps=30, three_phase=True)


@pytest.mark.parametrize("make, edit, match", [
    (lambda o: S.StepLR(o, 3), lambda s: s["_last_lr"].__setitem__(1, -1.0), r"_last_lr'\]\[1\]"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 3, 2), lambda s: s["base_lrs"].__setitem__(0, -1),
     r"base_lrs'\]\[0\]"),
    (lambda o: S.ReduceLROnPlateau(o), lambda s: s["_last_lr"].__setitem__(0, -1e30), "_last_lr"),
    (_onecycle, lambda s: s["_group_values"][1].update(momentum=1.5), r"\['momentum'\]"),
    (_onecycle, lambda s: s["_group_values"][0].update(max_lr=-0.5), r"\['max_lr'\]"),
    (_onecycle, lambda s: s.update(last_epoch=31), r"last_epoch'\] \(31\) is past"),
], ids=["negative rate", "negative base", "plateau", "momentum", "max_lr", "past the end"])
def test_a_state_the_next_step_would_refuse_is_a_checkpoint_error(make, edit, match, tmp_path):
    """These loaded without complaint and the first step after raised (the
    optimizer's check of lr and beta1, OneCycleLR's of its step count)."""
    opt = _opt("adam")
    sched = make(opt)
    path = tmp_path / "c.npz"
    opt.save(path, schedule=sched)
    _edited(path, edit)
    fresh = _opt("adam")
    again = make(fresh)
    before = (again.state_dict(), [dict(g, params=None) for g in fresh.param_groups])
    with pytest.raises(numadam.CheckpointError, match=match):
        fresh.load(path, schedule=again)
    assert (again.state_dict(), [dict(g, params=None) for g in fresh.param_groups]) == before


def test_torchs_state_of_a_chained_scheduler_first_in_a_sequence_loads():
    """torch 2.13's state_dict() of SequentialLR([ChainedScheduler([StepLR(3,
    0.5)]), ExponentialLR(0.9)], [5]) after 4 steps (SGD, lr 0.1): its chained
    child carries _step_count, which numadam refused; the rates it continues
    with are torch's."""
    torch_state = {
        "_milestones": [5], "last_epoch": 4, "_last_lr": [0.05],
        "_schedulers": [
            {"_last_lr": [0.05], "_step_count": 0, "_is_initial": False, "_schedulers": [
                {"step_size": 3, "gamma": 0.5, "base_lrs": [0.1], "last_epoch": 4,
                 "_step_count": 6, "_is_initial": False,
                 "_get_lr_called_within_step": False, "_last_lr": [0.05]}]},
            {"gamma": 0.9, "base_lrs": [0.1], "last_epoch": -1, "_step_count": 1,
             "_is_initial": False, "_get_lr_called_within_step": False, "_last_lr": [0.1]}]}
    opt = _opt("sgd", (0.1,))
    sched = S.SequentialLR(opt, [S.ChainedScheduler([S.StepLR(opt, 3, 0.5)]),
                                 S.ExponentialLR(opt, 0.9)], [5])
    sched.load_state_dict(torch_state)
    seen = []
    for _ in range(3):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.1, 0.09000000000000001, 0.08100000000000002]
    torch_state["_schedulers"][0]["_step_count"] = -1
    with pytest.raises(ValueError, match=r"_step_count'\] must be >= 0, got -1"):
        sched.load_state_dict(torch_state)


# ----------------------------------------------------- negative rates
def test_linear_decay_to_zero_ends_at_zero_and_the_optimizer_steps():
    """torch 2.13's LinearLR reaches -1.3161459487157625e-19 here (its
    chained factor rounds below 0); numadam's SGD refused that rate at the
    last step of the schedule. The rates before are torch's."""
    opt = numadam.SGD([np.zeros(3)], lr=0.02031112126622885)
    sched = S.LinearLR(opt, start_factor=0.6712089869864022, end_factor=0.0, total_iters=23)
    seen = []
    for _ in range(25):
        opt.step([np.ones(3)])
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[20:] == [0.0011854788808402994, 0.0005927394404201496, 0.0, 0.0, 0.0]
    assert not np.signbit(seen[-1])


def test_linear_decay_to_zero_never_sets_a_negative_rate():
    rng = np.random.default_rng(5)
    for _ in range(200):
        opt = numadam.SGD([np.zeros(1)], lr=float(rng.uniform(1e-4, 1)))
        total = int(rng.integers(1, 200))
        sched = S.LinearLR(opt, start_factor=float(rng.uniform(0.01, 1)), end_factor=0.0,
                           total_iters=total)
        for _ in range(total + 1):
            opt.step([np.ones(1)])             # raised on a negative rate
            sched.step()
        # the last factor rounds to 0 or a little above it, as torch's
        assert 0.0 <= opt.param_groups[0]["lr"] < 1e-15


@pytest.mark.parametrize("three_phase", [False, True])
def test_onecycle_linear_ends_at_a_rate_the_optimizer_and_a_checkpoint_take(three_phase,
                                                                            tmp_path):
    """After total_steps steps torch 2.13's linear OneCycleLR extrapolates
    past min_lr to -0.001428165714285709 (two phases, max_lr 0.1, 100
    steps): numadam's SGD refused it, and so did opt.save."""
    opt = _opt("sgd", (0.1,))
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=100, anneal_strategy="linear",
                         three_phase=three_phase)
    for _ in range(100):
        opt.step([np.ones(3)])
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    opt.step([np.ones(3)])
    opt.save(tmp_path / "c.npz", schedule=sched)
