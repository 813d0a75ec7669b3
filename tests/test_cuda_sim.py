"""Run the CUDA backend's tests under Numba's CUDA simulator, in a subprocess.

Numba reads ``NUMBA_ENABLE_CUDASIM`` when it is imported, and this process
imported it long ago, so the simulated tests (``tests/cuda/sim_backend.py``)
run in a fresh interpreter. ``tests/cuda/ptx_check.py`` compiles the kernels
for an H200 (sm_90) without a GPU where libNVVM is installed, and checks that
every multiply is ``mul.rn`` (never contracted into an FMA) and every FMA is
one the CPU path has too.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77   # ptx_check.py exits with this when libNVVM or NVRTC is missing

needs_numba_cuda = pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason="numba-cuda is not installed (pip install -e '.[test]' installs it)")


def _run(args, **env):
    environment = dict(os.environ, **env)
    if not env:
        environment.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, *args], cwd=os.path.dirname(HERE),
                          env=environment, capture_output=True, text=True, timeout=600)


@needs_numba_cuda
def test_cuda_backend_under_the_simulator():
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                   os.path.join(HERE, "cuda", "sim_backend.py")], NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


@needs_numba_cuda
def test_kernels_compile_without_contracted_multiply_adds():
    result = _run([os.path.join(HERE, "cuda", "ptx_check.py")])
    if result.returncode == SKIP:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@needs_numba_cuda
def test_host_overhead_script_runs():
    """scripts/cuda_host_overhead.py (the README's host-side figures) still runs;
    its timings are reported, not asserted."""
    result = _run([os.path.join(os.path.dirname(HERE), "scripts", "cuda_host_overhead.py"),
                   "--reps", "20"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for row in ("the same g each step", "alternates between two", "opt.grads"):
        assert row in result.stdout


@needs_numba_cuda
def test_gpu_check_script_runs_under_the_simulator(tmp_path):
    """scripts/gpu_check.py gets ~15 minutes of GPU time when a GPU is lent;
    a typo found there costs a session. --smoke runs every line of it here,
    with tiny sizes, under the simulator (its figures mean nothing)."""
    result = _run([os.path.join(os.path.dirname(HERE), "scripts", "gpu_check.py"), "--smoke",
                   "--out", str(tmp_path)], NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "all checks passed" in result.stdout
    report = (tmp_path / "gpu_check.json").read_text()
    for section in ('"parity"', '"adapter"', '"bandwidth"', '"latency"'):
        assert section in report
    assert "error" not in report
