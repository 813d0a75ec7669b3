"""Generate the golden vectors: the registry run through torch (CPU, fused).

Run with torch 2.13.0 installed (CPU build), from the repository root::

    python tests/golden/make_golden.py

For every configuration of ``tests/optim_configs.py`` and both dtypes it writes
``tests/golden/<name>_<dtype>.npz`` with the initial parameters, the final
parameters and state after ``STEPS`` steps, and torch's state dict after
``RESUME_AT`` steps converted to NumPy (as a user would), to test resuming.
torch runs on one thread so every element goes through its vectorised path.
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import optim_configs as oc  # noqa: E402


def run(index, name, config, dtype):
    params = [torch.tensor(p) for p in oc.initial_params(index, dtype)]
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    cls = getattr(torch.optim, config["cls"])
    opt = cls(groups, fused=True, **config["kwargs"])
    out = {f"initial_{k}": p.numpy().copy() for k, p in enumerate(params)}
    order = oc.param_order(config)
    for step in range(1, oc.STEPS + 1):
        if step in config.get("schedule", {}):
            for group, lr in zip(opt.param_groups, config["schedule"][step]):
                group["lr"] = lr
        for k in order:
            params[k].grad = (torch.tensor(oc.gradient(index, step, k, oc.SHAPES[k], dtype))
                              if oc.has_gradient(config, step, k) else None)
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


def main():
    torch.set_num_threads(1)
    assert torch.__version__.startswith("2.13.0"), torch.__version__
    for index, (name, config) in enumerate(oc.CONFIGS.items()):
        for dtype in oc.DTYPES:
            run(index, name, config, dtype)
            print("wrote", name, dtype)


if __name__ == "__main__":
    main()
