"""Learning-rate schedules with torch's names, arguments and lr sequences.

Each schedule drives the ``"lr"`` of every group of an optimizer with
torch-like ``param_groups`` (every numadam optimizer, sharded ones included)
and is stepped once after each optimizer step, as in torch::

    opt = numadam.Adam([x], lr=0.1)
    sched = numadam.schedules.StepLR(opt, step_size=30, gamma=0.5)
    for _ in range(100):
        opt.step([grad(x)])
        sched.step()

Notes
-----
**Chained and closed forms.** torch computes most rates from the group's
current rate (``get_lr``, the "chained" form ``step()`` uses) and keeps a
closed form (``_get_closed_form_lr``) for ``step(epoch)``. The two differ in
the last bits (``CosineAnnealingLR``'s ratio of cosines drifts from
``eta_min + (base - eta_min) * (1 + cos(pi t / T)) / 2``, ``ExponentialLR``'s
and ``StepLR``'s repeated ``lr * gamma`` from ``base * gamma ** k``: in the
golden configurations most rates differ, by up to 3e-13 relative after 300
steps) and in behaviour (the chained form follows a rate edited by hand).
numadam follows the chained form, with torch 2.13's expressions evaluated in
its order, so the sequences are torch's bit for bit
(``tests/golden/make_schedules.py``). Where torch itself switches
to the closed form, so does numadam: ``SequentialLR`` restarts the schedule
it hands over to at a milestone with the closed form at epoch 0 (torch's
``_update_lr(0)``; ``LambdaLR``, ``OneCycleLR`` and the warm restarts have no
closed form and use ``get_lr``). ``step(epoch)`` (deprecated in torch) is not
offered; ``CyclicLR`` is not here.

**Negative rates.** ``LinearLR`` decaying to ``end_factor=0`` sets a
rate of 0 where torch's chained form rounds to a tiny negative one (about
half of the configurations, at the last step), and ``OneCycleLR`` with
``anneal_strategy="linear"`` where torch's extrapolates below 0 at step
``total_steps``; numadam's optimizers would refuse those rates.

**Resume.** ``state_dict()`` holds plain data (numbers, strings, lists,
dicts), so a checkpoint stores it (``opt.save(path, schedule=sched)``).
``load_state_dict`` also writes the rates the schedule last set (and
``initial_lr``, and ``OneCycleLR``'s group entries and momentum) into the
optimizer's groups. torch leaves them alone, so there a schedule built after
the optimizer's state was loaded, or loaded into a fresh optimizer without its
state, continues the chained form from the wrong rate (pytorch issues 29697,
65342); here the order of building and loading does not matter. A state
dict of torch's scheduler (``Counter`` milestones and all) loads too, so a run
moves from torch mid-way.

**Stricter than torch.** Counts (``step_size``, ``T_max``, ``total_iters``,
milestones) must be integers (not bools), non-negative; ``T_max`` and
``LinearLR``'s and ``PolynomialLR``'s ``total_iters`` at least 1 (torch's
``CosineAnnealingLR`` divides by zero at the first step, the other two in
their closed form, which ``SequentialLR`` uses at a milestone),
``ConstantLR``'s factor above 0 (torch divides by it at ``total_iters``),
every factor and rate a finite, non-negative real number (bools and NaN
refused), ``OneCycleLR`` without a phase of no length (torch divides by
zero in it). NumPy scalars are taken as Python numbers (torch refuses some;
with a ``numpy.float32`` factor its rates become float32 under NumPy 2).
``scripts/fuzz_schedules.py`` compares all of this with torch.
A NaN metric given to ``ReduceLROnPlateau`` counts as no improvement, as in
torch.
"""

import bisect
import math
import numbers
import types
from collections import Counter
from collections.abc import Mapping

import numpy as np

__all__ = ["LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR",
           "ConstantLR", "LinearLR", "ExponentialLR", "SequentialLR", "PolynomialLR",
           "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau",
           "CosineAnnealingWarmRestarts", "OneCycleLR", "WarmupCosineLR",
           "WarmupStableDecayLR"]


# ------------------------------------------------------------ validation
def _int(name, value, low=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _real(name, value, low=-math.inf, high=math.inf, *, open_low=False, open_high=False):
    """``value`` as a float in the interval, finite unless a bound is infinite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    x = float(value)
    below = x <= low if open_low else x < low
    above = x >= high if open_high else x > high
    if not math.isfinite(x) or below or above:
        interval = (("(" if open_low else "[") + f"{low}, {high}" + (")" if open_high else "]"))
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    # torch keeps the number the user gave (an int stays an int), which
    # changes no product's bits: int * float converts the int exactly.
    return value if type(value) in (int, float) else x


def _per_group(name, value, optimizer, check):
    groups = optimizer.param_groups
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"{name} must have the same length as optimizer.param_groups. "
                             f"{name} has {len(value)} values, param_groups has {len(groups)}.")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * len(groups)


def _check_optimizer(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all(
            isinstance(g, dict) and "lr" in g for g in groups):
        raise TypeError(f"{type(optimizer).__name__} is not an optimizer: a schedule needs "
                        "param_groups, a non-empty list of dicts with an 'lr'")
    return optimizer


def _lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def _rates(name, value, n):
    """A state dict's list of ``n`` rates: each finite and >= 0, as every
    optimizer's ``lr`` (else the state would load and the next step raise)."""
    if not (isinstance(value, list) and len(value) == n):
        raise ValueError(f"state_dict[{name!r}] must be a list of {n} numbers, got {value!r}")
    return [_real(f"state_dict[{name!r}][{i}]", v, 0.0) for i, v in enumerate(value)]


# ------------------------------------------------------------------ base
class LRScheduler:
    """Base of the epoch-driven schedules (torch's ``LRScheduler``).

    Parameters
    ----------
    optimizer : Optimizer
        Any object with torch-like ``param_groups`` (numadam's optimizers).
    last_epoch : int, default -1
        -1 starts the schedule (and records each group's ``initial_lr``); a
        larger value continues from it, as in torch (the groups must hold
        ``initial_lr``). To resume, prefer ``load_state_dict``.
    """

    _hyper = ()         # the constructor arguments a state dict carries
    _optional = ()      # entries a state dict from torch lacks

    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = _check_optimizer(optimizer)
        last_epoch = _int("last_epoch", last_epoch, -1)
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   "when resuming scheduler with last_epoch >= 0")
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_last_lr(self):
        """The rates of the last ``step()``, one per group."""
        return self._last_lr

    def step(self):
        """Advance one epoch (or optimizer step) and set every group's ``lr``."""
        self._check_groups()
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _update_lr_at(self, epoch):
        """torch's ``_update_lr(epoch)``: the closed form at ``epoch``."""
        self._check_groups()
        self.last_epoch = epoch
        closed = getattr(self, "_get_closed_form_lr", None)
        self._set_lrs(closed() if closed is not None else self.get_lr())

    def _check_groups(self):
        """ValueError, before anything changes, if the optimizer's groups were
        added or removed since the schedule was built.

        torch's chained forms go on over an added group, whose rate then
        follows no ``initial_lr``, and its state dict holds fewer
        ``base_lrs`` than groups: a state that loads into no optimizer of
        that shape (and ``OneCycleLR`` fails on the group's missing
        ``max_lr``). Build the schedule after ``add_param_group``.
        """
        groups, schedule = len(self.optimizer.param_groups), len(self.base_lrs)
        if groups != schedule:
            raise ValueError(f"the optimizer has {groups} parameter groups, the schedule "
                             f"{type(self).__name__} {schedule}; groups cannot be added to or "
                             "removed from an optimizer under a schedule (build the schedule "
                             "after add_param_group)")

    def _set_lrs(self, values):
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)

    def lr_table(self, steps):
        """The rates of the next ``steps`` optimizer steps, advancing the schedule.

        Returns
        -------
        numpy.ndarray
            float64, shape ``(steps, number of groups)``: row ``i`` holds the
            rates step ``i`` uses (row 0: the current ones). The schedule and
            the groups' rates end where ``steps`` calls of ``step()`` leave
            them; an error part-way (``OneCycleLR`` past ``total_steps``)
            leaves both as they were. Meant for ``@njit`` loops that set a
            handle's rates from a table.
        """
        steps = _int("steps", steps, 0)
        saved = self.state_dict()
        out = np.empty((steps, len(self.optimizer.param_groups)))
        try:
            for i in range(steps):
                out[i] = _lrs(self.optimizer)
                self.step()
        except BaseException:
            self.load_state_dict(saved)
            raise
        return out

    # ------------------------------------------------------------- state
    def _own_state(self):
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr)}

    def state_dict(self):
        """The schedule's state as plain data (numbers, strings, lists, dicts).

        torch's entries (``last_epoch``, ``_step_count``, ``base_lrs``,
        ``_last_lr`` and the constructor's arguments), storable in a
        checkpoint (``opt.save(path, schedule=...)``). ``ValueError`` if the
        optimizer's groups were added or removed under the schedule (the
        state would load into no optimizer).
        """
        self._check_groups()
        state = self._own_state()
        state.update((key, _plain(getattr(self, key))) for key in self._hyper)
        return state

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict`'s state and the groups' rates.

        Everything is checked before anything changes (``ValueError`` naming
        the entry); then the schedule's state is replaced, as torch's
        ``__dict__.update`` does, and each group's ``lr`` (and
        ``initial_lr``) is set to what the schedule last set.
        """
        self._prepare(state_dict)()

    def _expected_keys(self):
        return set(self._own_state()) | set(self._hyper)

    def _check_keys(self, state):
        """The entries ``state`` may have; ValueError if it has others or
        lacks some. torch's state dicts (tensors converted) are accepted."""
        if not isinstance(state, Mapping):
            raise ValueError(f"a schedule's state dict is a dict, got {state!r}")
        for flag in _TORCH_FLAGS:
            if flag in state and not isinstance(state[flag], bool):
                raise ValueError(f"state_dict[{flag!r}] must be a boolean, got {state[flag]!r}")
        given = set(state) - set(_TORCH_FLAGS)
        expected = self._expected_keys()
        if not expected - set(self._optional) <= given <= expected:
            raise ValueError(
                f"{type(self).__name__}'s state dict has entries {sorted(state, key=str)}, "
                f"expected {sorted(expected)}")
        return expected

    def _prepare(self, state):
        """Check ``state``; return the function that loads it."""
        self._check_keys(state)
        n = len(self.optimizer.param_groups)
        values = self._checked_base(state, n)
        values.update(self._checked_hyper({key: state[key] for key in self._hyper
                                           if key in state}))

        def apply():
            self.__dict__.update(values)
            self._write_groups()
        return apply

    def _checked_base(self, state, n):
        return {"last_epoch": _int("state_dict['last_epoch']", state["last_epoch"], -1),
                "_step_count": _int("state_dict['_step_count']", state["_step_count"], 0),
                "base_lrs": _rates("base_lrs", state["base_lrs"], n),
                "_last_lr": _rates("_last_lr", state["_last_lr"], n)}

    def _checked_hyper(self, hyper):
        """``hyper`` (the ``_hyper`` entries of a state dict) validated as the
        constructor validates its arguments (``_check``)."""
        return self._check(**hyper) if hyper else {}

    def _write_groups(self):
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, self._last_lr):
            group["initial_lr"] = base
            group["lr"] = lr


# torch's bookkeeping of its get_lr warnings, in its state dicts; meaningless here.
_TORCH_FLAGS = ("_is_initial", "_get_lr_called_within_step")


def _plain(value):
    if isinstance(value, Counter):
        return sorted(value.elements())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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


class _Composite(LRScheduler):
    """SequentialLR and ChainedScheduler: schedules of one optimizer."""

    def _children(self, schedulers, optimizer):
        name = type(self).__name__
        if isinstance(schedulers, (str, bytes, Mapping)) or not hasattr(schedulers, "__len__") \
                or len(schedulers) < 1:
            raise ValueError(f"{name} expects at least one scheduler, got {schedulers!r}")
        for i, scheduler in enumerate(schedulers):
            if isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(
                    f"{name} does not support `ReduceLROnPlateau` scheduler as it requires "
                    "additional kwargs to be specified when calling `step`, but got one at "
                    f"index {i} in the given schedulers sequence.")
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"{name} at index {i} should be a numadam schedule, got "
                                f"{scheduler!r}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{name} expects all schedulers to belong to the same "
                                 f"optimizer, but got scheduler {type(scheduler).__name__} at "
                                 f"index {i} with another optimizer")
        return list(schedulers)

    def _check_groups(self):
        for scheduler in self._schedulers:
            scheduler._check_groups()

    def _check_keys(self, state):
        # torch's ChainedScheduler first in a SequentialLR went through
        # LRScheduler._initial_step, which gave it a _step_count that
        # nothing reads; its state dict carries it.
        if isinstance(state, Mapping) and "_step_count" in state:
            _int("state_dict['_step_count']", state["_step_count"], 0)
            state = {key: v for key, v in state.items() if key != "_step_count"}
        return super()._check_keys(state)

    def _own_state(self):
        return {"_last_lr": list(self._last_lr),
                "_schedulers": [s.state_dict() for s in self._schedulers]}

    def _prepare(self, state):
        expected = self._check_keys(state)
        children = state["_schedulers"]
        if not (isinstance(children, list) and len(children) == len(self._schedulers)):
            raise ValueError(f"state_dict['_schedulers'] must hold {len(self._schedulers)} "
                             "state dicts")
        loads = [s._prepare(c) for s, c in zip(self._schedulers, children)]
        values = {"_last_lr": _rates("_last_lr", state["_last_lr"],
                                     len(self.optimizer.param_groups))}
        values.update(self._checked_hyper({k: state[k] for k in expected
                                           if k not in ("_last_lr", "_schedulers")}))

        def apply():
            for load in loads:
                load()
            self.__dict__.update(values)
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr
        return apply


class SequentialLR(_Composite):
    """One schedule after another, switching at ``milestones`` (torch's ``SequentialLR``).

    At a milestone the next schedule restarts from epoch 0 with its closed
    form, as torch's does; the schedules given were built on ``optimizer``.
    ``last_epoch`` other than -1 is refused: torch's restarts the first
    schedule whatever its value (pytorch issue 162591); resume with
    ``load_state_dict``. So is a ``SequentialLR`` or ``ChainedScheduler``
    after the first schedule: it has no form to restart from (torch's raises
    ``NotImplementedError`` at its milestone).
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _check_optimizer(optimizer)
        schedulers = self._children(schedulers, optimizer)
        for i, scheduler in enumerate(schedulers[1:], 1):
            if isinstance(scheduler, _Composite):
                # torch 2.13 calls _update_lr(0) on it at its milestone, which
                # reaches LRScheduler.get_lr: NotImplementedError mid-run.
                raise ValueError(f"SequentialLR cannot restart the {type(scheduler).__name__} "
                                 f"at index {i} at its milestone (only the first schedule "
                                 "may be a SequentialLR or ChainedScheduler)")
        if isinstance(milestones, (str, bytes, Mapping)) or not hasattr(milestones, "__len__"):
            raise ValueError(f"milestones must be a list of integers, got {milestones!r}")
        milestones = [_int(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to "
                f"{len(milestones)}")
        if _int("last_epoch", last_epoch, -1) != -1:
            # torch's SequentialLR(last_epoch=N) starts its first schedule
            # whatever N is: the wrong rate past a milestone (pytorch 162591).
            raise ValueError(f"SequentialLR(last_epoch={last_epoch}) would not resume (torch's "
                             "starts the first schedule again); build it with last_epoch=-1 "
                             "and load_state_dict, or opt.load(path, schedule=...)")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = 0
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self._undo(self)
        index = bisect.bisect_right(milestones, 0)
        schedulers[index]._initial_step()
        self._last_lr = schedulers[index].get_last_lr()

    @classmethod
    def _undo(cls, schedule):
        """torch's ``recursive_undo``: one epoch back, nested schedules included."""
        if isinstance(schedule, _Composite):
            for child in schedule._schedulers:
                cls._undo(child)
        elif isinstance(schedule, LRScheduler):
            schedule.last_epoch -= 1

    def step(self):
        self._check_groups()
        self.last_epoch += 1
        index = bisect.bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr_at(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _own_state(self):
        return {**super()._own_state(), "last_epoch": self.last_epoch,
                "_milestones": list(self._milestones)}

    def _checked_hyper(self, hyper):
        milestones = hyper["_milestones"]
        if not (isinstance(milestones, list) and len(milestones) == len(self._schedulers) - 1):
            raise ValueError(f"state_dict['_milestones'] is malformed: {milestones!r}")
        return {"last_epoch": _int("state_dict['last_epoch']", hyper["last_epoch"], 0),
                "_milestones": [_int(f"state_dict['_milestones'][{i}]", m, 0)
                                for i, m in enumerate(milestones)]}


class ChainedScheduler(_Composite):
    """Step every schedule each time, in order (torch's ``ChainedScheduler``);
    their chained forms multiply."""

    def __init__(self, schedulers, optimizer=None):
        if isinstance(schedulers, (list, tuple)) and not schedulers:
            raise ValueError("ChainedScheduler expects at least one scheduler to be chained, "
                             "but got no scheduler.")
        if optimizer is None and isinstance(schedulers, (list, tuple)):
            optimizer = getattr(schedulers[0], "optimizer", None)
        _check_optimizer(optimizer)
        self._schedulers = self._children(schedulers, optimizer)
        self.optimizer = optimizer
        self._last_lr = _lrs(optimizer)

    def step(self):
        self._check_groups()        # every child, before the first one steps
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _lrs(self.optimizer)


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
                "threshold_mode": threshold_mode, "best": float(best),
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


# ----------------------------------------------------- warmup shapes
class _Shape(LRScheduler):
    """A rate ``initial_lr * factor(epoch)`` of the epoch alone."""

    def get_lr(self):
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr


class WarmupCosineLR(_Shape):
    """Linear warmup from 0, then cosine decay to ``min_lr_ratio * initial_lr``.

    The factor of Hugging Face transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup`` (``num_cycles=0.5``,
    ``min_lr_rate=min_lr_ratio``), evaluated in its order::

        t < warmup_steps:  t / max(1, warmup_steps)
        otherwise:         p = (t - warmup_steps) / max(1, total_steps - warmup_steps)
                           0.5 * (1 + cos(pi * p)) * (1 - min_lr_ratio) + min_lr_ratio

    except that ``p`` stops at 1: after ``total_steps`` the rate stays at the
    floor (transformers' cosine rises again; optax's
    ``warmup_cosine_decay_schedule`` holds it too).
    """

    _hyper = ("warmup_steps", "total_steps", "min_lr_ratio")

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr_ratio=0.0, last_epoch=-1):
        self.__dict__.update(self._check(warmup_steps, total_steps, min_lr_ratio))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(warmup_steps, total_steps, min_lr_ratio):
        warmup_steps = _int("warmup_steps", warmup_steps, 0)
        total_steps = _int("total_steps", total_steps, 1)
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be <= total_steps "
                             f"({total_steps})")
        return {"warmup_steps": warmup_steps, "total_steps": total_steps,
                "min_lr_ratio": _real("min_lr_ratio", min_lr_ratio, 0.0, 1.0)}

    def _factor(self, t):
        if t < self.warmup_steps:
            return float(t) / float(max(1, self.warmup_steps))
        progress = min(1.0, float(t - self.warmup_steps)
                       / float(max(1, self.total_steps - self.warmup_steps)))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cosine * (1 - self.min_lr_ratio) + self.min_lr_ratio


class WarmupStableDecayLR(_Shape):
    """Warmup, a constant stretch, then a decay to ``min_lr_ratio * initial_lr``.

    The warmup-stable-decay ("trapezoidal") schedule of MiniCPM
    (arXiv 2404.06395) with the cooldown shapes compared by Hägele et al.
    (arXiv 2405.18392, who recommend "1-sqrt"). The factor is that of Hugging
    Face transformers' ``get_wsd_schedule`` (``warmup_type="linear"``,
    ``num_cycles=0.5``), evaluated in its order::

        t < warmup_steps:                   w = t / max(1, warmup_steps)
                                            w * (1 - min_lr_ratio) + min_lr_ratio
        t < warmup_steps + stable_steps:    1
        t < warmup + stable + decay_steps:  p = (t - warmup_steps - stable_steps)
                                                / max(1, decay_steps)
                    d = 1 - p  ("linear"),  0.5 * (1 + cos(pi * p))  ("cosine"),
                        1 - sqrt(p)  ("1-sqrt")
                    d * (1 - min_lr_ratio) + min_lr_ratio
        afterwards:                         min_lr_ratio
    """

    _hyper = ("warmup_steps", "stable_steps", "decay_steps", "min_lr_ratio", "decay")
    _DECAYS = ("linear", "cosine", "1-sqrt")

    def __init__(self, optimizer, warmup_steps, stable_steps, decay_steps, min_lr_ratio=0.0,
                 decay="cosine", last_epoch=-1):
        self.__dict__.update(self._check(warmup_steps, stable_steps, decay_steps,
                                         min_lr_ratio, decay))
        super().__init__(optimizer, last_epoch)

    @classmethod
    def _check(cls, warmup_steps, stable_steps, decay_steps, min_lr_ratio, decay):
        if decay not in cls._DECAYS:
            raise ValueError(f"decay must be one of {cls._DECAYS}, got {decay!r}")
        return {"warmup_steps": _int("warmup_steps", warmup_steps, 0),
                "stable_steps": _int("stable_steps", stable_steps, 0),
                "decay_steps": _int("decay_steps", decay_steps, 0),
                "min_lr_ratio": _real("min_lr_ratio", min_lr_ratio, 0.0, 1.0), "decay": decay}

    def _factor(self, t):
        floor = self.min_lr_ratio
        if t < self.warmup_steps:
            return float(t) / float(max(1, self.warmup_steps)) * (1.0 - floor) + floor
        if t < self.warmup_steps + self.stable_steps:
            return 1.0
        if t >= self.warmup_steps + self.stable_steps + self.decay_steps:
            return floor
        p = float(t - self.warmup_steps - self.stable_steps) / float(max(1, self.decay_steps))
        if self.decay == "linear":
            d = 1.0 - p
        elif self.decay == "cosine":
            d = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            d = 1.0 - math.sqrt(p)
        return d * (1.0 - floor) + floor
