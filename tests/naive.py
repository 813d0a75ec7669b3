"""A plain-NumPy reference of the update, written for clarity, not speed.

It follows the textbook equations (torch's documentation of Adam/AdamW) in
float64 with temporaries everywhere; the kernels are compared with it within
a tolerance, and with torch's golden vectors bit for bit.
"""

import numpy as np


class NaiveAdam:
    def __init__(self, params, groups, cls):
        """``params``: list of float64 arrays; ``groups``: list of (indices, hyper dict)."""
        self.params = params
        self.groups = groups
        self.decoupled = cls == "AdamW"
        self.state = {}

    def step(self, grads):
        for indices, h in self.groups:
            beta1, beta2 = h["betas"]
            for k in indices:
                if grads[k] is None:
                    continue
                p = self.params[k]
                g = np.array(grads[k], dtype=np.float64)
                s = self.state.setdefault(k, dict(step=0, m=np.zeros_like(p),
                                                  v=np.zeros_like(p), vmax=np.zeros_like(p)))
                s["step"] += 1
                t = s["step"]
                if h["maximize"]:
                    g = -g
                if h["weight_decay"]:
                    if self.decoupled:
                        p *= 1 - h["lr"] * h["weight_decay"]
                    else:
                        g = g + h["weight_decay"] * p
                s["m"] = beta1 * s["m"] + (1 - beta1) * g
                s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
                if h["amsgrad"]:
                    s["vmax"] = np.maximum(s["vmax"], s["v"])
                    second = s["vmax"]
                else:
                    second = s["v"]
                # torch's documented form: eps is added after the bias correction.
                denom = np.sqrt(second) / np.sqrt(1 - beta2 ** t) + h["eps"]
                p -= h["lr"] / (1 - beta1 ** t) * s["m"] / denom
