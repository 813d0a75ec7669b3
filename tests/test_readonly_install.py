"""numadam where nothing is writable: a read-only install with a read-only $HOME.

Numba's ``cache=True`` needs a writable directory beside the source or in the
user's cache directory when a function is decorated, that is at import. Here
a copy of the package sits in a read-only directory, ``$HOME`` is read-only,
``NUMBA_CACHE_DIR`` and ``XDG_CACHE_HOME`` are unset, and a fresh interpreter
imports numadam and steps it. Root writes through permission bits, so as
root the interpreter runs without the capabilities that bypass them
(``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``): it stays the
owner of everything (the interpreter may live under a private ``/root``) and
is refused writes exactly as an ordinary user is.
"""

import ctypes
import os
import shutil
import stat
import subprocess
import sys

import pytest

import numadam

# capability numbers (linux/capability.h) and prctl(PR_CAPBSET_DROP)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_SETPCAP = 1, 2, 3, 8
PR_CAPBSET_DROP = 24
STEPS = """
import numpy as np
import numadam
from numadam import functional
x = np.linspace(-1.0, 1.0, 7)
opt = numadam.AdamW([x], lr=0.1, amsgrad=True)
for _ in range(3):
    opt.step([np.cos(3.0 * x)])
y = np.linspace(-1.0, 1.0, 7).astype(np.float32)
m, v = np.zeros_like(y), np.zeros_like(y)
for t in range(1, 4):
    functional.adam_update(y, np.cos(3.0 * y), m, v, np.empty(0, np.float32), t, 0.1, 0.9,
                           0.999, 1e-8, 0.0, False, False, False)
result = f"RESULT {x.tobytes().hex()} {y.tobytes().hex()}"
"""
SCRIPT = STEPS + """
from numadam.core import jitcache
print("CACHE", jitcache.CACHE, flush=True)
print(result, flush=True)
"""


def _expected():
    """The same steps in this process (whose numadam may use its disk cache)."""
    namespace = {}
    exec(STEPS, namespace)
    return namespace["result"]


def _effective_capabilities():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)


def _without_dac_override():
    """``preexec_fn`` that takes root's permission-bypassing capabilities out
    of the bounding set, so that the interpreter it executes has none of them
    (None when not root: permission bits already apply)."""
    if os.geteuid() != 0:
        return None
    if not _effective_capabilities() >> CAP_SETPCAP & 1:
        pytest.skip("root without CAP_SETPCAP cannot drop CAP_DAC_OVERRIDE for the child")
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def drop():
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0):
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    return drop


def _read_only(top):
    """Remove every write bit under ``top``."""
    for folder, dirs, files in os.walk(top, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


@pytest.fixture
def read_only_install(tmp_path):
    """A read-only copy of the package and a read-only home."""
    site, home = tmp_path / "site", tmp_path / "home"
    shutil.copytree(os.path.dirname(numadam.__file__), site / "numadam",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home.mkdir()
    for top in (site, home):
        _read_only(top)
    yield str(site), str(home)
    for top in (site, home):
        for folder, _, _ in os.walk(top):
            os.chmod(folder, stat.S_IRWXU)


def _run(site, home, code, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=home, PYTHONPATH=site, NUMBA_NUM_THREADS="2", **extra)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=home,
                          preexec_fn=_without_dac_override(), capture_output=True,
                          text=True, timeout=300)


def test_a_read_only_install_imports_and_steps_without_a_disk_cache(read_only_install):
    site, home = read_only_install
    done = _run(site, home, SCRIPT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CACHE False" in done.stdout, done.stdout
    assert _expected() in done.stdout                # the same bits as a cached build
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr              # one warning, one line
    assert "UserWarning: numadam: Numba finds no writable cache directory" in lines[0]
    assert "NUMBA_CACHE_DIR" in lines[0]
    assert not os.path.exists(os.path.join(site, "numadam", "__pycache__"))


def test_numba_cache_dir_is_honoured_in_a_read_only_install(read_only_install, tmp_path):
    site, home = read_only_install
    done = _run(site, home, "from numadam.core import jitcache; print('CACHE', jitcache.CACHE)",
                NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CACHE True" in done.stdout and done.stderr == "", done.stderr


def test_compile_without_a_writable_cache_fails_and_says_why(read_only_install):
    """``python -m numadam compile`` exists to fill the disk cache (image
    builds, CI); where nothing can be cached it must not compile for nothing
    and report success."""
    site, home = read_only_install
    done = _run(site, home, "import sys\nfrom numadam.__main__ import main\n"
                            "sys.exit(main(['compile']))")
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr[-3000:])
    assert done.stdout == ""                          # no kernel was compiled
    last = done.stderr.splitlines()[-1]
    assert "nothing was compiled" in last and "NUMBA_CACHE_DIR" in last, done.stderr
