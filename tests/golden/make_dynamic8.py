"""Generate ``dynamic8.npz``: bitsandbytes' signed and unsigned dynamic maps.

Run with torch 2.13.0 (CPU build) and bitsandbytes installed, from the
repository root::

    python tests/golden/make_dynamic8.py

The maps are ``bitsandbytes.functional.create_dynamic_map(signed)`` with its
defaults (``max_exponent_bits=7, total_bits=8``), taken from the library
itself, as float32 arrays ``signed`` and ``unsigned`` of 256 entries each; the
file records ``torch_version`` and ``bitsandbytes_version``. The map is built
by ``torch.linspace`` in float32, whose CPU kernel on x86-64 evaluates
``start + step * i`` as one fused multiply-add, so the golden must come from
torch rather than from a NumPy transcription.
"""

import os

import numpy as np
import torch
from bitsandbytes import __version__ as bnb_version
from bitsandbytes.functional import create_dynamic_map

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dynamic8.npz")


def main():
    np.savez(
        OUT,
        signed=create_dynamic_map(signed=True).numpy(),
        unsigned=create_dynamic_map(signed=False).numpy(),
        torch_version=np.array(torch.__version__),
        bitsandbytes_version=np.array(bnb_version),
    )
    print("wrote", OUT)


if __name__ == "__main__":
    main()
