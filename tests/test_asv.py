"""The asv suite imports and every benchmark runs once, so it cannot rot.

Runs against the current environment (``--python=same``), with sizes capped
at 1e5 by ``NUMADAM_BENCH_MAX``; no timing is checked.
"""

import os
import shutil
import subprocess
import sys

import pytest

ASV_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asv_bench")

pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[test]')")


def _asv(*args, env=None):
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {}))
    asv = shutil.which("asv", path=env["PATH"]) or "asv"
    return subprocess.run([asv, *args], cwd=ASV_DIR, env=env, capture_output=True,
                          text=True, timeout=900)


def test_asv_suite_imports_and_runs_once():
    machine = _asv("machine", "--yes")
    assert machine.returncode == 0, machine.stderr
    check = _asv("check", "--python=same")
    assert check.returncode == 0, check.stdout + check.stderr
    run = _asv("run", "--python=same", "--quick", "--dry-run", "--show-stderr",
               env={"NUMADAM_BENCH_MAX": "1e5"})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    failed = [line for line in output.splitlines() if line.rstrip().endswith(" failed")]
    assert not failed, "\n".join(failed)
    assert "bench_step.TimeFlat" in output and "bench_track" in output, output[-3000:]
