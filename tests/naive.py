"""A plain-NumPy reference of the update, written for clarity, not speed.

It follows the textbook equations (torch's documentation of each optimizer) in
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


# torch's documented defaults, written out here rather than read from numadam
# so that a wrong default in numadam shows as a disagreement.
DEFAULTS = {
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                  amsgrad=False, maximize=False),
    "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10, maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False, maximize=False),
}


class _Naive:
    """Shared driver: ``params`` float64 arrays, ``groups`` (indices, hyper) pairs;
    a parameter whose gradient is None keeps its value and its state."""

    def __init__(self, params, groups, cls=None):
        self.params = params
        self.groups = groups
        self.state = {}

    def step(self, grads):
        for indices, h in self.groups:
            for k in indices:
                if grads[k] is not None:
                    g = np.array(grads[k], dtype=np.float64)
                    if h["maximize"]:
                        g = -g
                    if h["weight_decay"]:
                        g = g + h["weight_decay"] * self.params[k]
                    self.update(self.params[k], g, h, k)


class NaiveSGD(_Naive):
    """torch.optim.SGD's documented algorithm."""

    def update(self, p, g, h, k):
        if h["momentum"]:
            s = self.state.get(k)
            if s is None:
                buf = self.state[k] = g.copy()
            else:
                buf = self.state[k] = h["momentum"] * s + (1 - h["dampening"]) * g
            g = g + h["momentum"] * buf if h["nesterov"] else buf
        p -= h["lr"] * g


class NaiveAdagrad(_Naive):
    """torch.optim.Adagrad's documented algorithm (state from the start)."""

    def update(self, p, g, h, k):
        s = self.state.setdefault(k, dict(step=0, sum=np.full_like(
            p, h["initial_accumulator_value"])))
        s["step"] += 1
        clr = h["lr"] / (1 + (s["step"] - 1) * h["lr_decay"])
        s["sum"] = s["sum"] + g * g
        p -= clr * g / (np.sqrt(s["sum"]) + h["eps"])


class NaiveRMSprop(_Naive):
    """torch.optim.RMSprop's documented algorithm."""

    def update(self, p, g, h, k):
        zeros = np.zeros_like(p)
        s = self.state.setdefault(k, dict(step=0, sa=zeros, ga=zeros, buf=zeros))
        s["step"] += 1
        alpha = h["alpha"]
        s["sa"] = alpha * s["sa"] + (1 - alpha) * g * g
        if h["centered"]:
            s["ga"] = alpha * s["ga"] + (1 - alpha) * g
            avg = np.sqrt(s["sa"] - s["ga"] ** 2) + h["eps"]
        else:
            avg = np.sqrt(s["sa"]) + h["eps"]
        if h["momentum"] > 0:
            s["buf"] = h["momentum"] * s["buf"] + g / avg
            p -= h["lr"] * s["buf"]
        else:
            p -= h["lr"] * g / avg


NAIVE = {"Adam": NaiveAdam, "AdamW": NaiveAdam, "SGD": NaiveSGD, "Adagrad": NaiveAdagrad,
         "RMSprop": NaiveRMSprop}
