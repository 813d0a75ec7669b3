"""numadam: Adam, AdamW and AMSGrad as fused Numba kernels, bit-exact with torch.

>>> import numpy as np, numadam
>>> x = np.zeros(3)
>>> opt = numadam.Adam([x], lr=0.1)
>>> opt.step([x - 1.0])                  # one step on 0.5 * |x - 1|^2
>>> x
array([0.1, 0.1, 0.1])
"""

from numadam import functional
from numadam.core.config import config
from numadam.fit.minimize import minimize
from numadam.checkpoint import CheckpointError, load, save
from numadam.core.optimizer import Adam, AdamW

__all__ = ["Adam", "AdamW", "minimize", "functional", "save", "load", "CheckpointError",
           "config", "__version__"]
__version__ = "0.1.0"
