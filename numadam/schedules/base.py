"""The validation helpers of the schedules and their base, :class:`LRScheduler`."""

import math
import numbers
from collections import Counter
from collections.abc import Mapping

import numpy as np


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
