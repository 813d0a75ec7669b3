"""``opt.state``: live, torch-like views of the state held in buckets."""

from collections.abc import Mapping, MutableMapping

import numpy as np

from numadam.core import state_dict as _state_dict
from numadam.cpu.kernels import STEP


class StateView(Mapping):
    """``opt.state``: parameters (array or index) -> their live state."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _index(self, key):
        if isinstance(key, (bool, np.bool_)):
            raise KeyError(key)
        if isinstance(key, (int, np.integer)):
            if 0 <= key < len(self._opt._slots):
                return int(key)
            raise KeyError(key)
        index = self._opt._index_of.get(id(key))   # NumPy or device arrays
        if index is None:
            if isinstance(key, np.ndarray) or hasattr(key, "shape"):
                raise KeyError("this array is not a parameter of the optimizer")
            raise KeyError(key)
        return index

    def __getitem__(self, key):
        bucket, row = self._opt._slots[self._index(key)]
        if not bucket.has_state(row):
            raise KeyError(f"parameter {self._index(key)} has no state yet (never stepped)")
        return ParamState(bucket, row)

    def __iter__(self):
        return (i for i, (b, row) in enumerate(self._opt._slots)
                if b.has_state(row))

    def __len__(self):
        return sum(1 for _ in self)

    def __reduce__(self):
        # A copy or pickle is a snapshot: plain dicts holding copies.
        slots = self._opt._slots
        return dict, ({i: slots[i].bucket.param_state(slots[i].row) for i in self},)


class ParamState(MutableMapping):
    """One parameter's state: ``step`` reads and writes the step counter."""

    def __init__(self, bucket, row):
        self._bucket = bucket
        self._row = row

    def _keys(self):
        bucket = self._bucket
        return (("step",) if bucket.rule.keeps_step else ()) + bucket.keys()

    def __getitem__(self, key):
        if key == "step" and self._bucket.rule.keeps_step:
            return int(self._bucket.table[self._row, STEP])
        if key in self._bucket.rows:
            return self._bucket.view(self._row, self._bucket.rows.index(key))
        raise KeyError(key)

    def __setitem__(self, key, value):
        if key == "step" and self._bucket.rule.keeps_step:
            self._bucket.table[self._row, STEP] = _state_dict.as_step(value, "step")
        elif key in self._keys():
            if self._bucket.on_device or self._bucket.encoded:
                self._bucket.write(self._row, self._bucket.rows.index(key), value)
            else:
                np.copyto(self[key], value, casting="same_kind")
        else:
            raise KeyError(key)

    def __delitem__(self, key):
        raise TypeError("optimizer state entries cannot be deleted")

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def __reduce__(self):
        # A copy or pickle is a snapshot: a plain dict holding copies.
        return dict, (self._bucket.param_state(self._row),)

    def __repr__(self):
        return repr(dict(self))
