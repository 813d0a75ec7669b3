"""State dicts and checkpoints of the sharded optimizer (all collective).

A checkpoint is the ordinary single-file numadam checkpoint in torch's layout,
so it moves freely between a rule's class (``Adam``, ``SGD``, ...) and its
sharded class on any number of ranks.
Writing it: the ranks agree on the arguments, the shards are gathered to one
rank, and that rank alone writes the file with :func:`numadam.save` (temporary
file, fsync, atomic rename) and broadcasts the outcome. The file at the path
is therefore always either the previous checkpoint or the new complete one,
whichever rank fails and wherever; and a shared file system is not needed.
"""

import dataclasses
import os

import numpy as np

from numadam import checkpoint
from numadam.core import state_dict as _state_dict
from numadam.distributed.agree import agree, describe, raise_agreed

__all__ = ["gather", "scatter", "save", "load"]


def _check_root(root, nranks, allow_none):
    if root is None and allow_none:
        return
    if isinstance(root, (bool, np.bool_)) or not isinstance(root, (int, np.integer)) \
            or not 0 <= root < nranks:
        raise ValueError(f"root must be a rank in [0, {nranks}), got {root!r}")


def _agree_on(opt, error, value, what):
    values = agree(opt.comm, error, value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise ValueError(f"the ranks passed different {what}: {values[0]!r} on rank 0, "
                             f"{other!r} on rank {rank} [raised on every rank]")


def gather(opt, root):
    """The state dict on ``root`` (every rank for ``root=None``), else None."""
    error = buffers = None
    try:
        _check_root(root, opt.size, allow_none=True)
        if root is None or opt.rank == root:
            buffers = [None if s.state is None else np.empty((s.state.shape[0], s.full), s.dtype)
                       for s in opt._shards]
    except Exception as exc:  # shared with every rank, then raised
        error = exc
    _agree_on(opt, error, root, "roots")
    for k, shard in enumerate(opt._shards):
        if shard.state is None:       # the same on every rank: all step together
            continue
        kind = shard.mpi_type
        for row in range(shard.state.shape[0]):
            recv = None if buffers is None else [buffers[k][row],
                                                 (shard.counts, shard.displs), kind]
            if root is None:
                opt.comm.Allgatherv([shard.state[row], kind], recv)
            else:
                opt.comm.Gatherv([shard.state[row], kind], recv, root)
    if buffers is None:
        return None
    state_dict = _state_dict.export(opt._inner)   # groups; the inner never steps
    state = {}
    for shard, full in zip(opt._shards, buffers):
        if full is None:
            continue
        for k, (offset, param) in enumerate(zip(shard.offsets, shard.params)):
            if shard.has_state(k):
                entry = {"step": int(shard.steps[k])} if opt.rule.keeps_step else {}
                for row, name in enumerate(shard.rows):
                    entry[name] = full[row, offset:offset + param.size].reshape(param.shape)
                state[int(shard.indices[k])] = entry
    state_dict["state"] = dict(sorted(state.items()))
    return state_dict


def _flatten(opt, state_dict):
    """On the root: validate ``state_dict``; return the full flat states and
    the header every rank needs (groups; per bucket the state's row names, or
    None for no state, and the step counts and live flags).

    What the plain optimizer's ``load_state_dict`` would install, bucket by
    bucket (:func:`numadam.core.state_dict.load`): a rule whose state exists
    from construction gives every parameter the state dict lacks its initial
    state; otherwise a bucket has state once any of its parameters has.
    """
    groups, group_args, entries = _state_dict._parse(opt._inner, state_dict)
    rule = opt.rule
    fulls, buckets = [], []
    for shard in opt._shards:
        args = group_args[shard.bucket.group_index].args
        steps = np.zeros(len(shard.params), np.int64)
        live = np.full(len(shard.params), int(rule.eager_state), np.int64)
        rows, full = None, None
        if rule.eager_state or any(int(i) in entries for i in shard.indices):
            # The rows the hyperparameters use, then the unused buffers every
            # loaded entry of the bucket has, as the plain optimizer loads them.
            rows = _state_dict._rows(args, shard.bucket, entries)
            initial = rule.initial(args.values)
            full = shard.bucket.initial_state(
                dataclasses.replace(args, rows=rows),
                initial + [0.0] * (len(rows) - len(initial)))
            for k, index in enumerate(shard.indices):
                if int(index) in entries:
                    step, arrays = entries[int(index)]
                    steps[k], live[k] = step, 1
                    offset = shard.offsets[k]
                    for row, key in enumerate(rows):
                        full[row, offset:offset + arrays[key].size] = arrays[key].reshape(-1)
        fulls.append(full)
        buckets.append((rows, steps, live))
    plain_groups = [{key: value for key, value in group.items() if key != "params"}
                    for group in groups]
    return fulls, (plain_groups, buckets)


def _prepare(opt, header):
    """Everything to install on this rank, built before anything changes."""
    plain_groups, buckets = header
    groups = []
    for gi, plain in enumerate(plain_groups):
        group = dict(plain)
        group["params"] = opt.param_groups[gi]["params"]
        groups.append((group, opt._inner._validate_group(group, gi)))
    states = [None if rows is None else np.zeros((len(rows), shard.total), shard.dtype)
              for shard, (rows, _, _) in zip(opt._shards, buckets)]
    return groups, states


def _kind(schedule):
    """What the ranks' schedules must agree on: None, or the class."""
    cls = type(schedule)
    return None if schedule is None else f"{cls.__module__}.{cls.__qualname__}"


def scatter(opt, read, root, schedule=None, path=None):
    """Load the state dict ``read()`` returns on ``root`` into every rank.

    With ``schedule`` (this rank's schedule over ``opt``), ``read()`` returns
    the state dict and a schedule state (None if there is none), which every
    rank receives and checks against its own schedule (a
    :class:`CheckpointError` naming ``path`` if it does not fit, raised on
    every rank before anything changes) and loads after the optimizer's.
    """
    error = fulls = header = saved = name = None
    try:
        _check_root(root, opt.size, allow_none=False)
        checkpoint._check_schedule_of(opt, schedule)
        if opt.rank == root:
            state_dict = read()
            if schedule is not None:
                state_dict, saved = state_dict
                name = os.fsdecode(os.fspath(path))
            fulls, header = _flatten(opt, state_dict)
    except Exception as exc:  # shared with every rank, then raised
        error = exc
    _agree_on(opt, error, root, "roots")
    _agree_on(opt, None, _kind(schedule), "schedules")
    header, saved, name = opt.comm.bcast((header, saved, name), root)
    error = prepared = apply = None
    try:
        prepared = _prepare(opt, header)
        if schedule is not None:
            apply = checkpoint._schedule_loader(schedule, saved, name)
    except Exception as exc:
        error = exc
    agree(opt.comm, error)
    groups, states = prepared
    for k, (shard, state) in enumerate(zip(opt._shards, states)):
        if state is None:
            continue
        kind = shard.mpi_type
        for row in range(state.shape[0]):
            send = [fulls[k][row], (shard.counts, shard.displs), kind] if fulls else None
            opt.comm.Scatterv(send, [state[row], kind], root)
    # Nothing below can fail: every rank changes all at once.
    inner = opt._inner
    for gi, (group, args) in enumerate(groups):
        inner.param_groups[gi].clear()
        inner.param_groups[gi].update(group)
        inner._group_args[gi] = args
    for shard, state, (rows, steps, live) in zip(opt._shards, states, header[1]):
        shard.install(state, () if rows is None else rows, steps, live)
    if apply is not None:
        apply()     # the schedule's rates over the groups just installed


def save(opt, path, root, schedule=None):
    """Gather to ``root``, write atomically there, raise everywhere on failure.

    Each rank checks its own ``schedule`` (it drives ``opt``, its state would
    load back) and the ranks agree on the path, the root and the schedule's
    class before anything moves; root stores its schedule's state.
    """
    error = schedule_state = None
    try:
        path = os.fspath(path)
        _check_root(root, opt.size, allow_none=False)
        schedule_state = checkpoint._schedule_to_save(opt, schedule)
    except Exception as exc:  # shared with every rank, then raised
        error = exc
    _agree_on(opt, error, (path, root), "(path, root)")
    _agree_on(opt, None, _kind(schedule), "schedules")
    state_dict = gather(opt, root)
    error = None
    if opt.rank == root:
        try:
            checkpoint.save(state_dict, path, schedule_state)
        except Exception as exc:
            error = exc
    outcome = opt.comm.bcast(describe(error), root)
    infos = [None] * opt.size
    infos[root] = outcome
    raise_agreed(infos, error, opt.size)


def load(opt, path, root, schedule=None):
    """``root`` reads ``path``; every rank receives its shard (and, with
    ``schedule``, the file's schedule state; a file saved with a schedule
    loads without one as well)."""
    def read():
        state_dict = checkpoint.load(path)
        saved = state_dict.pop(checkpoint._SCHEDULE, None)
        return state_dict if schedule is None else (state_dict, saved)

    scatter(opt, read, root, schedule, path)
