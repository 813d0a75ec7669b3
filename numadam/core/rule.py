"""The update-rule seam: what a rule declares, and what the engine derives.

A rule (one module in :mod:`numadam.rules`) declares an :class:`UpdateRule`:

- its hyperparameters, in torch's constructor order, each with a default and
  a kind that fixes its validation and where the kernels see it (a float of
  ``hyp``, a bool of ``flags``, or nowhere);
- its state arrays, named as in torch's state dict, each with its initial
  value and the condition under which it exists;
- whether torch keeps a ``step`` for it, and whether torch creates its state
  at construction (Adagrad) instead of at the first step;
- three Numba functions: ``scalars_into(out, step, first, hyp)`` fills the
  per-parameter scalar vector (computed in float64 as torch's host code does,
  rounded once to the parameter dtype), ``loop_scalars(s, flags)`` unpacks
  it into locals, and ``element(p, g, a, b, c, sc, flags)`` is the update of
  one element, returning ``(p, a, b, c)``.

``a, b, c`` are the element's *present* state values in declared order (at
most three): with RMSprop's ``centered`` and no momentum, ``b`` is
``grad_avg``. Everything else (kernels on every backend, validation, state
dicts, checkpoints, the functional update, the sharded optimizer, ``minimize``
and the benchmarks) is driven by this declaration.
"""

import math
import numbers
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Hyper", "StateArray", "UpdateRule", "MAX_ROWS"]

# The kernels pass state rows as separate slices, one loop per row count.
MAX_ROWS = 3

# Kinds of hyperparameter: how one is validated and where the kernels see it.
#   "nonneg"  a finite real >= 0, one float of ``hyp``
#   "real"    a finite real, one float of ``hyp``
#   "betas"   a pair of reals in [0, 1), two floats of ``hyp``
#   "flag"    a bool, one entry of ``flags``
#   "init"    a finite real >= 0 used only to initialise state (not in ``hyp``)
KINDS = ("nonneg", "real", "betas", "flag", "init")


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: ``name``, ``default`` and ``kind`` (see ``KINDS``)."""

    name: str
    default: object
    kind: str = "nonneg"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown hyperparameter kind {self.kind!r}")

    def check(self, value):
        """``value`` validated and normalised (Python floats and bools, so
        Numba never compiles a second specialisation for an int), or a
        ``ValueError`` that names the hyperparameter and the value."""
        name, kind = self.name, self.kind
        if kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            return bool(value)
        if kind == "betas":
            if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__")
                    or len(value) != 2):
                raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
            pair = tuple(_real(f"{name}[{i}]", b, 0.0) for i, b in enumerate(value))
            for i, b in enumerate(pair):
                if not b < 1.0:
                    raise ValueError(f"{name}[{i}] must be in [0, 1), got {b!r}")
            return pair
        return _real(name, value, None if kind == "real" else 0.0)


def _real(name, value, low):
    """``value`` as a finite float (>= ``low`` unless None), or a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class StateArray:
    """One state array per parameter, named as in torch's state dict.

    ``init`` is its initial value: a float, or the name of an ``"init"``
    hyperparameter (Adagrad's ``initial_accumulator_value``). ``when`` names
    the condition under which it exists: ``None`` (always), a flag
    hyperparameter (``"amsgrad"``), or a real one that must be non-zero
    (``"momentum"``). ``signed``: whether its values can be negative, which
    picks the 8-bit format's signed or unsigned map.
    """

    name: str
    init: object = 0.0
    when: str = None
    signed: bool = True


@dataclass(frozen=True, eq=False)
class UpdateRule:
    """The declaration of an update rule (see the module docstring)."""

    name: str
    hyper: tuple
    state: tuple
    scalars_into: object
    loop_scalars: object
    element: object
    nscalars: int
    module: str
    keeps_step: bool = True
    eager_state: bool = False
    load_defaults: tuple = ()   # hyperparameters a loaded state dict may lack (torch's
                                # __setstate__ fills them with their defaults)
    check: object = None        # optional cross-field check: (values dict) -> None or raise
    hyper_by_name: dict = field(init=False, repr=False)
    # Per hyperparameter: its index in ``hyp`` when it is a real that only
    # ``hyp`` depends on (not betas, flags, initial values, or a real that
    # decides which state exists, like SGD's momentum), else -1.
    hyp_slots: tuple = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "hyper_by_name", {h.name: h for h in self.hyper})
        gates = {s.when for s in self.state}
        slots, index = [], 0
        for h in self.hyper:
            simple = h.kind in ("nonneg", "real") and h.name not in gates
            slots.append(index if simple else -1)
            index += {"betas": 2, "flag": 0, "init": 0}.get(h.kind, 1)
        object.__setattr__(self, "hyp_slots", tuple(slots))
        if len(self.state) > MAX_ROWS:
            raise ValueError(f"a rule has at most {MAX_ROWS} state arrays")

    # ------------------------------------------------------------ names
    @property
    def names(self):
        """Hyperparameter names in torch's order (the keys of a group)."""
        return tuple(h.name for h in self.hyper)

    def defaults(self, **given):
        """Every hyperparameter: ``given`` over the declared defaults."""
        unknown = set(given) - set(self.hyper_by_name)
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)} for {self.name}")
        return {h.name: given.get(h.name, h.default) for h in self.hyper}

    # ------------------------------------------------------- validation
    def validate(self, group):
        """Validate the hyperparameters of ``group`` (a dict holding all of
        them). Returns ``(values, args)``: the normalised values by name, and
        the :class:`KernelArgs` the kernels take."""
        values = {h.name: h.check(group[h.name]) for h in self.hyper}
        if self.check is not None:
            self.check(values)
        hyp, flags = [], []
        for h in self.hyper:
            value = values[h.name]
            if h.kind == "flag":
                flags.append(value)
            elif h.kind == "betas":
                hyp.extend(value)
            elif h.kind != "init":
                hyp.append(value)
        return values, KernelArgs(tuple(hyp), tuple(flags), self.state_names(values), values)

    def state_names(self, values):
        """The state arrays that exist under hyperparameters ``values``."""
        return tuple(s.name for s in self.state
                     if s.when is None or values[s.when])

    def initial(self, values):
        """Initial value of each state array under ``values``, in row order."""
        out = []
        for s in self.state:
            if s.when is None or values[s.when]:
                out.append(values[s.init] if isinstance(s.init, str) else float(s.init))
        return out

    def stamp(self):
        """What identifies this rule's compiled code in Numba's cache: its name
        and the size and modification time of its module's source (Numba's
        cache does not see edits to a function defined in another file)."""
        import importlib
        path = importlib.import_module(self.module).__file__
        try:
            info = os.stat(path)
            return (self.name, info.st_size, int(info.st_mtime_ns))
        except OSError:
            return (self.name, 0, 0)


@dataclass(frozen=True)
class KernelArgs:
    """A validated group as the kernels take it: ``hyp`` (floats in declared
    order), ``flags`` (bools in declared order), ``rows`` (the names of the
    state arrays that exist) and ``values`` (every hyperparameter, validated,
    by name)."""

    hyp: tuple
    flags: tuple
    rows: tuple
    values: dict
