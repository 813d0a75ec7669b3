"""Shard arithmetic of the sharded optimizer, free of MPI (tested in one process).

The parameters of a bucket (one group, one dtype) are concatenated in group
order into one flat space of ``total`` elements; rank ``r`` of ``P`` owns the
contiguous range ``[bounds[r], bounds[r + 1])`` with ``bounds[r] = r * total // P``
(sizes differ by at most one; ranks beyond ``total`` own empty ranges). A
shard crosses parameter boundaries freely: it is an ordinary CPU
:class:`~numadam.cpu.bucket.Bucket` over flat views of the pieces of the
parameters it intersects, so its kernel table points into the middle of the
parameters' arrays and the update runs through the rule's own kernels,
element for element as in the single-process optimizer.
"""

import numpy as np

from numadam.cpu.bucket import Bucket
from numadam.cpu.kernels import LIVE, STEP, address

__all__ = ["shard_bounds", "shard_pieces", "LocalShard", "layout_signature",
           "first_difference", "bytes_per_step"]


def shard_bounds(total, nranks):
    """Boundaries of the ``nranks`` balanced contiguous shards of ``total`` elements."""
    return np.array([r * total // nranks for r in range(nranks + 1)], np.int64)


def shard_pieces(offsets, sizes, lo, hi):
    """``[(k, start, end)]``: the part ``[start, end)`` (bucket coordinates) of
    parameter ``k`` that lies in the shard ``[lo, hi)``, in parameter order."""
    pieces = []
    for k, (offset, size) in enumerate(zip(offsets, sizes)):
        start, end = max(lo, offset), min(hi, offset + size)
        if end > start:
            pieces.append((k, int(start), int(end)))
    return pieces


class LocalShard:
    """Rank ``rank`` of ``nranks``'s part of ``bucket`` under ``rule``, free of MPI.

    ``part`` is a :class:`~numadam.cpu.bucket.Bucket` over flat views of the
    pieces of the parameters in the shard: its ``state`` (rows named in
    ``part.rows``) holds the state of those elements only, and its kernels
    are the rule's. ``grad`` holds the shard's averaged gradient. ``steps``
    and ``live`` track every parameter of the whole bucket, on every rank,
    so that any rank can describe the whole bucket's state; before each
    update they are copied into ``part``'s table, whose ``LIVE`` column is
    the ``first`` of the rule's scalars (SGD's first momentum step).

    ``args`` are the group's kernel arguments at construction: a rule whose
    state exists from the start (Adagrad) gets it here, as its optimizer does.
    """

    def __init__(self, bucket, rule, rank, nranks, args):
        self.bucket = bucket
        self.rule = rule
        self.params = bucket.params
        self.indices = np.array(bucket.indices, np.int64)
        self.dtype = bucket.dtype
        self.full = bucket.total
        bounds = shard_bounds(self.full, nranks)
        self.counts = [int(c) for c in np.diff(bounds)]
        self.displs = [int(d) for d in bounds[:-1]]
        self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])
        self.total = self.hi - self.lo
        sizes = [p.size for p in self.params]
        self.offsets = [int(o) for o in np.cumsum([0] + sizes)[:-1]]
        self.pieces = shard_pieces(self.offsets, sizes, self.lo, self.hi)
        # A Bucket takes its dtype from its first array: an empty shard is
        # one empty view, a table row of size 0 that every kernel skips.
        pieces = self.pieces or [(0, self.offsets[0], self.offsets[0])]
        self.grad = np.zeros(self.total, self.dtype)
        views, grads = [], []
        for k, start, end in pieces:
            o = self.offsets[k]
            views.append(self.params[k].reshape(-1)[start - o:end - o])
            grads.append(self.grad[start - self.lo:end - self.lo])
        self.rows_param = np.array([k for k, _, _ in pieces], np.int64)
        self.part = Bucket(rule, views, self.indices[self.rows_param].tolist(),
                           bucket.group_index)
        self.grad_addresses = np.array([address(g) for g in grads], np.int64)
        self.steps = np.zeros(len(self.params), np.int64)
        self.live = np.zeros(len(self.params), np.int64)
        if rule.eager_state:
            self.part.allocate(args, live=True)
            self.live[:] = 1

    @property
    def state(self):
        """The shard's state, ``(len(rows), total)``, or None before it exists."""
        return self.part.state

    @property
    def rows(self):
        """torch's names of the rows of ``state``."""
        return self.part.rows

    def use_gradients(self, has):
        """Point the rows of parameters with a gradient (``has[k]``) at ``grad``."""
        self.part.use_gradients(self.grad_addresses * has[self.rows_param])

    def update(self, args, has, clip=None):
        """One step of the shard with kernel args ``args``; ``has[k]``: whether
        parameter ``k`` of the bucket has a gradient this step; ``clip``: how
        the kernel reads the gradient (see :func:`numadam.cpu.kernels.gradient`)."""
        part = self.part
        if part.state is None:
            part.allocate(args)
        part.table[:, STEP] = self.steps[self.rows_param]
        part.table[:, LIVE] = self.live[self.rows_param]
        if clip is None:
            part.step(args)
        else:
            part.step_clipped(args, clip)
        self.steps += has
        self.live |= has

    def has_state(self, k):
        """Whether parameter ``k`` of the bucket has state (torch's ``state[p]``
        is not empty), as :meth:`numadam.core.bucket.BucketBase.has_state`."""
        return (self.part.state is not None and bool(self.live[k])
                and (self.rule.keeps_step or len(self.part.rows) > 0))

    def install(self, state, rows, steps, live):
        """Replace the state (``None``: none yet), its row names, and the step
        counts and live flags of every parameter of the bucket."""
        self.part.state = state
        self.part.rows = rows
        self.steps[:] = steps
        self.live[:] = live

    def row_param_index(self, row):
        """Global index of the parameter of ``part``'s table row ``row``."""
        return int(self.indices[self.rows_param[row]])


def layout_signature(optimizer, settings):
    """What every rank must agree on: the settings (``(name, value)`` pairs,
    the optimizer's class among them), groups, shapes, dtypes and
    hyperparameters (the names ``optimizer.rule`` declares)."""
    groups = []
    for group in optimizer.param_groups:
        hyper = tuple((key, repr(group[key])) for key in optimizer.rule.names)
        groups.append((hyper, tuple((tuple(p.shape), p.dtype.str) for p in group["params"])))
    return (tuple(settings), tuple(groups))


def first_difference(mine, other):
    """A sentence naming the first difference between two layout signatures."""
    (settings_a, groups_a), (settings_b, groups_b) = mine, other
    # Settings first: another optimizer class has other hyperparameters.
    for (key, a), (_, b) in zip(settings_a, settings_b):
        if a != b:
            return f"{key} is {a!r} against {b!r}"
    if len(groups_a) != len(groups_b):
        return f"{len(groups_a)} parameter groups against {len(groups_b)}"
    for gi, ((hyper_a, params_a), (hyper_b, params_b)) in enumerate(zip(groups_a, groups_b)):
        if len(params_a) != len(params_b):
            return f"param_groups[{gi}] holds {len(params_a)} arrays against {len(params_b)}"
        for k, (a, b) in enumerate(zip(params_a, params_b)):
            if a != b:
                return (f"param_groups[{gi}]['params'][{k}] has shape {a[0]} and dtype "
                        f"{np.dtype(a[1])} against shape {b[0]} and dtype {np.dtype(b[1])}")
        for (key, a), (_, b) in zip(hyper_a, hyper_b):
            if a != b:
                return f"param_groups[{gi}][{key!r}] is {a} against {b}"
    return None


def bytes_per_step(totals, itemsizes, nranks, rank):
    """Payload bytes rank ``rank`` sends and receives in one step.

    ``totals[b]`` and ``itemsizes[b]`` describe bucket ``b``. Gradients: the
    rank receives every other rank's slice of its shard and sends every other
    rank the slice of theirs. Parameters: it receives every other shard and
    its own shard must reach every other rank. This is the volume any
    algorithm must deliver; MPI's ring or tree algorithms forward the same
    totals through intermediate ranks.
    """
    reduce_recv = reduce_send = gather_recv = gather_send = 0
    for total, itemsize in zip(totals, itemsizes):
        bounds = shard_bounds(total, nranks)
        mine = int(bounds[rank + 1] - bounds[rank])
        reduce_recv += (nranks - 1) * mine * itemsize
        reduce_send += (total - mine) * itemsize
        gather_recv += (total - mine) * itemsize
        gather_send += (nranks - 1) * mine * itemsize
    return {"reduce_recv": reduce_recv, "reduce_send": reduce_send,
            "gather_recv": gather_recv, "gather_send": gather_send}
