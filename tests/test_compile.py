"""Compiled kernels are cached on disk, also when the install is read-only.

Each check runs fresh interpreters; the compile cache goes to a private
directory so the suite neither depends on nor disturbs the user's cache.
No timing is asserted (the budget is tracked by asv_bench/bench_compile.py).
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

import numadam

# Prints how many kernel specialisations came from the on-disk cache.
STEP = """
import numpy as np, numadam
from numadam.cpu import kernels as _cpu
x = np.zeros(100, np.float32)
numadam.Adam([x]).step([np.ones(100, np.float32)])
step_serial = _cpu.kernels(numadam.Adam.rule).step_serial
print(sum(step_serial.stats.cache_hits.values()),
      sum(step_serial.stats.cache_misses.values()))
"""


def run(code, env, cwd=None):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits, misses = map(int, proc.stdout.split()[-2:])
    return hits, misses, proc.stderr


def test_second_process_loads_kernels_from_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    assert run(STEP, env)[:2] == (0, 1)
    assert run(STEP, env)[:2] == (1, 0)
    assert any(name.endswith(".nbi") for _, _, files in os.walk(tmp_path) for name in files)


# A clipped step in a fresh process: cache hits and misses of the clipped
# step_serial and of the norm's kernel.
CLIPPED_STEP = """
import numpy as np, numadam
from numadam.cpu import kernels as _cpu, norm
x = np.zeros(100, np.float32)
numadam.Adam([x], max_grad_norm=1.0, clip_value=0.5).step([np.ones(100, np.float32)])
kernels = (_cpu.kernels(numadam.Adam.rule).step_serial, norm._square_bins_span)
print(sum(sum(k.stats.cache_hits.values()) for k in kernels),
      sum(sum(k.stats.cache_misses.values()) for k in kernels))
"""


def test_every_kernel_is_cacheable(tmp_path):
    """``python -m numadam compile --clipping`` warns about nothing and fills
    the cache, the kernels of clipped steps included."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-W", "error::Warning", "-m", "numadam", "compile",
                           "--clipping"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "Cannot cache" not in proc.stderr
    lines = proc.stdout.splitlines()
    compiled = {line.split("[")[0] for line in lines}
    clipped = {line.split("[")[0] for line in lines if "clipped]" in line}
    from internals import rules
    for rule in rules.REGISTRY:
        assert {f"{rule}.step_serial", f"{rule}.prepare_step", f"{rule}.step_task"} <= compiled
        assert {f"{rule}.step_serial", f"{rule}.step_task"} <= clipped
    assert {"address", "nonfinite_task"} <= compiled
    assert {"nonfinite_task", "square_bins"} <= clipped
    assert run(CLIPPED_STEP, env)[:2] == (2, 0)
    index = {name.split("-")[0] for _, _, files in os.walk(tmp_path) for name in files
             if name.endswith(".nbi")}
    # One index file per rule and kernel: Numba rewrites an index without a
    # lock, so rules sharing one could swap kernels under concurrent compiles.
    assert "kernels.nonfinite_task" in index
    for rule in rules.REGISTRY:
        assert {f"kernels._templates.locals._{kernel}.{rule}"
                for kernel in ("step_serial", "step_task", "prepare_step")} <= index


def _make_read_only(path):
    """Make ``path`` read-only for this process: a read-only bind mount when
    running as root (root ignores permission bits), else permission bits.
    Returns an undo function, or None when that is impossible here."""
    if os.geteuid() != 0:
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP)
            os.chmod(dirpath, 0o555)
        return lambda: [os.chmod(d, 0o755) for d, _, _ in os.walk(path)]
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "--bind", path, path]).returncode:
        return None
    if subprocess.run([mount, "-o", "remount,bind,ro", path]).returncode:
        subprocess.run(["umount", path])
        return None
    return lambda: subprocess.run(["umount", path], check=True)


def test_read_only_install_falls_back_to_user_cache(tmp_path):
    """Numba cannot write next to a read-only package; it uses ~/.cache instead."""
    site = tmp_path / "site"
    package = site / "numadam"
    shutil.copytree(os.path.dirname(numadam.__file__), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    undo = _make_read_only(str(site))
    if undo is None:
        pytest.skip("cannot make a directory read-only here")
    try:
        assert not os.access(package, os.W_OK) or os.geteuid() == 0
        home = tmp_path / "home"
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
                   PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
        code = f"import numadam; assert numadam.__file__.startswith({str(site)!r})\n" + STEP
        assert run(code, env, cwd=tmp_path)[:2] == (0, 1)
        assert run(code, env, cwd=tmp_path)[:2] == (1, 0)
        assert not (package / "__pycache__").exists()
        cached = [name for _, _, files in os.walk(home) for name in files
                  if name.endswith(".nbi")]
        assert cached
    finally:
        undo()
