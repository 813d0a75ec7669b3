"""Checkpoint files: versioned, validated, atomic, and free of pickle.

A checkpoint is a ``.npz`` (zip) archive. The member ``__numadam__`` holds a
JSON header (format name, version, hyperparameters, step counts, the list of
arrays); the state arrays are plain ``.npy`` members. Loading uses
``np.load(allow_pickle=False)`` and ``json``, so it never executes code from
the file, and the zip CRC of every member is checked as it is read.
"""

import json
import numbers
import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from ._bucket import STATE_KEYS

__all__ = ["save", "load", "CheckpointError", "FORMAT", "VERSION"]

FORMAT = "numadam-checkpoint"
VERSION = 1
_HEADER = "__numadam__"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, or not one numadam can read."""


def _json_value(value, where):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} = {value!r} cannot be stored in a checkpoint "
                    "(only numbers, strings, booleans, None and lists of them)")


def _header_and_arrays(state_dict):
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("save() takes a state dict (opt.state_dict())")
    groups = [{key: _json_value(value, f"param_groups[{gi}][{key!r}]")
               for key, value in group.items()}
              for gi, group in enumerate(state_dict["param_groups"])]
    steps, members, arrays = {}, {}, {}
    for pid, entry in state_dict["state"].items():
        pid = _json_value(pid, "a state key")
        if not isinstance(pid, int):
            raise TypeError(f"state keys must be integers, got {pid!r}")
        steps[str(pid)] = int(entry["step"])
        members[str(pid)] = [key for key in STATE_KEYS if key in entry]
        for key in members[str(pid)]:
            arrays[f"state.{pid}.{key}"] = np.ascontiguousarray(entry[key])
    header = {"format": FORMAT, "version": VERSION, "param_groups": groups,
              "steps": steps, "members": members}
    return header, arrays


def save(state_dict, path):
    """Write ``state_dict`` to ``path`` atomically.

    The archive is written to a temporary file in the same directory, flushed
    to disk, and renamed over ``path``: a crash or an exception mid-save leaves
    the previous checkpoint (if any) exactly as it was.

    Parameters
    ----------
    state_dict : dict
        From ``opt.state_dict()``. Group entries must be numbers, strings,
        booleans, None or lists of them.
    path : str or os.PathLike
        Destination; the name is used as given (no ``.npz`` is appended).
    """
    header, arrays = _header_and_arrays(state_dict)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_HEADER: np.array(json.dumps(header))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read(path):
    with np.load(path, allow_pickle=False) as archive:
        if _HEADER not in archive.files:
            raise CheckpointError(f"{path} is not a numadam checkpoint (no header)")
        header = json.loads(str(archive[_HEADER]))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a numadam checkpoint")
        if header.get("version") != VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {header.get('version')!r}; this "
                f"numadam reads version {VERSION}")
        state = {}
        for pid, keys in header["members"].items():
            entry = {"step": int(header["steps"][pid])}
            for key in keys:
                entry[key] = archive[f"state.{pid}.{key}"]
            state[int(pid)] = entry
        expected = {f"state.{pid}.{key}.npy" for pid, keys in header["members"].items()
                    for key in keys} | {f"{_HEADER}.npy"}
        extra = set(archive.zip.namelist()) - expected
        if extra:
            raise CheckpointError(f"{path} holds unexpected members {sorted(extra)}")
    groups = []
    for group in header["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def load(path):
    """Read a checkpoint written by :func:`save`; returns its state dict.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        The file is truncated or corrupted (bad zip structure or CRC), is not
        a numadam checkpoint, or has another format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return _read(path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, TypeError,
            AttributeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupted: {type(error).__name__}: {error}") from error
