"""Run the CUDA backend's tests under Numba's CUDA simulator, in a subprocess.

Numba reads ``NUMBA_ENABLE_CUDASIM`` when it is imported, and this process
imported it long ago, so the simulated tests (``tests/cuda/sim_backend.py``)
run in a fresh interpreter. ``tests/cuda/ptx_check.py`` compiles the kernels
for an H200 (sm_90) without a GPU where libNVVM is installed, and checks that
every multiply is ``mul.rn`` (never contracted into an FMA) and every FMA is
one the CPU path has too.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

import optim_configs as oc

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
def test_host_overhead_script_measures_the_stubbed_driver_launch():
    """scripts/cuda_host_overhead.py (the README's host-side figures): every
    row is there with a finite, positive median and best time, and the
    stubbed driver calls show that the driver launch is what it timed, with
    the address table uploaded only where a gradient address changed."""
    reps, rounds = 20, 5
    result = _run([os.path.join(os.path.dirname(HERE), "scripts", "cuda_host_overhead.py"),
                   "--reps", str(reps)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for row in ("the same g each step", "alternates between two", "opt.grads"):
        line = next((x for x in out.splitlines() if row in x), None)
        assert line is not None, out
        median, best = (float(v) for v in line.split()[-2:])
        assert math.isfinite(median) and 0 < best <= median, line
    calls = re.search(r"stubbed driver calls: (\d+) launches, (\d+) uploads", out)
    assert calls, out
    steps = 1 + rounds * reps                   # one warm-up call, then the rounds
    # one launch a step; uploads: the first step of each optimizer, and every
    # step of the alternating row (its first one included)
    assert (int(calls[1]), int(calls[2])) == (3 * steps, steps + 2), out


@needs_numba_cuda
def test_gpu_check_script_runs_under_the_simulator(tmp_path):
    """scripts/gpu_check.py gets ~15 minutes of GPU time when a GPU is lent;
    a typo found there costs a session. --smoke runs every line of it here,
    with tiny sizes, under the simulator (its figures mean nothing)."""
    result = _run([os.path.join(os.path.dirname(HERE), "scripts", "gpu_check.py"), "--smoke",
                   "--out", str(tmp_path)], NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "all checks passed" in result.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["rows"]
    assert {row[0] for row in rows} >= {"launch", "parity", "adapter", "bandwidth", "latency",
                                        "sqrt"}
    # every rule's configurations are checked, RMSprop's also against its class
    assert {oc.CONFIGS[r[1].split()[0]]["cls"] for r in rows if r[0] == "parity"} == {
        config["cls"] for config in oc.CONFIGS.values()}
    rmsprop = [name for name, config in oc.CONFIGS.items() if config["cls"] == "RMSprop"]
    assert sum(r[0] == "sqrt" for r in rows) == 2 * len(oc.DTYPES) * len(rmsprop)
    assert not report["failures"] and "error" not in json.dumps(rows)
    # both launchers get every parity and adapter check (the simulator runs
    # Numba's launcher for both, but every line of the driver's loop runs)
    for launcher in ("numba", "driver"):
        assert sum(r[0] == "parity" and r[1].endswith(f", {launcher} launcher")
                   for r in rows) == len(oc.DTYPES) * len(oc.CONFIGS), launcher
        assert any(r[0] == "adapter" and f"{launcher} launcher" in r[1] for r in rows)
    assert ["launch", "driver launch, overall",
            "passed every parity and adapter check, as Numba's launcher did", ""] in rows
