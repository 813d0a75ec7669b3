"""Schedules of schedules: :class:`SequentialLR` and :class:`ChainedScheduler`."""

import bisect
from collections.abc import Mapping

from numadam.schedules.base import LRScheduler, _check_optimizer, _int, _lrs, _rates
from numadam.schedules.plateau import ReduceLROnPlateau


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
