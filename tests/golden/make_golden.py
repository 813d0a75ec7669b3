"""Generate the golden vectors: inputs run through torch (CPU, fused).

Run with torch 2.13.0 installed (CPU build), from the repository root::

    python tests/golden/make_golden.py [PREFIX ...]

which (re)writes every file, or only those of the configurations and case
files whose names start with one of the prefixes (``sgd_``, ``cases_sgd_``).

Every file records ``torch_version``. torch runs on one thread so every element
goes through its vectorised path; on an x86-64 CPU with FMA (torch's AVX2 or
AVX512 kernels: the fused multiply-adds numadam reproduces).

Two kinds of files, each in float32 and float64, each carrying its inputs
(initial parameters and every gradient), so that the tests never depend on how
a NumPy version rounds the generator's arithmetic:

``<name>_<dtype>.npz``
    For every configuration of ``tests/optim_configs.py``: the initial and
    final parameters, the gradients of every step (``grads_<k>``, one row per
    step, zeros where the configuration withholds a gradient), the final
    state after ``STEPS`` steps (``final_state_<position>_<key>``, every key
    torch keeps, none where it keeps no state: SGD without momentum), and
    torch's state dict after ``RESUME_AT`` steps converted to NumPy (as a user
    would), to test resuming.

``cases_<rule>_<family>_<dtype>.npz`` (``cases_<family>_<dtype>.npz`` for Adam)
    Many small independent problems, one optimizer each, stacked: ``hyper``
    (a JSON list of the class and keywords of every case), ``initial``
    ``(cases, n)``, ``grads`` ``(cases, steps, n)``, the final ``param``,
    one array per state key of the rule named after torch's key (zeros where
    torch keeps none: ``max_exp_avg_sq`` without AMSGrad, ``momentum_buffer``
    without momentum) and, for rules that count steps, ``step``. Families:
    ``random_hyper`` (every hyperparameter and flag at random: no round
    numbers, so that every host-side rounding of torch's scalars shows) and
    ``nonfinite`` (NaN of both signs and infinities in the gradients).
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import optim_configs as oc  # noqa: E402

TORCH_VERSION = "2.13.0"
CASE_SIZE = 16            # torch's vector width in float32 (AVX512): its vectorised path only

# How torch runs each class: its fused CPU kernel wherever it has one;
# RMSprop, which has none, its single-tensor path.
FUSED = dict(fused=True)
IMPL = {"Adam": FUSED, "AdamW": FUSED, "SGD": FUSED, "Adagrad": FUSED,
        "RMSprop": dict(foreach=False)}


def run(name, config, dtype):
    index = oc.index(name)
    params = [torch.tensor(p) for p in oc.initial_params(index, dtype)]
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    cls = getattr(torch.optim, config["cls"])
    opt = cls(groups, **IMPL[config["cls"]], **config["kwargs"])
    out = {f"initial_{k}": p.numpy().copy() for k, p in enumerate(params)}
    for k, shape in enumerate(oc.SHAPES):
        out[f"grads_{k}"] = np.zeros((oc.STEPS,) + shape, dtype)
    order = oc.param_order(config)
    for step in range(1, oc.STEPS + 1):
        if step in config.get("schedule", {}):
            for group, lr in zip(opt.param_groups, config["schedule"][step]):
                group["lr"] = lr
        for k in order:
            if oc.has_gradient(config, step, k):
                grad = oc.gradient(index, step, k, oc.SHAPES[k], dtype)
                out[f"grads_{k}"][step - 1] = grad
                params[k].grad = torch.tensor(grad)
            else:
                params[k].grad = None
        opt.step()
        if step == oc.RESUME_AT:
            sd = opt.state_dict()
            out["resume_params"] = json.dumps(sd["param_groups"])
            for k in range(len(params)):
                out[f"resume_param_{k}"] = params[k].detach().numpy().copy()
            for pid, entry in sd["state"].items():
                for key, value in entry.items():
                    out[f"resume_state_{pid}_{key}"] = value.numpy().copy()
    for k, p in enumerate(params):
        out[f"final_{k}"] = p.detach().numpy().copy()
        position = order.index(k)
        for key, value in opt.state[p].items():
            out[f"final_state_{position}_{key}"] = value.numpy().copy()
    out["torch_version"] = torch.__version__
    np.savez_compressed(os.path.join(HERE, f"{name}_{dtype}.npz"), **out)


def random_adam(rng, index):
    """Hyperparameters drawn log-uniformly over their useful ranges.

    Weight decays up to 20 with learning rates up to 1 make ``lr * wd`` large,
    where a separately rounded ``1 - lr * wd`` differs from torch's most often.
    """
    wd = 0.0 if index % 8 == 7 else float(10 ** rng.uniform(-4, 1.3))
    eps = 0.0 if index % 16 == 5 else float(10 ** rng.uniform(-12, -3))
    return dict(cls=("Adam", "AdamW")[index % 2],
                lr=float(10 ** rng.uniform(-4, 0)),
                betas=(float(rng.uniform(0.0, 0.999)), float(1 - 10 ** rng.uniform(-5, -0.3))),
                eps=eps, weight_decay=wd,
                amsgrad=bool(index // 2 % 2), maximize=bool(index // 4 % 2))


def random_sgd(rng, index):
    """Random lr, momentum, dampening and weight decay; every flag at random.

    A momentum of zero (no state), a dampening of zero (``1 - dampening`` is
    exactly one) and no weight decay each come up regularly; Nesterov needs a
    momentum and no dampening (torch's rule).
    """
    momentum = 0.0 if index % 4 == 3 else float(rng.uniform(0.0, 0.999))
    nesterov = bool(momentum and index % 3 == 0)
    dampening = 0.0 if nesterov or index % 5 == 1 else float(rng.uniform(0.0, 1.0))
    wd = 0.0 if index % 8 == 6 else float(10 ** rng.uniform(-5, 1.3))
    return dict(cls="SGD", lr=float(10 ** rng.uniform(-4, 0)), momentum=momentum,
                dampening=dampening, weight_decay=wd, nesterov=nesterov,
                maximize=bool(index // 2 % 2))


def random_adagrad(rng, index):
    """Random lr, lr_decay, weight decay, eps and initial accumulator value.

    Decays up to 3 make ``1 + (step - 1) * lr_decay`` inexact, where a
    separately rounded product differs from torch's fused one.
    """
    return dict(cls="Adagrad", lr=float(10 ** rng.uniform(-4, 0)),
                lr_decay=0.0 if index % 4 == 3 else float(10 ** rng.uniform(-4, 0.5)),
                weight_decay=0.0 if index % 8 == 6 else float(10 ** rng.uniform(-5, 1.3)),
                initial_accumulator_value=(0.0 if index % 3 == 0
                                           else float(10 ** rng.uniform(-3, 1))),
                eps=0.0 if index % 16 == 5 else float(10 ** rng.uniform(-12, -2)),
                maximize=bool(index // 2 % 2))


def random_rmsprop(rng, index):
    """RMSprop's hyperparameters, log-uniform; ``alpha`` on both sides of 0.5
    (``lerp`` switches formula at a weight ``1 - alpha`` of 0.5)."""
    wd = 0.0 if index % 8 == 7 else float(10 ** rng.uniform(-4, 1.3))
    eps = 0.0 if index % 16 == 5 else float(10 ** rng.uniform(-12, -2))
    momentum = 0.0 if index // 8 % 2 else float(rng.uniform(0.0, 0.99))
    alpha = float(rng.uniform(0.0, 1.0) if index % 3 == 0 else 1 - 10 ** rng.uniform(-5, -0.3))
    return dict(cls="RMSprop", lr=float(10 ** rng.uniform(-4, -1)), alpha=alpha, eps=eps,
                weight_decay=wd, momentum=momentum,
                centered=bool(index % 2), maximize=bool(index // 2 % 2))


# rule -> file prefix, hyperparameter draw, torch's state keys (step aside),
# whether torch keeps a step count, and family -> (seed, cases, steps).
RULES = {
    "adam": dict(prefix="cases_", hyper=random_adam, counts_steps=True,
                 state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                 families={"random_hyper": (0, 160, 4), "nonfinite": (1, 16, 6)}),
    "sgd": dict(prefix="cases_sgd_", hyper=random_sgd, counts_steps=False,
                state=("momentum_buffer",),
                families={"random_hyper": (10, 112, 5), "nonfinite": (11, 16, 6)}),
    "adagrad": dict(prefix="cases_adagrad_", hyper=random_adagrad, counts_steps=True,
                    state=("sum",),
                    families={"random_hyper": (20, 96, 6), "nonfinite": (21, 16, 6)}),
    "rmsprop": dict(prefix="cases_rmsprop_", hyper=random_rmsprop, counts_steps=True,
                    state=("square_avg", "momentum_buffer", "grad_avg"),
                    families={"random_hyper": (2, 80, 8), "nonfinite": (3, 16, 8)}),
}


def case_inputs(family, rng, cases, steps, dtype):
    n = CASE_SIZE
    initial = rng.standard_normal((cases, n))
    grads = rng.standard_normal((cases, steps, n)) * 10 ** rng.uniform(-3, 2, (cases, steps, n))
    if family == "nonfinite":
        # A few elements per case get NaN (either sign) or +-Inf at some
        # steps: they poison the state in torch's own way.
        specials = np.array([np.nan, -np.nan, np.inf, -np.inf])
        for c in range(cases):
            for step in range(1, steps):
                where = rng.choice(n, size=3, replace=False)
                grads[c, step, where] = rng.choice(specials, size=3)
    return initial.astype(dtype), grads.astype(dtype)


def run_cases(rule, family, dtype):
    spec = RULES[rule]
    seed, cases, steps = spec["families"][family]
    rng = np.random.default_rng(seed)
    hypers = [spec["hyper"](rng, c) for c in range(cases)]
    initial, grads = case_inputs(family, rng, cases, steps, dtype)
    out = dict(hyper=json.dumps(hypers), initial=initial, grads=grads)
    finals = {key: np.zeros_like(initial) for key in ("param",) + spec["state"]}
    counts = np.zeros(cases, np.int64)
    with np.errstate(invalid="ignore"):
        for c, hyper in enumerate(hypers):
            hyper = dict(hyper)
            param = torch.tensor(initial[c])
            cls = hyper.pop("cls")
            opt = getattr(torch.optim, cls)([param], **IMPL[cls], **hyper)
            for step in range(steps):
                param.grad = torch.tensor(grads[c, step])
                opt.step()
            finals["param"][c] = param.detach().numpy()
            state = opt.state[param]
            assert set(state) <= set(spec["state"]) | {"step"}, sorted(state)
            for key in spec["state"]:
                if key in state:
                    finals[key][c] = state[key].numpy()
            if spec["counts_steps"]:
                counts[c] = int(state["step"].item())
    out.update(finals)
    if spec["counts_steps"]:
        out["step"] = counts
    out["torch_version"] = torch.__version__
    np.savez_compressed(os.path.join(HERE, f"{spec['prefix']}{family}_{dtype}.npz"), **out)


def main(prefixes=()):
    torch.set_num_threads(1)
    assert torch.__version__.split("+")[0] == TORCH_VERSION, torch.__version__

    def wanted(stem):
        return not prefixes or stem.startswith(tuple(prefixes))

    for name, config in oc.CONFIGS.items():
        for dtype in oc.DTYPES:
            if wanted(name):
                run(name, config, dtype)
                print("wrote", name, dtype)
    for rule, spec in RULES.items():
        for family in spec["families"]:
            for dtype in oc.DTYPES:
                if wanted(spec["prefix"] + family):
                    run_cases(rule, family, dtype)
                    print("wrote cases", rule, family, dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
