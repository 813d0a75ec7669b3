"""Compressed state on CUDA device memory, checked without a GPU.

``tests/cuda/sim_formats.py`` runs under Numba's CUDA simulator in a fresh
interpreter (Numba reads ``NUMBA_ENABLE_CUDASIM`` when it is imported), and
checks that bfloat16 and 8-bit state of float32 device parameters give the
CPU's bits for every rule. The compressed kernels' PTX (no contracted
multiply, the block reduction) is checked with the other kernels' by
``tests/cuda/ptx_check.py`` (``test_cuda_sim.py``).
"""

import os

from test_cuda_sim import HERE, _run, needs_numba_cuda


@needs_numba_cuda
def test_compressed_state_on_the_device_under_the_simulator():
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                   os.path.join(HERE, "cuda", "sim_formats.py")], NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout
