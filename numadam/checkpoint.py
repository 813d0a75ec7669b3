"""Checkpoint files: versioned, validated, atomic, and free of pickle.

A checkpoint is a ``.npz`` (zip) archive of stored (uncompressed) members.
The member ``__numadam__`` holds a JSON header (format name, version,
hyperparameters, step counts, the list of arrays, and optionally the state
dict of a learning-rate schedule); the state arrays are plain ``.npy``
members. The reader trusts nothing in the file: every member's size
is checked against the file's (and all of them together: members may not
overlap), its ``.npy`` header must be exactly what
:func:`numpy.lib.format.write_array` writes for a float array (parsed by a
regular expression, never evaluated), the array it announces must fill the
member to the byte, and the member's zip CRC is verified before the array is
returned. Every malformed file raises :class:`CheckpointError`.
"""

import errno
import json
import numbers
import os
import re
import stat
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from numadam.core import checkpoint_file as _checkpoint_file
from numadam.core.state_dict import as_step
from numadam.formats import FORMATS

__all__ = ["save", "load", "CheckpointError", "FORMAT", "VERSION"]

FORMAT = "numadam-checkpoint"
VERSION = 4
# Version 1 held Adam's state only; its files read unchanged. Version 2 keeps
# every state array a rule names, and a null step count for rules without one.
# Version 3 adds "schedule": null, or a schedule's state dict. Version 4 adds
# "state_format" (numadam.formats) and its stored arrays: bfloat16 bits as
# uint16, 8-bit codes as uint8 beside float32 "<name>_absmax" arrays.
_READABLE = (1, 2, 3, 4)
_STATE_FORMAT = "state_format"
_STATE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_HEADER = "__numadam__"
_HEADER_KEYS = {"format", "version", "param_groups", "steps", "members"}
_SCHEDULE = "schedule"
# JSON has no infinities or NaN (ReduceLROnPlateau's best starts at inf):
# such a float is written as {"__float__": "inf"}, a dict no state dict holds.
_FLOAT = "__float__"
_NONFINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
# Nesting of a schedule's state (a SequentialLR of ChainedSchedulers of ...).
_MAX_DEPTH = 32
# The only .npy headers numadam writes: a C-ordered float32/float64 array of
# any shape (uint16 or uint8 for compressed state), or the 0-d unicode string
# that holds the JSON header. NumPy writes a one-byte type's order as "|".
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|])(f4|f8|u2|u1|U[1-9][0-9]{0,11})', 'fortran_order': False, "
    rb"'shape': \((|[0-9]{1,19},|[0-9]{1,19}(?:, [0-9]{1,19})+)\), \}"
    rb" *\n")
_NPY_MAGIC = b"\x93NUMPY"
# Bytes read at a time into the destination array: 1 MiB loads 120 MB as fast
# as np.load here; 16 MiB chunks (copies that miss the cache) took 1.5x as long.
_CHUNK = 1 << 20
# torch.save's legacy (non-zip) format begins with the pickled magic number
# 0x1950a86a20f9469cfc6c (torch/serialization.py), protocol 2.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# torch.save's zip format: "<archive>/data.pkl" beside "<archive>/version".
_TORCH_ZIP_MEMBER = re.compile(r"([^/]+)/data\.pkl")
_TORCH_ADVICE = (
    "is a PyTorch file (torch.save); numadam never unpickles. Convert it where torch is "
    "installed: sd = torch.load(path, weights_only=True), replace every tensor in "
    "sd['state'] by its .numpy(), then opt.load_state_dict(sd) and opt.save(new_path)")


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, or not one numadam can read."""


# ------------------------------------------------------------------ writing
def _json_value(value, where):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (list, tuple)) and not any(isinstance(v, (list, tuple))
                                                    for v in value):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} = {value!r} cannot be stored in a checkpoint "
                    "(only numbers, strings, booleans, None and flat lists of them)")


def _schedule_value(value, where, depth=0):
    """A schedule's state as JSON data, non-finite floats spelled out."""
    if depth > _MAX_DEPTH:
        raise TypeError(f"{where} nests deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return {_FLOAT: repr(value)}
        return value
    if isinstance(value, (list, tuple)):
        return [_schedule_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value) or (_FLOAT in value):
            raise TypeError(f"{where} has keys {list(value)!r}; a checkpoint stores dicts "
                            f"whose keys are strings other than {_FLOAT!r}")
        return {key: _schedule_value(v, f"{where}[{key!r}]", depth + 1)
                for key, v in value.items()}
    raise TypeError(f"{where} = {value!r} cannot be stored in a checkpoint (a schedule's "
                    "state holds numbers, strings, booleans, None, lists and dicts; a "
                    "callable is not stored: rebuild it and load the state into it)")


def _schedule_state(schedule):
    """The state dict of ``schedule`` (a schedule, or its state dict)."""
    if isinstance(schedule, Mapping):
        state = schedule
    elif callable(getattr(schedule, "state_dict", None)) and hasattr(schedule, "optimizer"):
        state = schedule.state_dict()
    else:
        raise TypeError(f"schedule must be a numadam schedule or its state dict, got "
                        f"{schedule!r}")
    return _schedule_value(state, "schedule")


def _state_array(value, where):
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64, np.uint16, np.uint8):
        raise TypeError(f"{where} has dtype {array.dtype}; a checkpoint holds float32 "
                        "and float64 state arrays (uint16 and uint8 for compressed state)")
    # C order: the reader accepts only what write_array writes for C-ordered
    # arrays. np.ascontiguousarray would turn a 0-d array into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def _header_and_arrays(state_dict, schedule=None):
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("save() takes a state dict (opt.state_dict())")
    groups = []
    for gi, group in enumerate(state_dict["param_groups"]):
        if not isinstance(group, Mapping):
            raise TypeError(f"param_groups[{gi}] must be a dict, got {group!r}")
        if not all(isinstance(key, str) for key in group):
            raise TypeError(f"param_groups[{gi}] has keys {list(group)}; a checkpoint "
                            "stores groups whose keys are strings")
        groups.append({key: _json_value(value, f"param_groups[{gi}][{key!r}]")
                       for key, value in group.items()})
    steps, members, arrays = {}, {}, {}
    for pid, entry in state_dict["state"].items():
        if isinstance(pid, (bool, np.bool_)) or not isinstance(pid, numbers.Integral):
            raise TypeError(f"state keys must be integers, got {pid!r}")
        where = f"state[{pid!r}]"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a dict, got {entry!r}")
        bad = [key for key in entry if not (isinstance(key, str) and key != "step"
                                            and _STATE_NAME.fullmatch(key))]
        if [key for key in bad if key != "step"]:
            raise ValueError(f"{where} has entries {bad!r}; state arrays are named with "
                             "lowercase letters, digits and underscores")
        steps[str(int(pid))] = (as_step(entry["step"], f"{where}['step']")
                                if "step" in entry else None)
        members[str(int(pid))] = [key for key in entry if key != "step"]
        for key in members[str(int(pid))]:
            arrays[f"state.{int(pid)}.{key}"] = _state_array(entry[key], f"{where}[{key!r}]")
    state_format = state_dict.get(_STATE_FORMAT, "full")
    if not isinstance(state_format, str) or state_format not in FORMATS:
        raise ValueError(f"state_dict['state_format'] must be one of {FORMATS}, got "
                         f"{state_format!r}")
    header = {"format": FORMAT, "version": VERSION, "param_groups": groups,
              "steps": steps, "members": members,
              _SCHEDULE: None if schedule is None else _schedule_state(schedule),
              _STATE_FORMAT: state_format}
    return header, arrays


def save(state_dict, path, schedule=None):
    """Write ``state_dict`` (and a schedule's state) to ``path`` atomically.

    The archive is written to a temporary file in the same directory, flushed
    to disk, and renamed over ``path``: a crash or an exception mid-save leaves
    the previous checkpoint (if any) exactly as it was. A new file gets the
    permissions the umask allows (as ``open`` would give it); a file saved over
    keeps its mode. Temporaries that a killed save of the same ``path`` left
    behind are removed; a save holds a lock on its temporary until the rename,
    so the temporary of a save still running is never touched.

    Parameters
    ----------
    state_dict : dict
        From ``opt.state_dict()``. Group entries must be numbers, strings,
        booleans, None or flat lists of them; state arrays float32 or float64.
    path : str or os.PathLike
        Destination; the name is used as given (no ``.npz`` is appended).
    schedule : numadam.schedules.LRScheduler or dict, optional
        A learning-rate schedule (or its ``state_dict()``), stored in the
        header; :func:`load` returns it as the state dict's ``"schedule"``
        entry and ``opt.load(path, schedule=sched)`` restores it.

    Raises
    ------
    TypeError, ValueError
        ``state_dict`` holds something a checkpoint cannot store, or that
        :func:`load` would refuse (group parameter ids that are not integers
        or do not cover the states once each), or a schedule whose state holds
        anything but numbers, strings, booleans, None, lists and dicts with
        string keys (``TypeError``); nothing is written.
    OSError
        The file cannot be written (naming ``path``); the previous checkpoint
        stays in place.
    """
    header, arrays = _header_and_arrays(state_dict, schedule)
    text = json.dumps(header)
    try:
        # What load would refuse (parameter ids that are not integers, or do
        # not cover the states once each) must not be written.
        _checked_header(json.loads(text), "the state dict")
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    members = {_HEADER: np.array(text), **arrays}
    _checkpoint_file.write_atomically(os.fsdecode(os.fspath(path)),
                                      lambda f: np.savez(f, **members))


# ------------------------------------------------------------------ reading
def _member_array(archive, info, size_limit, kind, path):
    """The array stored in ``info``, read into fresh memory and CRC-checked."""
    name = f"{path}: member {info.filename}"
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise CheckpointError(f"{name} is compressed or encrypted")
    if not info.file_size == info.compress_size <= size_limit:
        raise CheckpointError(f"{name} is larger than the file")
    with archive.open(info) as member:
        prefix = member.read(10)
        if len(prefix) < 10 or prefix[:6] != _NPY_MAGIC or prefix[6:8] not in (b"\1\0", b"\2\0"):
            raise CheckpointError(f"{name} is not a .npy array")
        if prefix[6] == 1:
            length = int.from_bytes(prefix[8:10], "little")
        else:
            prefix += member.read(2)
            length = int.from_bytes(prefix[8:12], "little")
        if len(prefix) + length > info.file_size:
            raise CheckpointError(f"{name} has a .npy header longer than itself")
        match = _NPY_HEADER.fullmatch(member.read(length))
        if match is None:
            raise CheckpointError(f"{name} has a .npy header numadam does not write")
        order, code, shape = match.groups()
        dtype = np.dtype(order.decode() + code.decode())
        shape = tuple(int(n) for n in shape.split(b",") if n.strip())
        if dtype.kind not in kind:
            raise CheckpointError(f"{name} has dtype {dtype}")
        count = 1
        for n in shape:
            count *= n
        nbytes = info.file_size - len(prefix) - length
        if count * dtype.itemsize != nbytes:
            raise CheckpointError(
                f"{name} announces shape {shape} of {dtype} but holds {nbytes} bytes")
        # Reading the member's last byte is what makes zipfile compare its
        # CRC (BadZipFile on a mismatch), so nothing returns unverified.
        out = np.empty(count, dtype)
        view = memoryview(out).cast("B")
        for start in range(0, nbytes, _CHUNK):
            chunk = member.read(min(_CHUNK, nbytes - start))
            view[start:start + len(chunk)] = chunk    # a short read fails here
    if not dtype.isnative:
        out = out.astype(dtype.newbyteorder("="))
    return out.reshape(shape)


def _checked_header(header, path):
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a numadam checkpoint")
    if "version" not in header:
        raise CheckpointError(f"{path} has no checkpoint format version")
    version = header["version"]
    if type(version) is not int or version not in _READABLE:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this "
                              f"numadam reads versions {list(_READABLE)}")
    keys = _HEADER_KEYS | {_SCHEDULE} if version >= 3 else _HEADER_KEYS
    keys = keys | {_STATE_FORMAT} if version >= 4 else keys
    if header.keys() != keys:
        raise CheckpointError(f"{path} has a header with entries {sorted(header)}; "
                              f"version {version} has {sorted(keys)}")
    if version >= 4 and header[_STATE_FORMAT] not in FORMATS:
        raise CheckpointError(f"{path} has state_format {header[_STATE_FORMAT]!r}; numadam "
                              f"knows {list(FORMATS)}")
    if header.get(_SCHEDULE) is not None:
        if not isinstance(header[_SCHEDULE], dict):
            raise CheckpointError(f"{path} has a schedule that is not a state dict")
        _decoded(header[_SCHEDULE], path)
    groups, steps, members = header["param_groups"], header["steps"], header["members"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path} has malformed parameter groups")
    for group in groups:
        params = group.get("params")
        if not isinstance(params, list) or any(type(i) is not int for i in params):
            raise CheckpointError(f"{path} has a group whose params are not integers")
        if any(isinstance(v, dict) or isinstance(v, list) and
               any(isinstance(x, (list, dict)) for x in v) for v in group.values()):
            raise CheckpointError(f"{path} has a group entry nested deeper than a list")
    if not (isinstance(steps, dict) and isinstance(members, dict)
            and steps.keys() == members.keys()):
        raise CheckpointError(f"{path} has malformed step counts")
    ids = [i for group in groups for i in group["params"]]
    if len(set(ids)) != len(ids) or not {str(i) for i in ids} >= members.keys():
        raise CheckpointError(f"{path} has parameter ids {ids} that do not cover its "
                              f"states {sorted(members)} once each")
    for pid, keys in members.items():
        if not re.fullmatch(r"-?(0|[1-9][0-9]{0,18})", pid):
            raise CheckpointError(f"{path} has a state key {pid!r} that is not an integer")
        if not (steps[pid] is None and version > 1 or type(steps[pid]) is int
                and 0 <= steps[pid] < 2 ** 63):
            raise CheckpointError(f"{path} has step count {steps[pid]!r} for state {pid}; "
                                  "step counts are integers in [0, 2**63)")
        if not (isinstance(keys, list) and all(isinstance(k, str) and _STATE_NAME.fullmatch(k)
                                               for k in keys)
                and len(set(keys)) == len(keys)
                and (version > 1 or keys == [k for k in _ADAM_KEYS if k in keys])):
            raise CheckpointError(f"{path} lists state arrays {keys!r} for state {pid}")


def _decoded(value, path, depth=0):
    """A schedule's stored state with its non-finite floats restored; any
    value :func:`save` could not have written is a CheckpointError."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{path} has a schedule nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, float) and (value != value or abs(value) == float("inf")):
        raise CheckpointError(f"{path} has a bare non-finite number in its schedule")
    if isinstance(value, list):
        return [_decoded(v, path, depth + 1) for v in value]
    if isinstance(value, dict):
        if _FLOAT in value:
            # a list or dict spelling would make the lookup a TypeError
            if len(value) != 1 or not isinstance(value[_FLOAT], str) \
                    or value[_FLOAT] not in _NONFINITE:
                raise CheckpointError(f"{path} has a malformed number {value!r} in its "
                                      "schedule")
            return _NONFINITE[value[_FLOAT]]
        return {key: _decoded(v, path, depth + 1) for key, v in value.items()}
    return value


def _not_a_checkpoint(archive, path):
    names = set(archive.namelist())
    for name in names:
        match = _TORCH_ZIP_MEMBER.fullmatch(name)
        if match and f"{match[1]}/version" in names:
            return CheckpointError(f"{path} {_TORCH_ADVICE}")
    return CheckpointError(f"{path} is not a numadam checkpoint (no header)")


def _read(file, path):
    size = os.fstat(file.fileno()).st_size
    start = file.read(len(_TORCH_LEGACY_MAGIC))
    if start == _TORCH_LEGACY_MAGIC:
        raise CheckpointError(f"{path} {_TORCH_ADVICE}")
    if start[:1] == b"\x80":       # pickle protocol 2+ begins with the PROTO opcode
        raise CheckpointError(f"{path} is a Python pickle, not a numadam checkpoint; "
                              "numadam never unpickles (unpickling runs code from the file)")
    if start.startswith(_NPY_MAGIC):
        raise CheckpointError(f"{path} is a single .npy array, not a numadam checkpoint")
    file.seek(0)
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if f"{_HEADER}.npy" not in names:
            raise _not_a_checkpoint(archive, path)
        if len(set(names)) != len(names):
            raise CheckpointError(f"{path} holds a member twice")
        # Stored members that do not overlap fit in the file together. Nested
        # ones (a member's data holding the next member) would each pass alone
        # and make a load take many times the file's size in memory.
        if sum(info.file_size for info in infos) > size:
            raise CheckpointError(f"{path} has overlapping members (they hold more bytes "
                                  "than the file)")
        by_name = {info.filename: info for info in infos}
        text = _member_array(archive, by_name[f"{_HEADER}.npy"], size, "U", path)
        if text.shape != ():
            raise CheckpointError(f"{path} has a header of shape {text.shape}")
        # NumPy makes a str of any UTF-32 code, even beyond U+10FFFF, and
        # json.loads then fails on it with SystemError.
        if np.frombuffer(text.tobytes(), np.uint32).max(initial=0) > 0x10FFFF:
            raise CheckpointError(f"{path} has a header that is not Unicode text")
        try:
            header = json.loads(str(text[()]))
        except (ValueError, RecursionError) as error:
            raise CheckpointError(f"{path} has an unreadable header: {error}") from None
        _checked_header(header, path)
        expected = {f"state.{pid}.{key}.npy" for pid, keys in header["members"].items()
                    for key in keys} | {f"{_HEADER}.npy"}
        if expected != set(names):
            raise CheckpointError(
                f"{path} lacks members {sorted(expected - set(names))} and holds "
                f"unexpected members {sorted(set(names) - expected)}")
        state = {}
        for pid, keys in header["members"].items():
            step = header["steps"][pid]
            entry = {} if step is None else {"step": step}
            for key in keys:
                entry[key] = _member_array(archive, by_name[f"state.{pid}.{key}.npy"], size,
                                           "f" if header["version"] < 4 else "fu", path)
            state[int(pid)] = entry
    groups = []
    for group in header["param_groups"]:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    out = {"state": state, "param_groups": groups}
    if header.get(_STATE_FORMAT, "full") != "full":
        out[_STATE_FORMAT] = header[_STATE_FORMAT]
    if header.get(_SCHEDULE) is not None:
        out[_SCHEDULE] = _decoded(header[_SCHEDULE], path)
    return out


def load(path):
    """Read a checkpoint written by :func:`save`; returns its state dict.

    Step counts come back as Python ints and state arrays as fresh, writeable
    NumPy arrays of the saved shape and dtype. A file saved with a schedule
    adds its state dict as the entry ``"schedule"`` (``load_state_dict``
    ignores it; ``opt.load(path, schedule=sched)`` loads both).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    OSError
        ``path`` cannot be opened (no permission, a directory, a loop of
        symbolic links): the error the operating system gives, naming ``path``.
    CheckpointError
        The file is truncated or corrupted (bad zip structure, size or CRC, a
        malformed header), is not a numadam checkpoint (a pickle, a torch
        file: the message says how to convert one), has another format
        version, or is not a regular file (a FIFO or a device, which is
        neither waited for nor read).
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO would wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {os.fsdecode(path)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise CheckpointError(f"{os.fsdecode(path)} is not a regular file (a pipe or a "
                              "device); a checkpoint is read from a file")
    with open(fd, "rb") as file:
        try:
            return _read(file, os.fsdecode(path))
        except CheckpointError:
            raise
        # What zipfile raises for damaged archives, short reads and offsets
        # past the end of the file; every one means the file is unusable.
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                KeyError, NotImplementedError, RuntimeError, OverflowError,
                struct.error) as error:
            raise CheckpointError(f"{os.fsdecode(path)} is truncated or corrupted: "
                                  f"{type(error).__name__}: {error}") from error


def _check_schedule_of(optimizer, schedule):
    if schedule is not None and getattr(schedule, "optimizer", None) is not optimizer:
        raise ValueError(f"schedule {type(schedule).__name__} drives another optimizer; "
                         "save and load a schedule with the optimizer it was built on")


def _schedule_to_save(optimizer, schedule):
    """The state dict of ``schedule`` (over ``optimizer``) to store, or None.

    ValueError if the schedule drives another optimizer, or if its state
    would not load back into it (a state the schedule's own checks refuse,
    such as a hand-set non-finite rate, would otherwise be found at load).
    """
    _check_schedule_of(optimizer, schedule)
    if schedule is None:
        return None
    state = schedule.state_dict()
    try:
        schedule._prepare(state)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{type(schedule).__name__}'s state would not load back: "
                         f"{error}") from None
    return state


def _schedule_loader(schedule, saved, name):
    """The function that loads ``saved`` (a file's schedule state, or None)
    into ``schedule``, after checking it fits; CheckpointError naming ``name``."""
    if saved is None:
        raise CheckpointError(f"{name} holds no schedule (it was saved without one)")
    try:
        return schedule._prepare(saved)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{name} holds a schedule state that does not fit "
                              f"{type(schedule).__name__}: {error}") from None


def save_with(optimizer, path, schedule):
    """``optimizer.save(path, schedule=schedule)``."""
    schedule_state = _schedule_to_save(optimizer, schedule)
    save(optimizer.state_dict(), path, schedule_state)


def load_into(optimizer, path, schedule):
    """``optimizer.load(path, schedule=schedule)``: both, or neither.

    The file and the schedule's state are checked before anything changes;
    a schedule's state that does not fit ``schedule`` (another class, other
    group counts, values its constructor refuses) is a CheckpointError.
    """
    _check_schedule_of(optimizer, schedule)
    state_dict = load(path)
    saved = state_dict.pop(_SCHEDULE, None)
    apply = None
    if schedule is not None:
        apply = _schedule_loader(schedule, saved, os.fsdecode(os.fspath(path)))
    optimizer.load_state_dict(state_dict)
    if apply is not None:
        apply()
