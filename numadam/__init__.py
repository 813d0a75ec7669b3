"""numadam: Adam, AdamW and AMSGrad as fused Numba kernels, bit-exact with torch.

>>> import numpy as np, numadam
>>> x = np.zeros(3)
>>> opt = numadam.Adam([x], lr=0.1)
>>> opt.step([x - 1.0])                  # one step on 0.5 * |x - 1|^2
>>> x
array([0.1, 0.1, 0.1])
"""

import importlib

from numadam.core.config import config
from numadam.rules import CLASSES as _CLASSES
from numadam.rules import module as _rule_module
from numadam.rules.adam import Adam, AdamW

__all__ = ["Adam", "AdamW", "minimize", "functional", "save", "load", "CheckpointError",
           "config", "__version__"]
__version__ = "0.1.0"

# Loaded on first use, as the other rules' classes: an optimizer alone never
# needs them. The functional update builds and registers its Numba overloads
# at import, and all three cost `import numadam` 25 ms (-X importtime).
_LAZY = {"functional": ("numadam.functional", None),
         "minimize": ("numadam.fit.minimize", "minimize"),
         "save": ("numadam.checkpoint", "save"),
         "load": ("numadam.checkpoint", "load"),
         "CheckpointError": ("numadam.checkpoint", "CheckpointError")}


def __getattr__(name):
    if name in _CLASSES:
        return getattr(_rule_module(_CLASSES[name]), name)
    if name in _LAZY:
        module, attribute = _LAZY[name]
        module = importlib.import_module(module)
        return module if attribute is None else getattr(module, attribute)
    raise AttributeError(f"module 'numadam' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CLASSES) | set(_LAZY))
