"""numadam: an optimizer engine (Adam, AdamW, SGD, Adagrad, RMSprop) of fused
Numba kernels, bit-exact with torch.optim.

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

__all__ = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "minimize", "functional", "save",
           "load", "CheckpointError", "schedules", "formats", "config", "__version__"]
__version__ = "0.1.0"

# Every rule's class (Adam's too) loads with its rule on first use, and with
# the first of them Numba: ``import numadam`` imports NumPy and numadam's own
# small modules only (about 0.1 s; Numba's import is 0.2 s more here). The
# rest also loads on first use: an optimizer alone never needs it. The functional update builds and registers its Numba overloads
# at import, and all three cost `import numadam` 25 ms (-X importtime).
_LAZY = {"functional": ("numadam.functional", None),
         "minimize": ("numadam.fit.minimize", "minimize"),
         "save": ("numadam.checkpoint", "save"),
         "load": ("numadam.checkpoint", "load"),
         "CheckpointError": ("numadam.checkpoint", "CheckpointError"),
         "schedules": ("numadam.schedules", None),
         "formats": ("numadam.formats", None)}


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
