"""Reduce the rate when a metric stops improving: :class:`ReduceLROnPlateau`."""

import math
import numbers

import numpy as np

from numadam.schedules.base import LRScheduler, _check_optimizer, _int, _lrs, _rates, _real


class ReduceLROnPlateau(LRScheduler):
    """Reduce the rate by ``factor`` when a metric stops improving (torch's
    ``ReduceLROnPlateau``); ``step(metric)`` after each evaluation."""

    _hyper = ("factor", "min_lrs", "default_min_lr", "patience", "cooldown", "eps", "mode",
              "threshold", "threshold_mode", "best", "cooldown_counter", "num_bad_epochs",
              "mode_worse")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        self.optimizer = _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"expected {n} min_lrs, got {len(min_lr)}")
            default, min_lrs = None, list(min_lr)
        else:
            default, min_lrs = min_lr, [min_lr] * n
        worse = math.inf if mode == "min" else -math.inf
        self.__dict__.update(self._check(
            factor=factor, min_lrs=min_lrs, default_min_lr=default, patience=patience,
            cooldown=cooldown, eps=eps, mode=mode, threshold=threshold,
            threshold_mode=threshold_mode, best=worse, cooldown_counter=0, num_bad_epochs=0,
            mode_worse=worse))
        self.last_epoch = 0
        self._last_lr = _lrs(optimizer)

    def _check(self, *, factor, min_lrs, default_min_lr, patience, cooldown, eps, mode,
               threshold, threshold_mode, best, cooldown_counter, num_bad_epochs, mode_worse):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown! (use 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown! (use 'rel' or 'abs')")
        if not isinstance(min_lrs, list) or len(min_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"min_lrs must hold one number per group, got {min_lrs!r}")
        worse = math.inf if mode == "min" else -math.inf
        if mode_worse != worse:
            raise ValueError(f"mode_worse must be {worse} in mode {mode!r}, got {mode_worse!r}")
        if isinstance(best, (bool, np.bool_)) or not isinstance(best, numbers.Real) \
                or best != best:
            raise ValueError(f"best must be a number, got {best!r}")
        return {"factor": _real("factor", factor, 0.0, 1.0, open_high=True),
                "min_lrs": [_real(f"min_lr[{i}]", v, 0.0) for i, v in enumerate(min_lrs)],
                "default_min_lr": None if default_min_lr is None
                else _real("min_lr", default_min_lr, 0.0),
                "patience": _int("patience", patience, 0),
                "cooldown": _int("cooldown", cooldown, 0),
                "eps": _real("eps", eps, 0.0), "mode": mode,
                "threshold": _real("threshold", threshold, 0.0),
                "threshold_mode": threshold_mode, "best": _number(best),
                "cooldown_counter": _int("cooldown_counter", cooldown_counter, 0),
                "num_bad_epochs": _int("num_bad_epochs", num_bad_epochs, 0),
                "mode_worse": worse}

    def _checked_hyper(self, hyper):
        return self._check(**hyper)

    def _own_state(self):
        return {"last_epoch": self.last_epoch, "_last_lr": list(self._last_lr)}

    def _checked_base(self, state, n):
        return {"last_epoch": _int("state_dict['last_epoch']", state["last_epoch"], 0),
                "_last_lr": _rates("_last_lr", state["_last_lr"], n)}

    def _write_groups(self):
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def step(self, metrics):
        """Record one value of the metric; reduce the rates after a plateau."""
        current = float(metrics)
        self._check_groups()
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _lrs(self.optimizer)

    def _check_groups(self):
        """Follow groups added since construction, as torch does: a single
        ``min_lr`` extends to them; a list of them is a ValueError.

        torch's ``_reduce_lr`` extends ``min_lrs`` only at its next
        reduction; until then its state dict holds fewer ``min_lrs`` than
        ``_last_lr`` has rates, a state that loads into no optimizer. Done at
        every step here, so the state always fits the groups.
        """
        groups = len(self.optimizer.param_groups)
        if groups != len(self.min_lrs):
            if self.default_min_lr is None:
                raise ValueError(f"the optimizer has {groups} parameter groups, min_lr "
                                 f"{len(self.min_lrs)}: set sched.min_lrs to one per group")
            self.min_lrs = [self.default_min_lr] * groups

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        for i, group in enumerate(groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def lr_table(self, steps):
        raise TypeError("ReduceLROnPlateau's rates depend on the metric of each step, which "
                        "is not known in advance: it has no lr_table; step it with "
                        "sched.step(metric) and set the rates in the loop")


def _number(value):
    """``value`` as a Python int or float: an int metric stays an int, as
    torch keeps it (a float of 2**53 + 1 would load as another number)."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)
