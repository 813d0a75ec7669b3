"""Generate the golden learning-rate sequences of torch's schedulers.

Run with torch 2.13.0 installed, from the repository root::

    python tests/golden/make_schedules.py          # (re)write schedules.npz
    python tests/golden/make_schedules.py --check  # regenerate in memory and
                                                   # compare with the committed file

``schedules.npz`` holds ``configs`` (a JSON list: the optimizer, the groups'
rates, the schedule as a nested spec, the number of steps and, for
``ReduceLROnPlateau``, the metric of every step) and, per configuration
``k``, ``lr_<k>`` (``(steps + 1, groups)``: the rates after construction and
after every ``step()``) and, for ``OneCycleLR`` with momentum cycling,
``momentum_<k>`` (beta1 or SGD's momentum, same shape), and ``torch_state_<k>``:
torch's ``state_dict()`` after ``steps // 2`` steps as JSON (a ``Counter``
written as ``{"__counter__": [[milestone, count], ...]}``), which numadam's
schedules load. The arguments of
half of the configurations are drawn from a seeded RNG, so no round number
hides a rounding. The tests build the same schedules with :func:`build`
(imported from here; it imports no torch) and compare bit for bit.
"""

import json
import os
from collections import Counter
import random
import sys
import warnings

import numpy as np

TORCH_VERSION = "2.13.0"
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules.npz")
STEPS = 300


def _lambda(spec):
    """The callable a configuration names: plain Python, same on both sides."""
    kind, a = spec
    if kind == "pow":
        return lambda epoch: a ** epoch
    if kind == "inv":
        return lambda epoch: 1.0 / (1.0 + a * epoch)
    raise ValueError(spec)


def build(module, optimizer, spec):
    """The schedule ``spec`` describes, from ``module`` (torch's
    ``lr_scheduler`` or ``numadam.schedules``), on ``optimizer``."""
    cls = getattr(module, spec["type"])
    kwargs = dict(spec.get("kwargs", {}))
    if "lr_lambda" in kwargs:
        fns = kwargs["lr_lambda"]
        kwargs["lr_lambda"] = ([_lambda(f) for f in fns] if isinstance(fns[0], list)
                               else _lambda(fns))
    if spec["type"] == "SequentialLR":
        children = [build(module, optimizer, child) for child in spec["children"]]
        return cls(optimizer, children, **kwargs)
    if spec["type"] == "ChainedScheduler":
        return cls([build(module, optimizer, child) for child in spec["children"]])
    return cls(optimizer, **kwargs)


def _configs():
    rng = random.Random(20261202)
    u = rng.uniform
    configs = []

    def add(name, spec, lrs=(0.1,), opt="adam", steps=STEPS, metrics=None):
        config = {"name": name, "opt": opt, "lrs": list(lrs), "sched": spec, "steps": steps}
        if metrics is not None:
            config["metrics"] = metrics
        configs.append(config)

    def s(type_, **kwargs):
        return {"type": type_, "kwargs": kwargs}

    two = (0.1, 0.03)
    add("step", s("StepLR", step_size=30, gamma=0.5), two)
    add("multistep", s("MultiStepLR", milestones=[10, 50, 50, 120], gamma=0.3), two)
    add("exponential", s("ExponentialLR", gamma=0.99), two)
    add("cosine", s("CosineAnnealingLR", T_max=70, eta_min=1e-4), two)
    add("cosine_zero_floor", s("CosineAnnealingLR", T_max=100))
    add("linear", s("LinearLR", start_factor=0.25, end_factor=1.0, total_iters=40), two)
    add("linear_down", s("LinearLR", start_factor=1.0, end_factor=0.0, total_iters=90))
    add("polynomial", s("PolynomialLR", total_iters=150, power=2.0), two)
    add("constant", s("ConstantLR", factor=0.5, total_iters=20), two)
    add("onecycle", s("OneCycleLR", max_lr=[0.5, 0.2], total_steps=STEPS), two)
    add("onecycle_sgd_linear_3phase", s("OneCycleLR", max_lr=0.4, total_steps=250,
                                        anneal_strategy="linear", three_phase=True),
        two, opt="sgd", steps=250)
    add("onecycle_no_momentum", s("OneCycleLR", max_lr=0.3, epochs=10, steps_per_epoch=25,
                                  cycle_momentum=False), steps=250)
    add("warm_restarts", s("CosineAnnealingWarmRestarts", T_0=10, T_mult=2, eta_min=1e-3), two)
    add("warm_restarts_mult1", s("CosineAnnealingWarmRestarts", T_0=17))
    add("lambda", s("LambdaLR", lr_lambda=["pow", 0.98]), two)
    add("lambda_per_group", s("LambdaLR", lr_lambda=[["pow", 0.97], ["inv", 0.05]]), two)
    add("multiplicative", s("MultiplicativeLR", lr_lambda=["pow", 0.9999]), two)
    add("sequential_warmup_cosine", {
        "type": "SequentialLR", "kwargs": {"milestones": [20]},
        "children": [s("LinearLR", start_factor=0.1, total_iters=20),
                     s("CosineAnnealingLR", T_max=280)]}, two)
    add("sequential_three", {
        "type": "SequentialLR", "kwargs": {"milestones": [15, 100]},
        "children": [s("ConstantLR", factor=0.3, total_iters=15),
                     s("ExponentialLR", gamma=0.97), s("StepLR", step_size=25, gamma=0.5)]},
        two)
    add("sequential_lambda", {
        "type": "SequentialLR", "kwargs": {"milestones": [40]},
        "children": [s("LambdaLR", lr_lambda=["inv", 0.1]),
                     s("MultiStepLR", milestones=[60, 90], gamma=0.2)]})
    add("chained", {"type": "ChainedScheduler", "children": [
        s("ConstantLR", factor=0.2, total_iters=10), s("ExponentialLR", gamma=0.995)]}, two)
    add("chained_cosine_step", {"type": "ChainedScheduler", "children": [
        s("CosineAnnealingLR", T_max=50, eta_min=0.0), s("StepLR", step_size=40, gamma=0.7)]})
    metrics = [1.0 / (1 + i // 7) + 0.001 * (i % 3) for i in range(STEPS)]
    add("plateau_min", s("ReduceLROnPlateau", patience=5, factor=0.5, cooldown=3,
                         min_lr=1e-4), two, metrics=metrics)
    add("plateau_max_abs", s("ReduceLROnPlateau", mode="max", threshold_mode="abs",
                             threshold=0.01, patience=3, factor=0.3, min_lr=[1e-3, 1e-5]),
        two, metrics=[-m for m in metrics])

    # random arguments, random rates, up to three groups
    for k in range(4):
        lrs = [u(1e-4, 1.0) for _ in range(rng.randint(1, 3))]
        add(f"random_step_{k}", s("StepLR", step_size=rng.randint(1, 60), gamma=u(0.05, 1)), lrs)
        ms = sorted(rng.randint(0, STEPS) for _ in range(rng.randint(1, 6)))
        add(f"random_multistep_{k}", s("MultiStepLR", milestones=ms, gamma=u(0.05, 1)), lrs)
        add(f"random_exponential_{k}", s("ExponentialLR", gamma=u(0.95, 1.0)), lrs)
        add(f"random_cosine_{k}", s("CosineAnnealingLR", T_max=rng.randint(1, 200),
                                    eta_min=u(0, 1e-3)), lrs)
        add(f"random_linear_{k}", s("LinearLR", start_factor=u(0.01, 1), end_factor=u(0, 1),
                                    total_iters=rng.randint(1, 200)), lrs)
        add(f"random_polynomial_{k}", s("PolynomialLR", total_iters=rng.randint(1, 300),
                                        power=u(0.1, 4)), lrs)
        add(f"random_constant_{k}", s("ConstantLR", factor=u(0.01, 1),
                                      total_iters=rng.randint(0, 100)), lrs)
        total = rng.randint(50, STEPS)
        add(f"random_onecycle_{k}", s(
            "OneCycleLR", max_lr=[u(0.01, 2) for _ in lrs], total_steps=total,
            pct_start=u(0.05, 0.6), anneal_strategy=rng.choice(["cos", "linear"]),
            base_momentum=u(0.5, 0.85), max_momentum=u(0.86, 0.99), div_factor=u(2, 50),
            final_div_factor=u(10, 1e5), three_phase=rng.random() < 0.5),
            lrs, opt=rng.choice(["adam", "sgd"]), steps=total)
        add(f"random_warm_restarts_{k}", s("CosineAnnealingWarmRestarts",
                                           T_0=rng.randint(1, 40), T_mult=rng.randint(1, 3),
                                           eta_min=u(0, 1e-3)), lrs)
        add(f"random_sequential_{k}", {
            "type": "SequentialLR", "kwargs": {"milestones": [rng.randint(1, 100)]},
            "children": [s("LinearLR", start_factor=u(0.01, 1), total_iters=rng.randint(1, 100)),
                         s("CosineAnnealingLR", T_max=rng.randint(1, 300),
                           eta_min=u(0, 1e-4))]}, lrs)
        add(f"random_chained_{k}", {"type": "ChainedScheduler", "children": [
            s("MultiStepLR", milestones=[rng.randint(1, 200)], gamma=u(0.1, 1)),
            s("ExponentialLR", gamma=u(0.98, 1))]}, lrs)
        walk = [u(0.5, 2.0)]
        for _ in range(STEPS - 1):       # a noisy decrease with long flat stretches
            walk.append(walk[-1] * (u(0.97, 1.0) if rng.random() < 0.3 else 1.0))
        add(f"random_plateau_{k}", s(
            "ReduceLROnPlateau", mode="min", factor=u(0.1, 0.9), patience=rng.randint(0, 12),
            threshold=u(0, 1e-2), threshold_mode=rng.choice(["rel", "abs"]),
            cooldown=rng.randint(0, 5), min_lr=u(0, 1e-3), eps=u(0, 1e-6)), lrs, metrics=walk)
    return configs


def _plain(value):
    """torch's state dict as JSON data."""
    if isinstance(value, Counter):
        return {"__counter__": sorted([int(m), int(c)] for m, c in value.items())}
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    assert value is None or isinstance(value, (bool, int, float, str)), value
    return value


def torch_state(text):
    """A state dict :func:`_plain` wrote, as torch's ``state_dict()`` held it."""
    def counters(obj):
        return Counter(dict(obj["__counter__"])) if "__counter__" in obj else obj
    return json.loads(text, object_hook=counters)


def _sequences(configs):
    import torch
    from torch.optim import lr_scheduler

    if torch.__version__.split("+")[0] != TORCH_VERSION:
        sys.exit(f"torch {TORCH_VERSION} is required, found {torch.__version__}")
    out = {}
    for k, config in enumerate(configs):
        params = [torch.zeros(2, requires_grad=True) for _ in config["lrs"]]
        groups = [{"params": [p], "lr": lr} for p, lr in zip(params, config["lrs"])]
        opt = (torch.optim.Adam(groups) if config["opt"] == "adam"
               else torch.optim.SGD(groups, momentum=0.9))
        sched = build(lr_scheduler, opt, config["sched"])
        momentum = config["sched"]["type"] == "OneCycleLR" and \
            config["sched"]["kwargs"].get("cycle_momentum", True)

        def record():
            lrs.append([g["lr"] for g in opt.param_groups])
            if momentum:
                moms.append([g["betas"][0] if "betas" in g else g["momentum"]
                             for g in opt.param_groups])
        lrs, moms = [], []
        record()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(config["steps"]):
                if i == config["steps"] // 2:
                    out[f"torch_state_{k}"] = np.array(json.dumps(_plain(sched.state_dict())))
                opt.step()
                if "metrics" in config:
                    sched.step(config["metrics"][i])
                else:
                    sched.step()
                record()
        out[f"lr_{k}"] = np.array(lrs, dtype=np.float64)
        assert all(type(v) is float or type(v) is int for row in lrs for v in row)
        if momentum:
            out[f"momentum_{k}"] = np.array(moms, dtype=np.float64)
    return out


def main():
    configs = _configs()
    arrays = {"configs": np.array(json.dumps(configs)),
              "torch_version": np.array(TORCH_VERSION), **_sequences(configs)}
    if sys.argv[1:] == ["--check"]:
        with np.load(PATH) as saved:
            same = set(saved.files) == set(arrays) and all(
                np.array_equal(saved[key], value) for key, value in arrays.items())
        print("identical" if same else "DIFFERENT")
        sys.exit(0 if same else 1)
    np.savez_compressed(PATH, **arrays)
    print(f"wrote {PATH}: {len(configs)} configurations")


if __name__ == "__main__":
    main()
