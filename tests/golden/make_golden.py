"""Generate the golden vectors: inputs run through torch (CPU, fused).

Run with torch 2.13.0 installed (CPU build), from the repository root::

    python tests/golden/make_golden.py

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
    ``(cases, n)``, ``grads`` ``(cases, steps, n)``, and the final ``param``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (zeros without AMSGrad)
    and ``step``. Families: ``random_hyper`` (random lr, betas, eps and
    weight decay, Adam and AdamW, AMSGrad and maximize at random: no round
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
CASES = {"random_hyper": (160, 4), "nonfinite": (16, 6)}    # family: (cases, steps)


def run(index, name, config, dtype):
    params = [torch.tensor(p) for p in oc.initial_params(index, dtype)]
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    cls = getattr(torch.optim, config["cls"])
    opt = cls(groups, fused=True, **config["kwargs"])
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


def case_inputs(family, rng, cases, steps, dtype):
    n = CASE_SIZE
    initial = rng.standard_normal((cases, n))
    grads = rng.standard_normal((cases, steps, n)) * 10 ** rng.uniform(-3, 2, (cases, steps, n))
    if family == "nonfinite":
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
    hypers = [random_hyper(rng, c) for c in range(cases)]
    initial, grads = case_inputs(family, rng, cases, steps, dtype)
    out = dict(hyper=json.dumps(hypers), initial=initial, grads=grads)
    finals = {key: np.zeros_like(initial)
              for key in ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    counts = np.zeros(cases, np.int64)
    with np.errstate(invalid="ignore"):
        for c, hyper in enumerate(hypers):
            hyper = dict(hyper)
            param = torch.tensor(initial[c])
            opt = getattr(torch.optim, hyper.pop("cls"))([param], fused=True, **hyper)
            for step in range(steps):
                param.grad = torch.tensor(grads[c, step])
                opt.step()
            finals["param"][c] = param.detach().numpy()
            state = opt.state[param]
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    finals[key][c] = state[key].numpy()
            counts[c] = int(state["step"].item())
    out.update(finals, step=counts, torch_version=torch.__version__)
    np.savez_compressed(os.path.join(HERE, f"cases_{family}_{dtype}.npz"), **out)


def main():
    torch.set_num_threads(1)
    assert torch.__version__.split("+")[0] == TORCH_VERSION, torch.__version__
    for index, (name, config) in enumerate(oc.CONFIGS.items()):
        for dtype in oc.DTYPES:
            run(index, name, config, dtype)
            print("wrote", name, dtype)
    for seed, family in enumerate(CASES):
        for dtype in oc.DTYPES:
            run_cases(family, dtype, seed)
            print("wrote cases", family, dtype)


if __name__ == "__main__":
    main()
