"""What host and device buckets share: the table, the step and live columns,
and the layout of the state rows.

A bucket is the set of parameters of one group that share a dtype. It owns
their state in one array ``state`` of shape ``(rows, total)``, one row per
state array of the rule that exists under the group's hyperparameters (named
in ``rows``, torch's names), and the int64 ``table`` the kernels read (see
:mod:`numadam.cpu.kernels`). Per-parameter state as users see it
(``opt.state[p]["exp_avg"]``) is a view into ``state``.
"""

import numpy as np

from numadam.cpu.kernels import LIVE, NCOLS, OFFSET, PTR_P, SIZE, STEP

__all__ = ["BucketBase"]


class BucketBase:
    """The parameters ``params`` (global indices ``indices``) of group
    ``group_index`` under ``rule``; host and device buckets derive from it."""

    def __init__(self, rule, params, indices, group_index, dtype, addresses, shapes, align=1):
        """``align``: every parameter's state starts at a multiple of it (the
        device kernels' vector width); the columns in between are padding."""
        self.rule = rule
        self.params = list(params)
        self.indices = list(indices)
        self.group_index = group_index
        self.dtype = dtype
        self.table = np.zeros((len(self.params), NCOLS), np.int64)
        offset = 0
        for k, (address, shape) in enumerate(zip(addresses, shapes)):
            size = int(np.prod(shape, dtype=np.int64))
            self.table[k, PTR_P] = address
            self.table[k, OFFSET] = offset
            self.table[k, SIZE] = size
            offset += -(-size // align) * align
        self.total = offset
        # The stored state array: (rows, width) of store_dtype (compressed
        # buckets store other types, and 8-bit rows are wider than total).
        self.store_dtype = np.dtype(dtype)
        self.encoded = False    # state rows are not values of the dtype (see write)
        self.width = offset
        # (global index, shape, dtype) of each parameter: what a gradient must match.
        self.expected = [(i, tuple(shape), dtype) for i, shape in zip(self.indices, shapes)]
        self.state = None
        self.rows = ()          # names of the state rows, once the state exists
        self.owned_grad_addresses = None
        self.uses_owned_grads = False

    def __reduce_ex__(self, protocol):
        # The table holds addresses: a copy would write into the original's arrays.
        raise TypeError(f"{type(self).__name__} holds memory addresses and cannot be "
                        "copied or pickled; copy or pickle the optimizer instead")

    def initial_state(self, args, values=None):
        """A host array of the initial state under kernel args ``args``."""
        state = np.zeros((len(args.rows), self.total), self.dtype)
        if values is not None:
            for row, value in enumerate(values):
                if value != 0:
                    state[row].fill(value)
        return state

    def check_rows(self, rows, where):
        """Refuse hyperparameters that need state rows this bucket lacks.

        Dropping trailing rows is fine (AMSGrad switched off keeps its
        ``max_exp_avg_sq``, unused, as torch does); a row that would have
        to appear (momentum switched on after the first step) has nothing
        to continue from.
        """
        if self.state is None or rows == self.rows[:len(rows)]:
            return
        missing = [name for name in rows if name not in self.rows]
        detail = (f"needs {', '.join(missing)}, which the state made at the first step "
                  "lacks" if missing else f"changes the layout of the state {self.rows}")
        raise ValueError(
            f"{where}: a hyperparameter was changed after the first step in a way that "
            f"{detail}; create the optimizer with the final setting instead (or "
            "load_state_dict a state that has it)")

    def param_state(self, k):
        """Parameter ``k``'s state as a plain dict of copies (for state_dict),
        in torch's key order."""
        out = {"step": int(self.table[k, STEP])} if self.rule.keeps_step else {}
        for name in self.keys():
            out[name] = self.host_view(k, self.rows.index(name)).copy()
        return out

    def keys(self):
        """The names of the state rows in the rule's declared order, torch's
        (the rows themselves put those the hyperparameters use first: after
        a load, an unused RMSprop momentum_buffer follows grad_avg)."""
        return tuple(s.name for s in self.rule.state if s.name in self.rows)

    def stored_arrays(self, name, k):
        """``(key, shape, dtype)`` of each array a state dict holds for state
        array ``name`` of parameter ``k`` (compressed buckets hold more)."""
        _, shape, dtype = self.expected[k]
        return ((name, shape, dtype),)

    def put(self, state, k, row, arrays, name):
        """Write parameter ``k``'s state array ``name`` from the checked
        ``arrays`` (a state dict entry) into row ``row`` of ``state``."""
        lo = self.table[k, OFFSET]
        state[row, lo:lo + self.table[k, SIZE]] = arrays[name].reshape(-1)

    def installed(self):
        """Called once ``state`` and ``rows`` were replaced (a load, a copy)."""

    def has_state(self, k):
        """Whether parameter ``k`` has state, as torch's ``state[p]`` is non-empty."""
        return (self.state is not None and bool(self.table[k, LIVE])
                and (self.rule.keeps_step or len(self.rows) > 0))

