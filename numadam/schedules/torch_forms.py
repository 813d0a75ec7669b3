"""The per-step schedules ported from torch, from ``LambdaLR`` to ``OneCycleLR``."""

import bisect
import math
import types
from collections import Counter
from collections.abc import Mapping

from numadam.schedules.base import (LRScheduler, _check_optimizer, _int, _lrs, _per_group,
                                    _real)


class _Lambdas(LRScheduler):
    """LambdaLR and MultiplicativeLR: one callable per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda[{i}] should be a function, got {fn!r}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def _own_state(self):
        # torch stores the __dict__ of callable objects (not of functions),
        # so that their own state resumes too.
        return {**super()._own_state(), "lr_lambdas": [
            None if isinstance(fn, types.FunctionType) else dict(vars(fn))
            for fn in self.lr_lambdas]}

    def _prepare(self, state):
        apply = super()._prepare(state)
        saved = state["lr_lambdas"]
        if not (isinstance(saved, list) and len(saved) == len(self.lr_lambdas) and all(
                s is None or isinstance(s, dict) and hasattr(fn, "__dict__")
                for s, fn in zip(saved, self.lr_lambdas))):
            raise ValueError(f"state_dict['lr_lambdas'] must hold None or the attribute dict "
                             f"of each group's callable, got {saved!r}")

        def apply_all():
            apply()
            for fn, attributes in zip(self.lr_lambdas, saved):
                if attributes is not None:
                    vars(fn).update(attributes)
        return apply_all


class LambdaLR(_Lambdas):
    """``lr = initial_lr * lr_lambda(epoch)`` (torch's ``LambdaLR``).

    ``lr_lambda``: a callable of the epoch, or a list of one per group.
    """

    def get_lr(self):
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_Lambdas):
    """``lr *= lr_lambda(epoch)`` at each step after the first (torch's ``MultiplicativeLR``)."""

    def get_lr(self):
        if self._is_initial:
            return _lrs(self.optimizer)
        return [group["lr"] * fn(self.last_epoch)
                for fn, group in zip(self.lr_lambdas, self.optimizer.param_groups)]


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (torch's ``StepLR``)."""

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.__dict__.update(self._check(step_size, gamma))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(step_size, gamma):
        return {"step_size": _int("step_size", step_size, 1),
                "gamma": _real("gamma", gamma, 0.0)}

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone (torch's ``MultiStepLR``).

    A milestone given k times multiplies by ``gamma ** k``, as in torch.
    """

    _hyper = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.__dict__.update(self._check(milestones, gamma))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(milestones, gamma):
        if isinstance(milestones, Mapping):         # torch's state dict holds a Counter
            milestones = [m for m, count in milestones.items()
                          for _ in range(_int(f"milestones[{m!r}]", count, 0))]
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise ValueError(f"milestones must be a list of integers, got {milestones!r}")
        milestones = list(milestones)
        return {"milestones": Counter(_int(f"milestones[{i}]", m, 0)
                                      for i, m in enumerate(milestones)),
                "gamma": _real("gamma", gamma, 0.0)}

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect.bisect_right(milestones, self.last_epoch)
                for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    """``factor * lr`` for the first ``total_iters`` epochs (torch's ``ConstantLR``)."""

    _hyper = ("factor", "total_iters")

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        self.__dict__.update(self._check(factor, total_iters))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(factor, total_iters):
        # factor 0 passes torch's check and then divides by zero at total_iters.
        return {"factor": _real("factor", factor, 0.0, 1.0, open_low=True),
                "total_iters": _int("total_iters", total_iters, 0)}

    def get_lr(self):
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return _lrs(self.optimizer)
        return [group["lr"] * (1.0 / self.factor) for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters)
                           * (1 - self.factor)) for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """Rate factor linear from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs (torch's ``LinearLR``)."""

    _hyper = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self.__dict__.update(self._check(start_factor, end_factor, total_iters))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(start_factor, end_factor, total_iters):
        return {"start_factor": _real("start_factor", start_factor, 0.0, 1.0, open_low=True),
                "end_factor": _real("end_factor", end_factor, 0.0, 1.0),
                "total_iters": _int("total_iters", total_iters, 1)}

    def get_lr(self):
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        factor = 1.0 + (self.end_factor - self.start_factor) / (
            self.total_iters * self.start_factor
            + (self.last_epoch - 1) * (self.end_factor - self.start_factor))
        # Decaying to end_factor 0, the last factor should be 0 and rounds
        # below it in about half of the configurations (lr 0.0203,
        # start_factor 0.6712, 23 iterations: torch's rate -1.3e-19). torch's
        # optimizers step with a negative rate; numadam's refuse it, so it is
        # 0 here. Every other rate is torch's, bit for bit.
        factor = max(factor, 0.0)
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch (torch's ``ExponentialLR``)."""

    _hyper = ("gamma",)

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.__dict__.update(self._check(gamma))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(gamma):
        return {"gamma": _real("gamma", gamma, 0.0)}

    def get_lr(self):
        if self._is_initial:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    """Decay to 0 as ``(1 - t / total_iters) ** power`` (torch's ``PolynomialLR``)."""

    _hyper = ("total_iters", "power")

    def __init__(self, optimizer, total_iters=5, power=1.0, last_epoch=-1):
        self.__dict__.update(self._check(total_iters, power))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(total_iters, power):
        return {"total_iters": _int("total_iters", total_iters, 1),
                "power": _real("power", power, 0.0)}

    def get_lr(self):
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        decay_factor = ((1.0 - self.last_epoch / self.total_iters)
                        / (1.0 - (self.last_epoch - 1) / self.total_iters)) ** self.power
        return [group["lr"] * decay_factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters)
                ** self.power for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine from the initial rate to ``eta_min`` over ``T_max`` epochs, and
    back up over the next ``T_max`` (torch's ``CosineAnnealingLR``, chained
    form: see the module's notes)."""

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.__dict__.update(self._check(T_max, eta_min))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(T_max, eta_min):
        return {"T_max": _int("T_max", T_max, 1), "eta_min": _real("eta_min", eta_min, 0.0)}

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self._is_initial:
            return _lrs(self.optimizer)
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min)
                    * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min for group in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing restarted every ``T_i`` epochs, ``T_i`` growing by
    ``T_mult`` (torch's ``CosineAnnealingWarmRestarts``, SGDR)."""

    _hyper = ("T_0", "T_i", "T_mult", "eta_min", "T_cur")

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, last_epoch=-1):
        checked = self._check(T_0, T_0, T_mult, eta_min, last_epoch)
        self.__dict__.update(checked)
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(T_0, T_i, T_mult, eta_min, T_cur):
        return {"T_0": _int("T_0", T_0, 1), "T_i": _int("T_i", T_i, 1),
                "T_mult": _int("T_mult", T_mult, 1), "eta_min": _real("eta_min", eta_min, 0.0),
                "T_cur": _int("T_cur", T_cur, -1)}

    def get_lr(self):
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self):
        self._check_groups()
        self._step_count += 1
        if self.last_epoch < 0:
            epoch = 0
            self.T_i = self.T_0
            self.T_cur = 0
        else:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        self.last_epoch = epoch
        self._set_lrs(self.get_lr())


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch's ``OneCycleLR``), cycling the momentum too.

    With ``cycle_momentum`` the first beta of groups with ``betas`` (Adam,
    AdamW) or the ``momentum`` of groups with one (SGD, RMSprop) follows the
    inverse cycle; other optimizers raise ``ValueError``, as in torch. Writes
    ``initial_lr``, ``max_lr``, ``min_lr`` (and ``max_momentum``,
    ``base_momentum``) into every group, as torch does. Stepping past
    ``total_steps`` raises ``ValueError``.
    """

    _hyper = ("total_steps", "_schedule_phases", "_anneal_func_type", "cycle_momentum",
              "use_beta1", "_group_values")
    # torch keeps the group entries in the optimizer's state only, and no
    # use_beta1 without cycle_momentum
    _optional = ("_group_values", "use_beta1")
    _GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                 base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        _check_optimizer(optimizer)
        if total_steps is not None:
            if isinstance(total_steps, bool) or not isinstance(total_steps, int) \
                    or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
        elif epochs is not None and steps_per_epoch is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
                    or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError("anneal_strategy must be one of 'cos' or 'linear', instead got "
                             f"{anneal_strategy!r}")
        div_factor = _real("div_factor", div_factor, 0.0, open_low=True)
        final_div_factor = _real("final_div_factor", final_div_factor, 0.0, open_low=True)
        max_lrs = _per_group("max_lr", max_lr, optimizer,
                             lambda name, v: _real(name, v, 0.0))
        self.total_steps = total_steps
        first = float(pct_start * total_steps) - 1
        if three_phase:
            phases = [[first, "initial_lr", "max_lr", "max_momentum", "base_momentum"],
                      [float(2 * pct_start * total_steps) - 2, "max_lr", "initial_lr",
                       "base_momentum", "max_momentum"],
                      [total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"]]
        else:
            phases = [[first, "initial_lr", "max_lr", "max_momentum", "base_momentum"],
                      [total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"]]
        # get_lr divides by the length of the phase a step falls in. A step
        # falls in a phase of length 0 exactly when the first phase ends at
        # step 0 (pct_start * total_steps == 1: step 0) or the last phase
        # starts where it ends (step total_steps); torch raises
        # ZeroDivisionError there (checked against torch 2.13 for every
        # total_steps < 40 and pct_start k / total_steps).
        if first == 0 or phases[-1][0] == phases[-2][0]:
            raise ValueError(f"OneCycleLR(total_steps={total_steps}, pct_start={pct_start}"
                             f"{', three_phase=True' if three_phase else ''}) has a phase of "
                             "no length, which the schedule would divide by (torch raises "
                             "ZeroDivisionError); change pct_start")
        names = ("end_step", "start_lr", "end_lr", "start_momentum", "end_momentum")
        self._schedule_phases = [dict(zip(names, phase)) for phase in phases]
        self._anneal_func_type = anneal_strategy
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = False
        groups = optimizer.param_groups
        if self.cycle_momentum:
            if not all("betas" in g or "momentum" in g for g in groups):
                raise ValueError("optimizer must support momentum or beta1 with "
                                 "`cycle_momentum` option enabled")
            self.use_beta1 = "betas" in groups[0]
            unit = lambda name, v: _real(name, v, 0.0, 1.0)     # noqa: E731
            max_momentums = _per_group("max_momentum", max_momentum, optimizer, unit)
            base_momentums = _per_group("base_momentum", base_momentum, optimizer, unit)
        if last_epoch == -1:
            for i, group in enumerate(groups):
                group["initial_lr"] = max_lrs[i] / div_factor
                group["max_lr"] = max_lrs[i]
                group["min_lr"] = group["initial_lr"] / final_div_factor
                if self.cycle_momentum:
                    self._set_momentum(group, max_momentums[i])
                    group["max_momentum"] = max_momentums[i]
                    group["base_momentum"] = base_momentums[i]
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group, momentum):
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    @staticmethod
    def _anneal(kind, start, end, pct):
        if kind == "cos":
            cos_out = math.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def get_lr(self):
        lrs = []
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(f"Tried to step {step_num} times. The specified number of total "
                             f"steps is {self.total_steps}")
        kind = self._anneal_func_type
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == last:
                    pct = (step_num - start_step) / (end_step - start_step)
                    lr = self._anneal(kind, group[phase["start_lr"]], group[phase["end_lr"]],
                                      pct)
                    if self.cycle_momentum:
                        momentum = self._anneal(kind, group[phase["start_momentum"]],
                                                group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            # Step total_steps lies past the last phase's end (total_steps
            # - 1), so the linear anneal extrapolates beyond min_lr: below 0
            # unless the phase is longer than max_lr / min_lr steps (torch:
            # -0.00143 after 100 steps of max_lr 0.1). numadam's optimizers
            # refuse a negative rate (and opt.save its state): 0 here.
            lrs.append(max(lr, 0.0))
            if self.cycle_momentum:
                self._set_momentum(group, momentum)
        return lrs

    @property
    def _group_values(self):
        keys = self._GROUP_KEYS if self.cycle_momentum else self._GROUP_KEYS[:3]
        out = []
        for group in self.optimizer.param_groups:
            values = {key: group[key] for key in keys}
            if self.cycle_momentum:
                values["momentum"] = group["betas"][0] if self.use_beta1 else group["momentum"]
            out.append(values)
        return out

    def _checked_hyper(self, hyper):
        n = len(self.optimizer.param_groups)
        total = _int("state_dict['total_steps']", hyper["total_steps"], 1)
        phases = hyper["_schedule_phases"]
        keys = {"end_step", "start_lr", "end_lr", "start_momentum", "end_momentum"}
        if not (isinstance(phases, list) and len(phases) in (2, 3) and all(
                isinstance(p, dict) and set(p) == keys
                and all(isinstance(p[k], str) and p[k] in self._GROUP_KEYS for k in keys - {
                    "end_step"}) for p in phases)):
            raise ValueError(f"state_dict['_schedule_phases'] is malformed: {phases!r}")
        for i, p in enumerate(phases):
            _real(f"state_dict['_schedule_phases'][{i}]['end_step']", p["end_step"])
        if hyper["_anneal_func_type"] not in ("cos", "linear"):
            raise ValueError("state_dict['_anneal_func_type'] must be 'cos' or 'linear', got "
                             f"{hyper['_anneal_func_type']!r}")
        cycle, beta1 = hyper["cycle_momentum"], hyper.setdefault("use_beta1", False)
        if not (isinstance(cycle, bool) and isinstance(beta1, bool)):
            raise ValueError("state_dict['cycle_momentum'] and ['use_beta1'] must be booleans")
        if cycle and any(("betas" if beta1 else "momentum") not in g
                         for g in self.optimizer.param_groups):
            raise ValueError("the state dict cycles " + ("beta1" if beta1 else "momentum")
                             + ", which this optimizer's groups lack")
        keys = set(self._GROUP_KEYS if cycle else self._GROUP_KEYS[:3])
        hyper = dict(hyper, total_steps=total)
        values = hyper.pop("_group_values", None)
        if values is None:
            # torch's state dict: the entries stay as the groups hold them
            # (loaded with the optimizer's state, or set by the constructor).
            missing = [i for i, g in enumerate(self.optimizer.param_groups)
                       if not keys <= g.keys()]
            if missing:
                raise ValueError(f"param_groups{missing} lack OneCycleLR's entries "
                                 f"{sorted(keys)}, which this state dict does not hold")
        else:
            keys |= {"momentum"} if cycle else set()
            if not (isinstance(values, list) and len(values) == n
                    and all(isinstance(v, dict) and set(v) == keys for v in values)):
                raise ValueError(f"state_dict['_group_values'] must hold {n} dicts of "
                                 f"{sorted(keys)}")
            for i, v in enumerate(values):
                for key in keys:
                    # rates >= 0 and momenta in [0, 1], as the constructor
                    # and the optimizers require (else the next step raises)
                    _real(f"state_dict['_group_values'][{i}][{key!r}]", v[key], 0.0,
                          1.0 if "momentum" in key else math.inf)
        hyper["_loaded_group_values"] = values
        return hyper

    def _prepare(self, state):
        apply = super()._prepare(state)     # last_epoch and total_steps are integers
        if state["last_epoch"] > state["total_steps"]:
            # it would load, and the next step raise
            raise ValueError(f"state_dict['last_epoch'] ({state['last_epoch']}) is past "
                             f"state_dict['total_steps'] ({state['total_steps']})")
        return apply

    def _write_groups(self):
        super()._write_groups()
        loaded = self.__dict__.pop("_loaded_group_values")
        for group, values in zip(self.optimizer.param_groups, loaded or ()):
            values = dict(values)
            momentum = values.pop("momentum", None)
            group.update(values)
            if momentum is not None:
                self._set_momentum(group, momentum)
