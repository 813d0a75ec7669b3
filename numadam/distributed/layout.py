"""Shard arithmetic of the sharded optimizer, free of MPI (tested in one process).

The parameters of a bucket (one group, one dtype) are concatenated in group
order into one flat space of ``total`` elements; rank ``r`` of ``P`` owns the
contiguous range ``[bounds[r], bounds[r + 1])`` with ``bounds[r] = r * total // P``
(sizes differ by at most one; ranks beyond ``total`` own empty ranges). A
shard crosses parameter boundaries freely: its kernel table has one row per
parameter it intersects, pointing into the middle of that parameter's array,
so the update runs through the same kernels as ``Adam``, element for element.
"""

import numpy as np

from numadam.cpu.kernels import NCOLS, OFFSET, PTR_G, PTR_P, SIZE, address
from numadam.core.validation import HYPERPARAMETERS

__all__ = ["shard_bounds", "shard_pieces", "shard_table", "layout_signature",
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


def shard_table(params, pieces, lo, grad):
    """The kernel table of a shard starting at ``lo``, and each row's parameter.

    Row ``j`` updates ``params[k][start - offset_k : end - offset_k]`` (flat)
    with ``grad[start - lo : end - lo]`` and state columns ``start - lo ...``.
    Returns ``(table, rows_param, grad_addresses)``; the gradient column is
    left at 0 (no gradient) and filled per step from ``grad_addresses``.
    """
    table = np.zeros((len(pieces), NCOLS), np.int64)
    grad_addresses = np.zeros(len(pieces), np.int64)
    itemsize = grad.dtype.itemsize
    offsets = np.cumsum([0] + [p.size for p in params])
    for j, (k, start, end) in enumerate(pieces):
        table[j, PTR_P] = address(params[k]) + (start - offsets[k]) * itemsize
        table[j, OFFSET] = start - lo
        table[j, SIZE] = end - start
        grad_addresses[j] = address(grad) + (start - lo) * itemsize
    table[:, PTR_G] = 0
    rows_param = np.array([k for k, _, _ in pieces], np.int64)
    return table, rows_param, grad_addresses


def layout_signature(optimizer, settings):
    """What every rank must agree on: groups, shapes, dtypes, hyperparameters."""
    groups = []
    for group in optimizer.param_groups:
        hyper = tuple((key, repr(group[key])) for key in HYPERPARAMETERS)
        groups.append((hyper, tuple((tuple(p.shape), p.dtype.str) for p in group["params"])))
    return (tuple(groups), settings)


def first_difference(mine, other):
    """A sentence naming the first difference between two layout signatures."""
    (groups_a, settings_a), (groups_b, settings_b) = mine, other
    if len(groups_a) != len(groups_b):
        return f"{len(groups_a)} parameter groups against {len(groups_b)}"
    for gi, ((hyper_a, params_a), (hyper_b, params_b)) in enumerate(zip(groups_a, groups_b)):
        if len(params_a) != len(params_b):
            return f"param_groups[{gi}] holds {len(params_a)} arrays against {len(params_b)}"
        for k, (a, b) in enumerate(zip(params_a, params_b)):
            if a != b:
                return (f"param_groups[{gi}]['params'][{k}] has shape {a[0]} and dtype "
                        f"{np.dtype(a[1])} against shape {b[0]} and dtype {np.dtype(b[1])}")
        if hyper_a != hyper_b:
            a, b = dict(hyper_a), dict(hyper_b)
            key = next(k for k in HYPERPARAMETERS if a[k] != b[k])
            return f"param_groups[{gi}][{key!r}] is {a[key]} against {b[key]}"
    for (key, a), (_, b) in zip(settings_a, settings_b):
        if a != b:
            return f"{key} is {a!r} against {b!r}"
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
