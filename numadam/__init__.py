"""numadam: Adam, AdamW and AMSGrad as fused Numba kernels, bit-exact with torch.

>>> import numpy as np, numadam
>>> x = np.zeros(3)
>>> opt = numadam.Adam([x], lr=0.1)
>>> opt.step([x - 1.0])                  # one step on 0.5 * |x - 1|^2
>>> x
array([0.1, 0.1, 0.1])
"""

from . import functional
from ._config import config
from ._minimize import minimize
from .checkpoint import CheckpointError, load, save
from .optimizer import Adam, AdamW

__all__ = ["Adam", "AdamW", "minimize", "functional", "save", "load", "CheckpointError",
           "config", "__version__"]
__version__ = "0.1.0"
