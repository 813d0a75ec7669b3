"""Differential fuzz of numadam.schedules against torch 2.13's lr_scheduler.

Run from the repository root with torch installed (never needed by the
suite)::

    python scripts/fuzz_schedules.py [cases] [seed]

Each case draws a scheduler and its arguments (ordinary values, edge values
such as 0, 1, negatives, NaN, inf, bools, ints for floats, duplicated and
unsorted milestones), one to three groups with random rates, an Adam or SGD
optimizer, and for ``ReduceLROnPlateau`` a metric stream with NaNs and
plateaus. Both libraries build the schedule and step it; a case is a
discrepancy when one raises and the other does not (numadam's documented
stricter refusals excepted), or when the rates or the cycled momentum differ
in any bit (numadam's 0 for torch's negative rates excepted). Each case is
also stopped at a random step and continued twice: from numadam's state dict
in a fresh optimizer and schedule, and from torch's state dict handed to
numadam mid-run; both must continue the uninterrupted sequence bit for bit.
Discrepancies are printed with the spec that reproduces them, then a tally.
Expected output besides "same" and "both refuse": numadam's documented
stricter refusals, torch refusing NumPy integers numadam takes, and states
numadam refuses to load because their rates overflowed to inf or went
negative (huge gamma, tiny factors, CosineAnnealingLR chained with other
decays), rates numadam's optimizers would refuse to step with.
"""

import random
import sys
import traceback
import warnings

import numpy as np
import torch
from torch.optim import lr_scheduler as TS

import numadam
from numadam import schedules as NS


def edge_float(rng, lo, hi):
    r = rng.random()
    if r < 0.55:
        return rng.uniform(lo, hi)
    return rng.choice([0.0, 1.0, -0.5, 2.0, 0, 1, lo, hi, float("nan"), float("inf"),
                       -float("inf"), 1e-300, 5e-324, 1e300, True, np.float64(0.3),
                       np.int64(1)])


def edge_int(rng, lo, hi):
    r = rng.random()
    if r < 0.7:
        return rng.randint(lo, hi)
    return rng.choice([0, 1, -1, 2, True, 3.0, np.int64(4), 10 ** 6])


def draw(rng, n):
    f, i = edge_float, edge_int
    kind = rng.choice(["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
                       "LinearLR", "PolynomialLR", "ConstantLR", "OneCycleLR",
                       "CosineAnnealingWarmRestarts", "LambdaLR", "MultiplicativeLR",
                       "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler"])
    if kind == "StepLR":
        return {"type": kind, "kwargs": {"step_size": i(rng, 1, 20), "gamma": f(rng, 0, 1.2)}}
    if kind == "MultiStepLR":
        ms = [i(rng, 0, 40) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.5:
            ms = sorted(ms)
        return {"type": kind, "kwargs": {"milestones": ms, "gamma": f(rng, 0, 1.2)}}
    if kind == "ExponentialLR":
        return {"type": kind, "kwargs": {"gamma": f(rng, 0.8, 1.05)}}
    if kind == "CosineAnnealingLR":
        return {"type": kind, "kwargs": {"T_max": i(rng, 1, 30), "eta_min": f(rng, 0, 0.01)}}
    if kind == "LinearLR":
        return {"type": kind, "kwargs": {"start_factor": f(rng, 0, 1), "end_factor": f(rng, 0, 1),
                                         "total_iters": i(rng, 0, 30)}}
    if kind == "PolynomialLR":
        return {"type": kind, "kwargs": {"total_iters": i(rng, 0, 30), "power": f(rng, 0, 3)}}
    if kind == "ConstantLR":
        return {"type": kind, "kwargs": {"factor": f(rng, 0, 1), "total_iters": i(rng, 0, 30)}}
    if kind == "OneCycleLR":
        kw = {"max_lr": [f(rng, 0, 2) for _ in range(n)] if rng.random() < 0.5
              else f(rng, 0, 2),
              "pct_start": f(rng, 0, 1), "anneal_strategy": rng.choice(["cos", "linear"]),
              "cycle_momentum": rng.random() < 0.7, "div_factor": f(rng, 1, 50),
              "final_div_factor": f(rng, 1, 1e4), "three_phase": rng.random() < 0.5,
              "base_momentum": f(rng, 0.5, 0.9), "max_momentum": f(rng, 0.85, 0.99)}
        if rng.random() < 0.8:
            kw["total_steps"] = i(rng, 1, 60)
        else:
            kw["epochs"], kw["steps_per_epoch"] = i(rng, 1, 8), i(rng, 1, 8)
        return {"type": kind, "kwargs": kw}
    if kind == "CosineAnnealingWarmRestarts":
        return {"type": kind, "kwargs": {"T_0": i(rng, 1, 10), "T_mult": i(rng, 1, 3),
                                         "eta_min": f(rng, 0, 0.01)}}
    if kind in ("LambdaLR", "MultiplicativeLR"):
        a = rng.uniform(0.8, 1.0)
        return {"type": kind, "kwargs": {"lr_lambda": ["pow", a]}}
    if kind == "ReduceLROnPlateau":
        return {"type": kind, "kwargs": {
            "mode": rng.choice(["min", "max"]), "factor": f(rng, 0, 1),
            "patience": i(rng, 0, 5), "threshold": f(rng, 0, 0.05),
            "threshold_mode": rng.choice(["rel", "abs"]), "cooldown": i(rng, 0, 4),
            "min_lr": [f(rng, 0, 0.01) for _ in range(n)] if rng.random() < 0.4
            else f(rng, 0, 0.01), "eps": f(rng, 0, 1e-3)}}
    children = [draw_simple(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:              # a composite first (torch restarts none)
        children[0] = {"type": "ChainedScheduler",
                       "children": [draw_simple(rng) for _ in range(rng.randint(1, 2))]}
    if kind == "SequentialLR":
        ms = sorted(rng.randint(0, 30) for _ in range(len(children) - 1))
        return {"type": kind, "kwargs": {"milestones": ms}, "children": children}
    return {"type": kind, "children": children}


def draw_simple(rng):
    while True:
        spec = draw(rng, 1)
        if spec["type"] not in ("ReduceLROnPlateau", "OneCycleLR", "SequentialLR",
                                "ChainedScheduler"):
            return spec


def lam(spec):
    a = spec[1]
    return lambda epoch: a ** epoch


def build(module, opt, spec):
    cls = getattr(module, spec["type"])
    kw = dict(spec.get("kwargs", {}))
    if "lr_lambda" in kw:
        kw["lr_lambda"] = lam(kw["lr_lambda"])
    if spec["type"] == "SequentialLR":
        return cls(opt, [build(module, opt, c) for c in spec["children"]], **kw)
    if spec["type"] == "ChainedScheduler":
        return cls([build(module, opt, c) for c in spec["children"]])
    return cls(opt, **kw)


def momentum(opt):
    return [g["betas"][0] if "betas" in g else g.get("momentum", 0.0) for g in opt.param_groups]


def run(module, make_opt, spec, steps, metrics, stop=None, resume=None):
    """The rates and momenta after construction and each step; at step
    ``stop`` the schedule's state dict is handed to ``resume(state)``, which
    returns the optimizer and schedule to continue with."""
    opt = make_opt()
    out = []
    try:
        sched = build(module, opt, spec)
    except Exception as e:                      # noqa: BLE001
        return ("raise", type(e).__name__, str(e)[:200]), out
    out.append(([g["lr"] for g in opt.param_groups], momentum(opt)))
    for k in range(steps):
        if k == stop:
            opt, sched = resume(sched.state_dict())
        try:
            if metrics is not None:
                sched.step(metrics[k])
            else:
                sched.step()
        except Exception as e:                  # noqa: BLE001
            return ("raise-step", k, type(e).__name__, str(e)[:200]), out
        out.append(([g["lr"] for g in opt.param_groups], momentum(opt)))
    return ("ok",), out


def same(a, b):
    """Bit for bit, except that numadam sets 0 where torch's rate is
    negative (``b``: torch's, where it is one of the two)."""
    if len(a) != len(b):
        return False
    for (la, ma), (lb, mb) in zip(a, b):
        for x, y in list(zip(la, lb)) + list(zip(ma, mb)):
            try:
                if x < 0 or y < 0:
                    if not (x == 0 or y == 0):
                        return False
                elif np.float64(x).view(np.uint64) != np.float64(y).view(np.uint64):
                    return False
            except Exception:                   # noqa: BLE001
                return False
    return True


def case(rng):
    n = rng.randint(1, 3)
    lrs = [rng.uniform(1e-4, 1.0) for _ in range(n)]
    opt_kind = rng.choice(["adam", "sgd", "sgd0"])
    spec = draw(rng, n)
    steps = rng.randint(1, 70)
    metrics = None
    if spec["type"] == "ReduceLROnPlateau":
        metrics, v = [], rng.uniform(-2, 2)
        for _ in range(steps):
            r = rng.random()
            if r < 0.1:
                metrics.append(float("nan"))
            elif r < 0.15:
                metrics.append(rng.choice([float("inf"), -float("inf")]))
            else:
                v = v * rng.choice([1.0, 1.0, 0.99, 1.01, 0.9])
                metrics.append(v)

    def torch_opt():
        ps = [torch.zeros(1, requires_grad=True) for _ in lrs]
        groups = [{"params": [p], "lr": lr} for p, lr in zip(ps, lrs)]
        if opt_kind == "adam":
            return torch.optim.Adam(groups)
        return torch.optim.SGD(groups, momentum=0.9 if opt_kind == "sgd" else 0.0)

    def numadam_opt():
        ps = [np.zeros(1) for _ in lrs]
        groups = [{"params": [p], "lr": lr} for p, lr in zip(ps, lrs)]
        if opt_kind == "adam":
            return numadam.Adam(groups)
        return numadam.SGD(groups, momentum=0.9 if opt_kind == "sgd" else 0.0)

    stop = rng.randint(0, steps - 1)

    def fresh(state, from_torch=False):
        # a fresh optimizer and schedule, the schedule built first or last
        opt = numadam_opt()
        if from_torch:
            state = {k: v for k, v in state.items()}
        sched = build(NS, opt, spec)
        sched.load_state_dict(state)
        return opt, sched

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = run(TS, torch_opt, spec, steps, metrics)
        try:
            m = run(NS, numadam_opt, spec, steps, metrics)
            if m[0][0] == "ok" and t[0][0] == "ok":
                r = run(NS, numadam_opt, spec, steps, metrics, stop, fresh)
                if not same(r[1], m[1]):
                    m = (("RESUME DIFFERS at", stop, r[0]), [])
                h = run(TS, torch_opt, spec, steps, metrics, stop,
                        lambda state: fresh(state, True))
                if h[0][0] != "ok" or not same(h[1], t[1]):
                    m = (("TORCH STATE HANDOFF DIFFERS at", stop, h[0]), [])
        except Exception:                       # noqa: BLE001
            m = (("crash", traceback.format_exc()), [])
    return dict(spec=spec, lrs=lrs, opt=opt_kind, steps=steps, metrics=metrics), t, m


def main():
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = random.Random(seed)
    tally = {}
    for c in range(cases):
        info, (ts, tv), (ms, mv) = case(rng)
        if ts[0] == "ok" and ms[0] == "ok":
            verdict = "same" if same(tv, mv) else "VALUES DIFFER"
        elif ts[0] == "ok":
            verdict = f"numadam refuses: {ms}"
        elif ms[0] == "ok":
            verdict = f"TORCH REFUSES, numadam accepts: {ts}"
        else:
            verdict = "both refuse" if ts[0] == ms[0] else f"refuse differently: {ts} / {ms}"
            if ms[0] != "crash" and ms[-2] not in ("ValueError", "TypeError", "KeyError"):
                verdict = f"numadam raises {ms}"
        key = verdict if verdict in ("same", "both refuse") else "other"
        tally[key] = tally.get(key, 0) + 1
        if key == "other":
            print(c, verdict, info, "\n   torch:", ts, "\n")
    print(tally)


if __name__ == "__main__":
    main()
