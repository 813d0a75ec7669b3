"""Storage formats of optimizer state, and bfloat16 parameters.

Every rule's state arrays can be stored in one of three formats, chosen per
optimizer with ``state_format``:

``"full"``
    The parameter's dtype (float32 for bfloat16 parameters). The default.
``"bfloat16"``
    2 bytes per value: computed in float32, rounded to nearest even with
    integer bit operations (:mod:`numadam.formats.bf16`), so every backend
    stores the same bits.
``"8bit"``
    Block-wise dynamic quantisation as in bitsandbytes' 8-bit optimizers
    (arXiv 2110.02861): blocks of :data:`BLOCK` elements of one parameter,
    one float32 absmax per block, and one byte per value indexing a
    256-entry dynamic map (:mod:`numadam.formats.dynamic8`); signed for state
    that can be negative, unsigned for state that cannot. Parameters under
    :data:`MIN_8BIT` elements keep full float32 state, as bitsandbytes does.

Hyperparameters and host scalars are never stored in bfloat16 (beta2 = 0.999
is 1.0 there); they stay float64 on the host and float32 in the kernels.

Parameters may be ``ml_dtypes.bfloat16`` arrays (the dtype JAX uses); the
update is computed in float32 and written back with round-to-nearest-even, or
with ``stochastic_rounding=True`` by adding 16 random bits from a
counter-based generator keyed by ``(seed, parameter, step, element)``.
"""

import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["FORMATS", "BLOCK", "MIN_8BIT", "Storage", "storage", "is_bfloat16",
           "convert_state_dict"]

FORMATS = ("full", "bfloat16", "8bit")
BLOCK = 256          # elements per 8-bit block (bitsandbytes' blockwise optimizers, torchao)
MIN_8BIT = 4096      # bitsandbytes' min_8bit_size: smaller state stays float32


def is_bfloat16(dtype):
    """Whether ``dtype`` is bfloat16 (``ml_dtypes.bfloat16``), without
    importing ml_dtypes."""
    dtype = np.dtype(dtype)
    return dtype.name == "bfloat16" and dtype.itemsize == 2


@dataclass(frozen=True)
class Storage:
    """An optimizer's storage settings, validated (see :func:`storage`)."""

    state_format: str = "full"
    stochastic_rounding: bool = False
    seed: int = 0

    @property
    def plain(self):
        """Full state, no stochastic rounding: the optimizer's usual buckets."""
        return self.state_format == "full" and not self.stochastic_rounding


def storage(state_format="full", stochastic_rounding=False, seed=0):
    """The validated :class:`Storage` of the constructor arguments, or a
    ``ValueError`` that names the bad one."""
    if not isinstance(state_format, str) or state_format not in FORMATS:
        raise ValueError(f"state_format must be one of {FORMATS}, got {state_format!r}")
    if not isinstance(stochastic_rounding, (bool, np.bool_)):
        raise ValueError(f"stochastic_rounding must be True or False, got "
                         f"{stochastic_rounding!r}")
    if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
            or not 0 <= int(seed) < 2 ** 63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return Storage(state_format, bool(stochastic_rounding), int(seed))


def __getattr__(name):
    # Lazy: the conversion imports the codecs and every rule.
    if name == "convert_state_dict":
        from numadam.formats.convert import convert_state_dict
        return convert_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
