"""Attacks on opt.jit(): handles where Numba would freeze them, cached
compiled functions across numadam versions, random programs of compiled and
Python steps against a Python twin, threads, schedules driving the handle."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

import numadam


def small(dtype=np.float32, n=8):
    p = np.linspace(-1.0, 1.0, n).astype(dtype)
    opt = numadam.Adam([p], lr=1e-2)
    opt.grads[0][:] = 0.5
    return opt, p


def first_line(error):
    return str(error.value).splitlines()[0]


# ------------------------------------------- a handle frozen into @njit code

def test_handle_as_global_constant_is_refused_by_numadam():
    opt, p = small()
    before = p.copy()
    global FROZEN
    FROZEN = opt.jit()

    @njit
    def uses_global():
        FROZEN.step()

    with pytest.raises(TypeError) as error:
        uses_global()
    assert first_line(error).startswith("numadam: a handle cannot be a global")
    assert np.array_equal(p, before)


def test_handle_as_closure_constant_is_refused_by_numadam():
    opt, p = small()
    h = opt.jit()

    @njit
    def uses_closure():
        h.step()

    with pytest.raises(TypeError) as error:
        uses_closure()
    assert first_line(error).startswith("numadam: a handle cannot be a global")
    # the same handle as an argument still works
    @njit
    def step(h):
        h.step()

    step(h)
    assert opt.state_dict()["state"][0]["step"] == 1


# --------------------------- @njit(cache=True) over a changed numadam install

USER_MODULE = '''
import sys
import numpy as np
from numba import njit
import numadam

@njit(cache=True)
def fit(h, n):
    for _ in range(n):
        h.step()

p = np.linspace(-1.0, 1.0, 8).astype(np.float32)
q = p.copy()
a, b = numadam.Adam([p], lr=1e-2), numadam.Adam([q], lr=1e-2)
a.grads[0][:] = 0.5
b.grads[0][:] = 0.5
fit(a.jit(), 3)
for _ in range(3):
    b.step()
assert np.array_equal(p.view(np.uint32), q.view(np.uint32))
print(len(fit.stats.cache_hits), len(fit.stats.cache_misses))
'''


def test_cached_function_recompiles_for_an_edited_numadam(tmp_path):
    """A user's cache=True function has numadam's compiled step inside it;
    Numba keys it by the user's source and the argument types only. An
    upgrade or edit of numadam (here a module of numadam.cpu whose size
    changes) must make it compile afresh, not run the old step on what may
    be a new table layout."""
    package = tmp_path / "site" / "numadam"
    here = os.path.dirname(os.path.dirname(os.path.abspath(numadam.__file__)))
    shutil.copytree(os.path.join(here, "numadam"), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "userfit.py").write_text(USER_MODULE)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{user}")

    def run():
        out = subprocess.run([sys.executable, "-c", "import userfit"], env=env, cwd=user,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["0", "1"]          # compiled and saved
    assert run() == ["1", "0"]          # loaded: the cache works here
    edited = package / "cpu" / "bucket.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    assert run() == ["0", "1"]          # numadam changed: compiled afresh
