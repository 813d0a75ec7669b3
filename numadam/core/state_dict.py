"""State dicts in torch's layout: export, and validated all-or-nothing import."""

import numbers
from collections.abc import Hashable, Mapping
from dataclasses import replace

import numpy as np

from numadam.cpu.kernels import LIVE, STEP
from numadam.formats import FORMATS

# Written by torch but meaningless here; dropped on load.
_TORCH_ONLY_KEYS = frozenset({"foreach", "capturable", "differentiable", "fused"})
# Step counts live in an int64 table that the kernels add 1 to: a count
# loaded at 2**63 - 1 wrapped to -2**63 at the next step (Adam: NaN).
# 2**62 leaves 2**62 steps of headroom.
_MAX_STEP = 2 ** 62


def as_step(value, where):
    """A step count as a non-negative Python int (torch stores a float tensor)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    if not isinstance(value, numbers.Real):
        array = np.asarray(value)
        if array.size != 1 or array.dtype.kind not in "iuf":
            raise ValueError(f"{where} must be a whole number, got {value!r}")
        value = array.reshape(()).item()
    if isinstance(value, numbers.Integral):
        step = int(value)
    elif float(value).is_integer():
        step = int(value)
    else:
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    if not 0 <= step <= _MAX_STEP:
        raise ValueError(f"{where} must be in [0, 2**62] (an int64 count that "
                         f"grows by 1 a step, kept well below 2**63), got {step}")
    return step


def export(opt):
    """``opt``'s state dict, holding copies of its state arrays."""
    state = {}
    # Stochastic rounding draws by step count: a rule that keeps none in
    # torch's layout (SGD) saves it too, or a resumed run would draw anew.
    counted = opt._storage.stochastic_rounding and not opt.rule.keeps_step
    for index, (bucket, row) in enumerate(opt._slots):
        if bucket.has_state(row):
            state[index] = bucket.param_state(row)
        if counted and bucket.table[row, STEP] > 0:
            state[index] = {"step": int(bucket.table[row, STEP]), **state.get(index, {})}
    groups = []
    first = 0
    for group in opt.param_groups:
        saved = {key: value for key, value in group.items() if key != "params"}
        saved["params"] = list(range(first, first + len(group["params"])))
        first += len(group["params"])
        groups.append(saved)
    out = {"state": state, "param_groups": groups}
    if opt.state_format != "full":
        # Only then: a full state dict keeps torch's exact layout.
        out["state_format"] = opt.state_format
    return out


def _merged_group(opt, saved, gi):
    """The group ``saved`` describes, with defaults for later additions."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"param_groups[{gi}] must be a dict, got {saved!r}")
    rule = opt.rule
    group = {}
    for key in rule.names:
        if key in saved:
            group[key] = saved[key]
        elif key in rule.load_defaults:
            # Newer than the oldest state dicts: absent means the value that
            # reproduces the old behaviour, as torch's __setstate__ fills it.
            group[key] = rule.hyper_by_name[key].default
        else:
            raise ValueError(
                f"param_groups[{gi}] has no {key!r}, which every {rule.name} group has "
                f"({', '.join(rule.names)}): is this the state dict of another optimizer?")
    group.update(opt._forced)
    group.update((k, v) for k, v in saved.items()
                 if k not in group and k != "params" and k not in _TORCH_ONLY_KEYS)
    return group


def _state_array(entry, key, shape, dtype, where):
    if key not in entry:
        raise ValueError(f"{where} has no {key!r}")
    value = entry[key]
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype != dtype:
        raise ValueError(f"{where}[{key!r}] has dtype {array.dtype}; its parameter "
                         f"has dtype {dtype}")
    if array.shape != shape:
        raise ValueError(f"{where}[{key!r}] has shape {array.shape}; its parameter "
                         f"has shape {shape}")
    return array


def _parse(opt, state_dict):
    """Check ``state_dict`` against ``opt``; return what to install."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("a state dict is a dict with 'state' and 'param_groups'")
    saved_format = state_dict.get("state_format", "full")
    if saved_format != opt.state_format:
        if saved_format not in FORMATS:
            raise ValueError(f"state_dict['state_format'] must be one of {FORMATS}, got "
                             f"{saved_format!r}")
        raise ValueError(
            f"the state dict's state is stored as state_format={saved_format!r}, this "
            f"optimizer's as {opt.state_format!r}; convert it explicitly with "
            f"numadam.formats.convert_state_dict(state_dict, {opt.state_format!r}), or "
            f"build the optimizer with state_format={saved_format!r}")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"the state dict has {len(saved_groups)} parameter groups, "
                         f"the optimizer {len(opt.param_groups)}")
    groups, group_args, index_of_id = [], [], {}
    first = 0
    for gi, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
        merged = _merged_group(opt, saved, gi)
        saved_ids = list(saved.get("params", ()))
        if len(saved_ids) != len(group["params"]):
            raise ValueError(f"param_groups[{gi}] of the state dict has {len(saved_ids)} "
                             f"parameters, the optimizer's {len(group['params'])}")
        for k, saved_id in enumerate(saved_ids):
            if not isinstance(saved_id, Hashable):
                raise ValueError(
                    f"param_groups[{gi}]['params'] of the state dict must hold parameter "
                    f"ids (as state_dict() writes them), got {type(saved_id).__name__}")
            if saved_id in index_of_id:
                raise ValueError(f"parameter id {saved_id!r} appears twice in the state dict")
            index_of_id[saved_id] = first + k
        first += len(saved_ids)
        merged["params"] = group["params"]
        group_args.append(opt._validate_group(merged, gi))
        groups.append(merged)

    saved_state = state_dict["state"]
    if not isinstance(saved_state, Mapping):
        raise ValueError("state_dict['state'] must be a dict keyed by parameter id")
    entries = {}
    for saved_id, entry in saved_state.items():
        where = f"state[{saved_id!r}]"
        if saved_id not in index_of_id:
            raise ValueError(f"{where} belongs to no parameter of the state dict's groups")
        index = index_of_id[saved_id]
        bucket, row = opt._slots[index]
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a dict, got {entry!r}")
        # torch before 2.0 stored SGD's momentum_buffer as None without
        # momentum; torch reads a None buffer as no buffer, so does this.
        entry = {key: value for key, value in entry.items() if value is not None}
        if not entry and not opt.rule.keeps_step:
            # Nothing left: no state yet, so SGD's next momentum step starts
            # the buffer from the gradient, as torch's does from a None buffer.
            continue
        rows = group_args[bucket.group_index].args.rows
        declared = tuple(s.name for s in opt.rule.state)
        # A rule without a step in torch's layout takes one where stochastic
        # rounding saved it (see export).
        known = ("step",) + declared
        if getattr(bucket, "fmt", None) == "8bit":
            known += tuple(name + "_absmax" for name in declared)
        unknown = set(entry) - set(known)
        if unknown:
            raise ValueError(
                f"{where} has entries {sorted(map(str, unknown))}, which {opt.rule.name} "
                f"does not keep (it keeps {list(known)})")
        # A buffer the hyperparameters no longer use (momentum or amsgrad
        # switched off after it was made) stays, as torch keeps it.
        rows = rows + tuple(key for key in declared if key in entry and key not in rows)
        _, shape, dtype = bucket.expected[row]   # NumPy terms for device arrays too
        if opt.rule.keeps_step and "step" not in entry:
            raise ValueError(f"{where} has no 'step'")
        step = as_step(entry["step"], f"{where}['step']") if "step" in entry else 0
        arrays = {}
        for key in rows:
            for stored, stored_shape, stored_dtype in bucket.stored_arrays(key, row):
                arrays[stored] = _state_array(entry, stored, stored_shape, stored_dtype, where)
        entries[index] = (step, arrays)
    return groups, group_args, entries


def _rows(args, bucket, entries):
    """The state rows of ``bucket`` after a load: those ``args`` uses, then
    the unused ones that every loaded entry of the bucket has. The kernels
    read rows by position, so the used ones must come first. Rows belong to
    a whole bucket: an unused buffer only some of its parameters have is
    dropped (the steps never read it)."""
    loaded = [entries[index] for index in bucket.indices if index in entries]
    declared = {s.name for s in bucket.rule.state}      # not 8-bit's absmax arrays
    extra = [key for key in (loaded[0][1] if loaded else ())
             if key in declared and key not in args.rows and all(key in e[1] for e in loaded)]
    return args.rows + tuple(extra)


def load(opt, state_dict):
    """Install ``state_dict`` into ``opt``, or raise and change nothing."""
    groups, group_args, entries = _parse(opt, state_dict)
    installs = []
    eager = opt.rule.eager_state
    for bucket in opt._buckets:
        args = group_args[bucket.group_index].args
        steps = np.zeros(len(bucket.params), np.int64)
        # A rule whose state exists from construction gives every parameter
        # the state dict lacks its initial state (torch would fail at its step).
        live = np.full(len(bucket.params), int(eager), np.int64)
        state = None
        rows = _rows(args, bucket, entries)
        if eager or any(index in entries for index in bucket.indices):
            initial = opt.rule.initial(args.values)
            state = bucket.initial_state(replace(args, rows=rows),
                                         initial + [0.0] * (len(rows) - len(initial)))
            for row, index in enumerate(bucket.indices):
                if index not in entries:
                    continue
                step, arrays = entries[index]
                steps[row], live[row] = step, 1
                for r, key in enumerate(rows):
                    bucket.put(state, row, r, arrays, key)
            if bucket.on_device:
                state = bucket.upload_state(state)   # before anything changes
        installs.append((bucket, state, rows, steps, live))
    # Nothing below can fail: the optimizer changes all at once.
    for gi, group in enumerate(groups):
        opt.param_groups[gi].clear()
        opt.param_groups[gi].update(group)
        opt._group_args[gi] = group_args[gi]
    if opt._jit is not None:            # handles point at the state replaced below
        opt._jit.invalidate_loaded()
    for bucket, state, rows, steps, live in installs:
        bucket.state = state
        bucket.rows = rows if state is not None else ()
        bucket.table[:, STEP] = steps
        bucket.table[:, LIVE] = live
        bucket.installed()
