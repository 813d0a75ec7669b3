"""Copies and pickles of an optimizer: values only, never an address.

The buckets' address tables are rebuilt from the arrays on load, so a deep
copy or an unpickled optimizer writes only into its own arrays. Attributes a
subclass adds travel as they are.
"""

from numadam.cpu.kernels import LIVE, STEP
from numadam import formats
from numadam.core.groups import STALE, Validated
from numadam.formats import Storage

__all__ = ["values", "restore"]


def values(opt):
    """What a copy or pickle of ``opt`` carries: arrays, step counts, settings."""
    with opt._lock:
        for bucket in opt._buckets:
            if bucket.on_device:
                raise TypeError(
                    f"{type(opt).__name__} over device arrays cannot be copied or "
                    "pickled; save its state_dict() (or a checkpoint) and load it "
                    "into an optimizer over the arrays you want")
        return {
            "defaults": opt.defaults,
            "check_finite": opt.check_finite,
            "storage": opt._storage,
            "skipped_steps": opt.skipped_steps,
            "clipping": (opt.max_grad_norm, opt.clip_value, opt.last_grad_norm),
            "param_groups": opt.param_groups,
            "param_lists": opt._param_lists,
            "buckets": [(bucket.state, bucket.rows, bucket.table[:, STEP].copy(),
                         bucket.table[:, LIVE].copy(), bucket.grad_buffer)
                        for bucket in opt._buckets],
            "owned_grads": opt._grads is not None,
            "attributes": _own_attributes(opt),
        }


def _own_attributes(opt):
    """The attributes a subclass (or a user) added to ``opt``: every entry of
    its ``__dict__`` that ``_empty`` does not make."""
    blank = type(opt).__new__(type(opt))
    blank._empty(opt.defaults, None, 0)
    internal = vars(blank)
    return {name: value for name, value in vars(opt).items() if name not in internal}


def restore(opt, state):
    """Make the empty ``opt`` (from ``__new__``) the optimizer ``state`` describes."""
    opt._empty(state["defaults"], state["check_finite"], state["skipped_steps"])
    storage = state.get("storage", Storage())
    # Validated again, as the constructor would (a pickle is only data).
    opt._storage = formats.storage(storage.state_format, storage.stochastic_rounding,
                                   storage.seed)
    # Validated again, as the constructor would.
    opt.max_grad_norm, opt.clip_value, opt.last_grad_norm = state.get("clipping",
                                                                     (None, None, None))
    for gi, (group, params) in enumerate(zip(state["param_groups"], state["param_lists"])):
        infos, extents = opt._check_params(params, gi)
        # Validated again at the first step (the group may hold an edit
        # that step() will refuse, as the original would).
        opt._install_group(group, params, infos, extents, Validated(STALE, None))
    saved = state["buckets"]
    if len(saved) != len(opt._buckets):
        raise ValueError("the pickled optimizer's buckets do not match its parameters")
    for bucket, (state_rows, names, steps, live, grad_buffer) in zip(opt._buckets, saved):
        if state_rows is not None and (state_rows.dtype != bucket.store_dtype
                                       or state_rows.shape != (len(names), bucket.width)):
            raise ValueError("the pickled optimizer's state does not match its parameters")
        bucket.state = _own(state_rows)
        bucket.rows = tuple(names)
        bucket.table[:, STEP] = steps
        bucket.table[:, LIVE] = live
        bucket.installed()
        bucket.grad_buffer = _own(grad_buffer)
    if state["owned_grads"]:
        # Views of the restored buffers.
        opt._grads = tuple(bucket.zeros_like(row) for bucket, row in opt._slots)
        opt._point_buckets_at_owned_grads(opt._buckets)
    vars(opt).update(state["attributes"])


def _own(array):
    """``array`` if it owns its writeable memory, else a copy.

    An array unpickled from protocol 5's out-of-band buffers lives in the
    caller's buffer: read-only bytes (the kernels cannot write them), or,
    within one process, the original optimizer's own state.
    """
    if array is None or (array.flags.owndata and array.flags.writeable):
        return array
    return array.copy()
