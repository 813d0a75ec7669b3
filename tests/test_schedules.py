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
_spec.loader.exec_module(make_schedules)      # torch is imported only to generate

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


def run_config(config):
    opt = optimizer(config["opt"], config["lrs"])
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


def torch_rates(k):
    """Golden rates ``k`` as numadam sets them: torch's, bit for bit, except
    that a negative rate is 0 (numadam's optimizers refuse one; the module's
    notes). torch's are negative only where its linear OneCycleLR
    extrapolates past min_lr at step total_steps, the last row."""
    rates = GOLDEN[f"lr_{k}"]
    negative = rates < 0
    assert not negative[:-1].any()
    return np.where(negative, 0.0, rates)


def test_golden_file_is_torch_2_13():
    assert str(GOLDEN["torch_version"][()]) == "2.13.0"
    assert len(CONFIGS) >= 70 and sum(c["name"].startswith("random") for c in CONFIGS) >= 40


@pytest.mark.parametrize("k", range(len(CONFIGS)), ids=[c["name"] for c in CONFIGS])
def test_lr_sequence_is_torchs_bit_for_bit(k):
    config = CONFIGS[k]
    lrs, moms = run_config(config)
    expected = torch_rates(k)
    assert lrs.shape == expected.shape
    np.testing.assert_array_equal(lrs.view(np.uint64), expected.view(np.uint64))
    if f"momentum_{k}" in GOLDEN:
        np.testing.assert_array_equal(moms.view(np.uint64),
                                      GOLDEN[f"momentum_{k}"].view(np.uint64))


@pytest.mark.parametrize("k", range(len(CONFIGS)), ids=[c["name"] for c in CONFIGS])
def test_every_golden_sequence_resumes_through_a_checkpoint(k, tmp_path):
    """Stop each golden configuration at three steps, save optimizer and
    schedule to one file, load into fresh objects: the rest of torch's
    sequence follows exactly."""
    config = CONFIGS[k]
    expected = torch_rates(k)
    steps = config["steps"]
    for stop in sorted({0, steps // 2 + k % 7, steps - 1}):
        opt = optimizer(config["opt"], config["lrs"])
        sched = make_schedules.build(S, opt, config["sched"])
        for i in range(stop):
            sched.step(config["metrics"][i]) if "metrics" in config else sched.step()
        opt.save(tmp_path / "c.npz", schedule=sched)
        opt = optimizer(config["opt"], config["lrs"])
        sched = make_schedules.build(S, opt, config["sched"])
        opt.load(tmp_path / "c.npz", schedule=sched)
        lrs = [[g["lr"] for g in opt.param_groups]]
        for i in range(stop, steps):
            sched.step(config["metrics"][i]) if "metrics" in config else sched.step()
            lrs.append([g["lr"] for g in opt.param_groups])
        np.testing.assert_array_equal(np.array(lrs).view(np.uint64),
                                      expected[stop:].view(np.uint64))


@pytest.mark.parametrize("k", range(len(CONFIGS)), ids=[c["name"] for c in CONFIGS])
def test_torchs_state_dict_loads_and_continues_torchs_sequence(k):
    """A port mid-run: torch's scheduler state (recorded by the generator)
    loaded into a numadam schedule built as for a new run."""
    config = CONFIGS[k]
    stop = config["steps"] // 2
    opt = optimizer(config["opt"], config["lrs"])
    sched = make_schedules.build(S, opt, config["sched"])
    sched.load_state_dict(make_schedules.torch_state(str(GOLDEN[f"torch_state_{k}"][()])))
    lrs = [[g["lr"] for g in opt.param_groups]]
    for i in range(stop, config["steps"]):
        sched.step(config["metrics"][i]) if "metrics" in config else sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    np.testing.assert_array_equal(np.array(lrs).view(np.uint64),
                                  torch_rates(k)[stop:].view(np.uint64))


# ------------------------------------------------------------- resume
N_PARAM = 10


def _two_groups(kind, lrs=(0.05, 0.02)):
    """Group 0 holds a float32 array, group 1 a float64 one."""
    dtypes = (np.float32, np.float64)
    params = [np.linspace(-1, 1, N_PARAM, dtype=dtypes[k % 2]) * (k + 1)
              for k in range(len(lrs))]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if kind == "adam":
        return numadam.Adam(groups, betas=(0.9, 0.99)), params
    return numadam.SGD(groups, momentum=0.9), params


def _gradient(params, i):
    """Deterministic float32 gradients that change from step to step."""
    return [p - p.dtype.type(0.3) + p.dtype.type(0.01 * (i % 5)) for p in params]


class Decay:
    """A callable object: its __dict__ is part of LambdaLR's state, as in torch."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return self.rate ** epoch


def _metric(i):
    """A loss with plateaus: improves every 6 steps, flat (noisy) between."""
    return 1.0 / (1 + i // 6) + 1e-6 * (i % 2)


# name -> (optimizer, schedule factory, steps, stopping points)
RESUME = {
    "StepLR": ("adam", lambda o: S.StepLR(o, step_size=7, gamma=0.5), 30, [0, 1, 7, 12, 29]),
    "MultiStepLR": ("sgd", lambda o: S.MultiStepLR(o, [5, 9, 9], 0.3), 20, [0, 1, 5, 9, 15]),
    "ExponentialLR": ("adam", lambda o: S.ExponentialLR(o, 0.9), 15, [0, 1, 8]),
    "CosineAnnealingLR": ("adam", lambda o: S.CosineAnnealingLR(o, 10, 1e-3), 30,
                          [0, 1, 5, 10, 11, 25]),
    "LinearLR": ("sgd", lambda o: S.LinearLR(o, 0.2, 1.0, 8), 15, [0, 1, 4, 8, 12]),
    "PolynomialLR": ("adam", lambda o: S.PolynomialLR(o, 10, 1.7), 15, [0, 1, 5, 10, 13]),
    "ConstantLR": ("adam", lambda o: S.ConstantLR(o, 0.4, 5), 12, [0, 1, 5, 8]),
    "OneCycleLR": ("adam", lambda o: S.OneCycleLR(o, [0.3, 0.1], total_steps=20), 20,
                   [0, 1, 6, 10, 19, 20]),
    "OneCycleLR_sgd_three_phase": ("sgd", lambda o: S.OneCycleLR(
        o, 0.2, total_steps=24, three_phase=True, anneal_strategy="linear"), 24,
        [0, 1, 7, 14, 23]),
    "CosineAnnealingWarmRestarts": ("adam", lambda o: S.CosineAnnealingWarmRestarts(
        o, T_0=4, T_mult=2, eta_min=1e-3), 30, [0, 1, 4, 5, 12, 29]),
    "LambdaLR": ("sgd", lambda o: S.LambdaLR(o, [lambda e: 0.9 ** e, Decay(0.8)]), 12,
                 [0, 1, 6]),
    "MultiplicativeLR": ("adam", lambda o: S.MultiplicativeLR(o, Decay(0.95)), 12, [0, 1, 6]),
    "SequentialLR": ("adam", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=10)], [5]), 25,
        [0, 1, 4, 5, 6, 15, 24]),
    "SequentialLR_three": ("sgd", lambda o: S.SequentialLR(
        o, [S.ConstantLR(o, 0.5, 3), S.ExponentialLR(o, 0.8),
            S.OneCycleLR(o, 0.4, total_steps=10, cycle_momentum=False)], [3, 8]), 18,
        [0, 2, 3, 8, 9, 17]),
    "ChainedScheduler": ("adam", lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, 0.3, 4), S.ExponentialLR(o, 0.9), S.CosineAnnealingLR(o, 6)]), 20,
        [0, 1, 4, 6, 13]),
    "ReduceLROnPlateau": ("sgd", lambda o: S.ReduceLROnPlateau(
        o, factor=0.5, patience=2, cooldown=1, min_lr=[1e-4, 1e-3]), 40, [0, 1, 8, 20, 39]),
    "WarmupCosineLR": ("adam", lambda o: S.WarmupCosineLR(o, 5, 20, min_lr_ratio=0.1), 25,
                       [0, 1, 5, 12, 20, 24]),
    "WarmupStableDecayLR": ("adam", lambda o: S.WarmupStableDecayLR(o, 3, 5, 6), 18,
                            [0, 1, 3, 8, 11, 14, 17]),
}


def _step(sched, i):
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(_metric(i))
    else:
        sched.step()


def _train(kind, factory, steps, stop=None, path=None, order="load"):
    """Run ``steps`` steps; at ``stop`` save optimizer and schedule into one
    file and continue on fresh objects built as a user would. Returns the lr
    of every step and the parameters."""
    opt, params = _two_groups(kind)
    sched = factory(opt)
    seen = []
    for i in range(steps):
        if i == stop:
            opt.save(path, schedule=sched)
            values = [p.copy() for p in params]       # the model, saved by the user
            del opt, sched
            opt, params = _two_groups(kind)
            for p, v in zip(params, values):
                p[...] = v
            if order == "load":
                sched = factory(opt)
                opt.load(path, schedule=sched)
            else:
                # torch's trap (pytorch issues 29697, 65342): the optimizer's
                # state first, the schedule built after it (which resets the
                # rates), then the schedule's state.
                checkpoint = numadam.load(path)
                opt.load_state_dict(checkpoint)
                sched = factory(opt)
                sched.load_state_dict(checkpoint["schedule"])
        seen.append([g["lr"] for g in opt.param_groups] + momentum_of(opt))
        opt.step(_gradient(params, i))
        _step(sched, i)
    return seen, params, sched.state_dict()


@pytest.mark.parametrize("name", RESUME)
def test_resume_is_exact_at_every_stopping_point(name, tmp_path):
    kind, factory, steps, stops = RESUME[name]
    seen, params, final = _train(kind, factory, steps)
    assert len({tuple(s) for s in seen}) > 1         # the schedule does change the rate
    for stop in stops:
        for order in ("load", "optimizer first"):
            got, got_params, got_final = _train(kind, factory, steps, stop,
                                                tmp_path / f"{stop}.npz", order)
            assert got == seen, (stop, order)
            for a, b in zip(got_params, params):
                assert a.tobytes() == b.tobytes(), (stop, order)
            assert got_final == final


def test_a_fresh_schedule_without_the_optimizers_state_resumes_the_rates(tmp_path):
    """pytorch issue 29697: MultiStepLR loaded into a fresh optimizer kept the
    fresh rate and never decayed it; here the schedule's state carries it."""
    opt, _ = _two_groups("sgd", (1.0,))
    sched = S.MultiStepLR(opt, milestones=[5], gamma=0.1)
    for _ in range(10):
        sched.step()
    fresh, _ = _two_groups("sgd", (1.0,))
    again = S.MultiStepLR(fresh, milestones=[5], gamma=0.1)
    again.load_state_dict(sched.state_dict())
    for _ in range(5):
        sched.step()
        again.step()
        assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.1 * 1.0


# ----------------------------------------------------------- lr_table
@pytest.mark.parametrize("name", [n for n in RESUME if n != "ReduceLROnPlateau"])
def test_lr_table_equals_a_loop_of_steps(name):
    kind, factory, steps, _ = RESUME[name]
    opt, _ = _two_groups(kind)
    sched = factory(opt)
    loop = []
    for i in range(steps):
        loop.append([g["lr"] for g in opt.param_groups])
        sched.step()
    table_opt, _ = _two_groups(kind)
    table_sched = factory(table_opt)
    table = table_sched.lr_table(steps)
    assert table.dtype == np.float64 and table.shape == (steps, 2)
    np.testing.assert_array_equal(table.view(np.uint64), np.array(loop).view(np.uint64))
    assert table_sched.state_dict() == sched.state_dict()
    assert [g["lr"] for g in table_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    assert momentum_of(table_opt) == momentum_of(opt)
    assert table_sched.lr_table(0).shape == (0, 2)


def test_lr_table_past_onecycles_end_changes_nothing():
    opt, _ = _two_groups("adam")
    sched = S.OneCycleLR(opt, 0.3, total_steps=10)
    sched.lr_table(4)
    before = sched.state_dict(), [dict(g, params=None) for g in opt.param_groups]
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        sched.lr_table(7)
    assert (sched.state_dict(), [dict(g, params=None) for g in opt.param_groups]) == before
    assert sched.lr_table(6).shape == (6, 2)


def test_plateau_has_no_lr_table():
    opt, _ = _two_groups("adam")
    with pytest.raises(TypeError, match="metric"):
        S.ReduceLROnPlateau(opt).lr_table(3)


# ------------------------------------------------------------ minimize
def _quadratic(x):
    return float(0.5 * np.sum((x - 1.0) ** 2)), x - 1.0


@pytest.mark.parametrize("method, factory, metric", [
    ("adam", lambda o: S.CosineAnnealingLR(o, T_max=30, eta_min=1e-3), False),
    ("sgd", lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=5),
                                         S.ExponentialLR(o, 0.97)], [5]), False),
    ("rmsprop", lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2, threshold=0.1,
                                                    threshold_mode="abs"),
     True),
])
def test_minimize_steps_the_schedule_after_each_step(method, factory, metric):
    """The iterates equal a hand-written loop: optimizer step, then schedule
    step (ReduceLROnPlateau with the loss of that iteration)."""
    x0 = np.linspace(-2, 3, 7)
    result = numadam.minimize(_quadratic, x0, jac=True, method=method,
                              options={"lr": 0.2, "maxiter": 40, "gtol": 0.0,
                                       "schedule": factory})
    x = x0.copy()
    opt = getattr(numadam, {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop"}[method])(
        [x], lr=0.2)
    sched = factory(opt)
    best, best_f = None, math.inf
    for i in range(41):
        f, g = _quadratic(x)
        if f < best_f:
            best, best_f = x.copy(), f
        if i == 40:
            break
        opt.step([g])
        sched.step(f) if metric else sched.step()
    assert result.nit == 40
    assert result.x.tobytes() == best.tobytes() and result.fun == best_f
    # the schedule did change the rate the run used
    assert opt.param_groups[0]["lr"] != 0.2


def test_minimize_refuses_a_bad_schedule_before_calling_fun():
    def fun(x):
        raise AssertionError("fun must not be called")
    other, _ = _two_groups("adam")
    for bad, error in [(3, TypeError), (lambda o: None, TypeError),
                       (lambda o: S.StepLR(other, 2), TypeError),
                       (lambda o: S.StepLR(o, 0), ValueError)]:
        with pytest.raises(error, match="schedule|step_size"):
            numadam.minimize(fun, np.zeros(3), jac=True, options={"schedule": bad})


# ---------------------------------------------------------- validation
def _opt():
    return _two_groups("adam")[0]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, match", [
    (lambda o: S.StepLR(o, 0), "step_size must be >= 1, got 0"),
    (lambda o: S.StepLR(o, 2.5), "step_size must be an integer, got 2.5"),
    (lambda o: S.StepLR(o, 3, gamma=NAN), "gamma .* got nan"),
    (lambda o: S.StepLR(o, 3, gamma=INF), "gamma .* got inf"),
    (lambda o: S.StepLR(o, 3, gamma=-0.5), "gamma .* got -0.5"),
    (lambda o: S.StepLR(o, 3, last_epoch=-2), "last_epoch must be >= -1, got -2"),
    (lambda o: S.MultiStepLR(o, [3, -1]), r"milestones\[1\] must be >= 0, got -1"),
    (lambda o: S.MultiStepLR(o, 5), "milestones must be a list"),
    (lambda o: S.ExponentialLR(o, NAN), "gamma .* got nan"),
    (lambda o: S.ConstantLR(o, factor=1.5), "factor .* got 1.5"),
    (lambda o: S.ConstantLR(o, factor=0), "factor .* got 0"),
    (lambda o: S.LinearLR(o, start_factor=0), "start_factor .* got 0"),
    (lambda o: S.LinearLR(o, end_factor=1.2), "end_factor .* got 1.2"),
    (lambda o: S.LinearLR(o, total_iters=0), "total_iters must be >= 1, got 0"),
    (lambda o: S.PolynomialLR(o, total_iters=0), "total_iters must be >= 1, got 0"),
    (lambda o: S.PolynomialLR(o, power=NAN), "power .* got nan"),
    (lambda o: S.CosineAnnealingLR(o, 0), "T_max must be >= 1, got 0"),
    (lambda o: S.CosineAnnealingLR(o, 10, eta_min=INF), "eta_min .* got inf"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 0), "T_0 must be >= 1, got 0"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 5, T_mult=0), "T_mult must be >= 1, got 0"),
    (lambda o: S.OneCycleLR(o, 0.1), "either total_steps OR"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=0), "positive integer total_steps, but got 0"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, pct_start=1.5), "pct_start, but got 1.5"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="cosine"), "'cosine'"),
    (lambda o: S.OneCycleLR(o, [0.1], total_steps=10), "max_lr has 1 values"),
    (lambda o: S.OneCycleLR(o, NAN, total_steps=10), "max_lr .* got nan"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, div_factor=0), "div_factor .* got 0"),
    (lambda o: S.LambdaLR(o, [abs]), "Expected 2 lr_lambdas, but got 1"),
    (lambda o: S.SequentialLR(o, [], []), "at least one scheduler"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], []), "one more than"),
    (lambda o: S.SequentialLR(o, [S.ReduceLROnPlateau(o)], []), "ReduceLROnPlateau"),
    (lambda o: S.SequentialLR(o, [S.StepLR(_opt(), 2)], []), "same optimizer"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)], [], last_epoch=3), "last_epoch=3"),
    (lambda o: S.ChainedScheduler([]), "at least one scheduler"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "factor .* got 1.0"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), "mode 'up' is unknown"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="x"), "threshold mode 'x'"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), "expected 2 min_lrs, got 1"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), "patience must be >= 0, got -1"),
    (lambda o: S.WarmupCosineLR(o, 10, 5), r"warmup_steps \(10\) must be <= total_steps"),
    (lambda o: S.WarmupCosineLR(o, 1, 5, min_lr_ratio=2), "min_lr_ratio .* got 2"),
    (lambda o: S.WarmupStableDecayLR(o, 1, 2, 3, decay="exp"), "decay must be one of"),
])
def test_bad_arguments_are_refused_naming_the_value(make, match):
    opt = _opt()
    before = [dict(g, params=None) for g in opt.param_groups]
    with pytest.raises(ValueError, match=match):
        make(opt)
    if match not in ("one more than", "last_epoch=3"):   # (their children did start)
        assert [dict(g, params=None) for g in opt.param_groups] == before


def test_onecycle_momentum_needs_momentum_or_betas_and_not_an_optimizer():
    class Bare:
        param_groups = [{"lr": 0.1}]
    with pytest.raises(ValueError, match="momentum or beta1"):
        S.OneCycleLR(Bare(), 0.1, total_steps=5)
    S.OneCycleLR(Bare(), 0.1, total_steps=5, cycle_momentum=False).step()
    with pytest.raises(TypeError, match="is not an optimizer"):
        S.StepLR(object(), 3)
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(_opt(), 3, last_epoch=4)


@pytest.mark.parametrize("kind", ["adam", "sgd", "adagrad", "rmsprop", "adamw"])
def test_every_optimizer_takes_a_schedule_and_its_checkpoint(kind, tmp_path):
    """The group entries schedules add (initial_lr, OneCycleLR's) pass through
    state dicts and checkpoint files of every rule."""
    x = np.ones(4, np.float32)
    cls = {"adam": numadam.Adam, "sgd": numadam.SGD, "adagrad": numadam.Adagrad,
           "rmsprop": numadam.RMSprop, "adamw": numadam.AdamW}[kind]
    opt = cls([x], lr=0.1, **({"momentum": 0.5} if kind in ("sgd", "rmsprop") else {}))
    cycle = kind != "adagrad"
    sched = S.OneCycleLR(opt, 0.5, total_steps=8, cycle_momentum=cycle)
    for _ in range(3):
        opt.step([x * np.float32(0.5)])
        sched.step()
    opt.save(tmp_path / "c.npz", schedule=sched)
    y = x.copy()
    fresh = cls([y], lr=0.1, **({"momentum": 0.5} if kind in ("sgd", "rmsprop") else {}))
    again = S.OneCycleLR(fresh, 0.5, total_steps=8, cycle_momentum=cycle)
    fresh.load(tmp_path / "c.npz", schedule=again)
    assert {k: v for k, v in fresh.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    for _ in range(5):
        opt.step([x * np.float32(0.5)])
        fresh.step([y * np.float32(0.5)])
        sched.step()
        again.step()
    assert x.tobytes() == y.tobytes()


# ---------------------------------------------------------- checkpoint
def test_nonfinite_numbers_round_trip_and_callables_are_refused(tmp_path):
    opt = _opt()
    sched = S.ReduceLROnPlateau(opt, mode="max")
    path = tmp_path / "c.npz"
    opt.save(path, schedule=sched)
    assert numadam.load(path)["schedule"]["best"] == -INF
    numadam.save(opt.state_dict(), path, schedule={"a": [NAN, INF, {"b": -INF}], "n": None})
    loaded = numadam.load(path)["schedule"]
    assert math.isnan(loaded["a"][0]) and loaded["a"][1:] == [INF, {"b": -INF}]
    lam = S.LambdaLR(opt, Decay(0.5))
    lam.lr_lambdas[0].fn = print                     # state torch would pickle
    other = tmp_path / "other.npz"
    for bad, match in [({"f": print}, "cannot be stored"), (lam, "cannot be stored"),
                       ({1: 2}, "keys"), ({"__float__": "inf"}, "keys"), (3, "schedule must")]:
        with pytest.raises(TypeError, match=match):
            numadam.save(opt.state_dict(), other, schedule=bad)
        assert not other.exists()
    with pytest.raises(ValueError, match="another optimizer"):
        _opt().save(other, schedule=sched)


def _nested(depth):
    value = [1]
    for _ in range(depth):
        value = [value]
    return value


def _edit_schedule(path, edit):
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    header = json.loads(str(members["__numadam__"]))
    text = edit(header)
    members["__numadam__"] = np.array(text if isinstance(text, str) else json.dumps(header))
    np.savez(path, **members)


@pytest.mark.parametrize("edit, match, at", [
    (lambda h: h["schedule"]["best"].update({"__float__": "huge"}), "malformed number", "load"),
    (lambda h: json.dumps(h).replace('{"__float__": "inf"}', "Infinity"), "bare", "load"),
    (lambda h: h.update(schedule=[1, 2]), "not a state dict", "load"),
    (lambda h: h.update(schedule={"a": _nested(40)}), "nested deeper", "load"),
    (lambda h: h["schedule"].pop("patience"), "entries", "opt.load"),
    (lambda h: h["schedule"].update(factor=2.0), "factor", "opt.load"),
    (lambda h: h["schedule"].update(min_lrs=[0.0]), "min_lrs", "opt.load"),
    (lambda h: h["schedule"].update(_last_lr=["x", 0.1]), "_last_lr", "opt.load"),
    (lambda h: h.update(schedule=None), "holds no schedule", "opt.load"),
])
def test_a_corrupted_schedule_state_is_a_checkpoint_error(tmp_path, edit, match, at):
    opt = _opt()
    sched = S.ReduceLROnPlateau(opt)
    path = tmp_path / "c.npz"
    opt.save(path, schedule=sched)
    _edit_schedule(path, edit)
    fresh = _opt()
    again = S.ReduceLROnPlateau(fresh, patience=3)
    before = again.state_dict()
    with pytest.raises(numadam.CheckpointError, match=match):
        if at == "load":
            numadam.load(path)
        else:
            fresh.load(path, schedule=again)
    assert again.state_dict() == before


def test_another_schedules_state_is_a_checkpoint_error(tmp_path):
    opt = _opt()
    path = tmp_path / "c.npz"
    opt.save(path, schedule=S.StepLR(opt, 3))
    fresh = _opt()
    with pytest.raises(numadam.CheckpointError, match="does not fit ExponentialLR"):
        fresh.load(path, schedule=S.ExponentialLR(fresh, 0.9))
    fresh.load(path)                                   # the optimizer alone: fine


def test_version_2_files_still_load(tmp_path):
    opt = _opt()
    opt.step(_gradient(opt.param_groups[0]["params"] + opt.param_groups[1]["params"], 0))
    path = tmp_path / "c.npz"
    opt.save(path)

    def to_v2(header):
        assert header["version"] == 4 and header.pop("schedule") is None
        assert header.pop("state_format") == "full"
        header["version"] = 2
    _edit_schedule(path, to_v2)
    loaded = numadam.load(path)
    assert "schedule" not in loaded and loaded["state"][0]["step"] == 1
    _edit_schedule(path, lambda h: h.update(schedule=None))
    with pytest.raises(numadam.CheckpointError, match="version 2 has"):
        numadam.load(path)


def test_import_numadam_does_not_load_schedules():
    import subprocess
    import sys
    code = ("import sys, numadam; assert 'numadam.schedules' not in sys.modules; "
            "numadam.schedules.StepLR; assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------- the warmup shapes
def _hf_cosine_with_min_lr(t, warmup, total, min_lr_rate, num_cycles=0.5):
    """transformers' _get_cosine_schedule_with_warmup_lr_lambda (optimization.py)."""
    if t < warmup:
        return float(t) / float(max(1, warmup))
    progress = float(t - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def _hf_wsd(t, warmup, stable, decay, decay_type, min_lr_ratio, num_cycles=0.5):
    """transformers' _get_wsd_scheduler_lambda with warmup_type="linear"."""
    if t < warmup:
        factor = float(t) / float(max(1, warmup))
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    if t < warmup + stable:
        return 1.0
    if t < warmup + stable + decay:
        progress = float(t - warmup - stable) / float(max(1, decay))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        else:
            factor = 1.0 - math.sqrt(progress)
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    return min_lr_ratio


@pytest.mark.parametrize("warmup, total, floor", [(10, 100, 0.0), (0, 37, 0.13), (7, 7, 0.5),
                                                  (23, 311, 0.0371)])
def test_warmup_cosine_is_transformers_formula_held_at_the_floor(warmup, total, floor):
    opt = _opt()
    table = S.WarmupCosineLR(opt, warmup, total, min_lr_ratio=floor).lr_table(total + 20)
    base = [g["initial_lr"] for g in opt.param_groups]
    expected = [[b * (_hf_cosine_with_min_lr(t, warmup, total, floor) if t <= total else floor)
                 for b in base] for t in range(total + 20)]
    np.testing.assert_array_equal(table.view(np.uint64), np.array(expected).view(np.uint64))


@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("warmup, stable, steps, floor", [(5, 10, 20, 0.0), (0, 3, 17, 0.21),
                                                          (13, 0, 1, 0.05)])
def test_warmup_stable_decay_is_transformers_formula(decay, warmup, stable, steps, floor):
    opt = _opt()
    n = warmup + stable + steps + 10
    table = S.WarmupStableDecayLR(opt, warmup, stable, steps, floor, decay).lr_table(n)
    base = [g["initial_lr"] for g in opt.param_groups]
    expected = [[b * _hf_wsd(t, warmup, stable, steps, decay, floor) for b in base]
                for t in range(n)]
    np.testing.assert_array_equal(table.view(np.uint64), np.array(expected).view(np.uint64))


def test_a_sharded_optimizer_follows_a_schedule_as_its_plain_class_does():
    """Sharded optimizers have torch-like param_groups too (one process here)."""
    pytest.importorskip("mpi4py")       # the floor environment installs no MPI
    from numadam.distributed import ShardedAdam
    x, y = np.linspace(-1, 1, 8, dtype=np.float32), np.linspace(-1, 1, 8, dtype=np.float32)
    plain, sharded = numadam.Adam([x], lr=0.1), ShardedAdam([y], lr=0.1)
    one, two = (S.OneCycleLR(o, 0.5, total_steps=12) for o in (plain, sharded))
    for i in range(12):
        plain.step([x - np.float32(0.25)])
        sharded.step([y - np.float32(0.25)])
        one.step()
        two.step()
        assert sharded.param_groups[0]["betas"] == plain.param_groups[0]["betas"]
    assert one.state_dict() == two.state_dict()
    assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("maxiter", [21, 20.5, math.inf])
def test_minimize_refuses_a_one_cycle_schedule_shorter_than_the_run(maxiter):
    def fun(x):
        return float(x @ x), 2 * x

    def factory(opt):
        return S.OneCycleLR(opt, 0.1, total_steps=20)

    with pytest.raises(ValueError, match="OneCycleLR with 20 steps left"):
        numadam.minimize(fun, np.ones(3), jac=True,
                         options=dict(maxiter=maxiter, gtol=0, schedule=factory))
    result = numadam.minimize(fun, np.ones(3), jac=True,
                              options=dict(maxiter=20, gtol=0, schedule=factory))
    assert result.nit == 20
