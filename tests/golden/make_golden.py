"""Generate the golden vectors: inputs run through torch on the CPU.

Run with torch 2.13.0 installed (CPU build), from the repository root::

    python tests/golden/make_golden.py [NAME_PREFIX ...]

With prefixes, only the files whose name starts with one of them are written
(``rmsprop`` and ``cases_rmsprop`` regenerate RMSprop's alone); the others
keep their bytes (``np.savez_compressed`` stamps the time into every file).
Each class runs the implementation ``IMPL`` names: Adam and AdamW their fused
kernel, RMSprop (which has none) its single-tensor path.

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
    state after ``STEPS`` steps, and torch's state dict after ``RESUME_AT``
    steps converted to NumPy (as a user would), to test resuming.

``cases_<family>_<dtype>.npz``
    Many small independent problems, one optimizer each, stacked: ``hyper``
    (a JSON list of the class and keywords of every case), ``initial``
    ``(cases, n)``, ``grads`` ``(cases, steps, n)``, the final ``param`` and
    ``step``, and every state tensor torch keeps under its own key
    (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; ``square_avg``,
    ``momentum_buffer``, ``grad_avg``), zeros in the cases that lack it.
    Families: ``random_hyper`` (random lr, betas, eps and weight decay, Adam
    and AdamW, AMSGrad and maximize at random: no round numbers, so that every
    host-side rounding of torch's scalars shows) and ``nonfinite`` (NaN of
    both signs and infinities in the gradients); ``rmsprop_random_hyper`` and
    ``rmsprop_nonfinite`` do the same for RMSprop (random lr, alpha, eps,
    weight decay and momentum, centered and maximize at random).
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
CASES = {"random_hyper": (160, 4), "nonfinite": (16, 6),     # family: (cases, steps)
         "rmsprop_random_hyper": (80, 8), "rmsprop_nonfinite": (16, 8)}

# The torch implementation each class runs; classes not listed run fused=True.
IMPL = {"RMSprop": dict(foreach=False)}


def make(cls, params, **kwargs):
    """``torch.optim.<cls>`` over ``params`` with the implementation of ``IMPL``."""
    return getattr(torch.optim, cls)(params, **IMPL.get(cls, dict(fused=True)), **kwargs)


def run(index, name, config, dtype):
    params = [torch.tensor(p) for p in oc.initial_params(index, dtype)]
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    opt = make(config["cls"], groups, **config["kwargs"])
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


def random_hyper(rng, index):
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


def random_hyper_rmsprop(rng, index):
    """RMSprop's hyperparameters, log-uniform; ``alpha`` on both sides of 0.5
    (``lerp`` switches formula at a weight ``1 - alpha`` of 0.5)."""
    wd = 0.0 if index % 8 == 7 else float(10 ** rng.uniform(-4, 1.3))
    eps = 0.0 if index % 16 == 5 else float(10 ** rng.uniform(-12, -2))
    momentum = 0.0 if index // 8 % 2 else float(rng.uniform(0.0, 0.99))
    alpha = float(rng.uniform(0.0, 1.0) if index % 3 == 0 else 1 - 10 ** rng.uniform(-5, -0.3))
    return dict(cls="RMSprop", lr=float(10 ** rng.uniform(-4, -1)), alpha=alpha, eps=eps,
                weight_decay=wd, momentum=momentum,
                centered=bool(index % 2), maximize=bool(index // 2 % 2))


def case_inputs(family, rng, cases, steps, dtype):
    n = CASE_SIZE
    initial = rng.standard_normal((cases, n))
    grads = rng.standard_normal((cases, steps, n)) * 10 ** rng.uniform(-3, 2, (cases, steps, n))
    if family.endswith("nonfinite"):
        # A few elements per case get NaN (either sign) or +-Inf at some
        # steps: they poison m, v and AMSGrad's maximum in torch's own way.
        specials = np.array([np.nan, -np.nan, np.inf, -np.inf])
        for c in range(cases):
            for step in range(1, steps):
                where = rng.choice(n, size=3, replace=False)
                grads[c, step, where] = rng.choice(specials, size=3)
    return initial.astype(dtype), grads.astype(dtype)


def run_cases(family, dtype, seed):
    cases, steps = CASES[family]
    rng = np.random.default_rng(seed)
    draw = random_hyper_rmsprop if family.startswith("rmsprop_") else random_hyper
    hypers = [draw(rng, c) for c in range(cases)]
    initial, grads = case_inputs(family, rng, cases, steps, dtype)
    out = dict(hyper=json.dumps(hypers), initial=initial, grads=grads)
    finals = dict(param=np.zeros_like(initial))
    counts = np.zeros(cases, np.int64)
    with np.errstate(invalid="ignore"):
        for c, hyper in enumerate(hypers):
            hyper = dict(hyper)
            param = torch.tensor(initial[c])
            opt = make(hyper.pop("cls"), [param], **hyper)
            for step in range(steps):
                param.grad = torch.tensor(grads[c, step])
                opt.step()
            finals["param"][c] = param.detach().numpy()
            for key, value in opt.state[param].items():
                if key == "step":
                    counts[c] = int(value.item())
                else:
                    finals.setdefault(key, np.zeros_like(initial))[c] = value.numpy()
    out.update(finals, step=counts, torch_version=torch.__version__)
    np.savez_compressed(os.path.join(HERE, f"cases_{family}_{dtype}.npz"), **out)


def main(prefixes):
    torch.set_num_threads(1)
    assert torch.__version__.split("+")[0] == TORCH_VERSION, torch.__version__

    def wanted(name):
        return not prefixes or name.startswith(tuple(prefixes))

    for name, config in oc.ALL_CONFIGS.items():
        for dtype in oc.DTYPES:
            if wanted(name):
                run(oc.config_seed(name), name, config, dtype)
                print("wrote", name, dtype)
    for seed, family in enumerate(CASES):
        for dtype in oc.DTYPES:
            if wanted(f"cases_{family}"):
                run_cases(family, dtype, seed)
                print("wrote cases", family, dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
