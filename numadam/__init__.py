"""numadam: Adam, AdamW and AMSGrad as fused Numba kernels, bit-exact with torch.

>>> import numpy as np, numadam
>>> x = np.zeros(3)
>>> opt = numadam.Adam([x], lr=0.1)
>>> opt.step([x - 1.0])                  # one step on 0.5 * |x - 1|^2
>>> x
array([0.1, 0.1, 0.1])
"""

from numadam import functional
from numadam.checkpoint import CheckpointError, load, save
from numadam.core.config import config
from numadam.fit.minimize import minimize
from numadam.rules import CLASSES as _CLASSES
from numadam.rules import module as _rule_module
from numadam.rules.adam import Adam, AdamW

__all__ = ["Adam", "AdamW", "minimize", "functional", "save", "load", "CheckpointError",
           "config", "__version__"]
__version__ = "0.1.0"


def __getattr__(name):
    # The other rules' classes load on first use: an unused rule costs nothing.
    if name in _CLASSES:
        return getattr(_rule_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'numadam' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CLASSES))
