"""Start-up costs, each in a fresh interpreter: import, first step (cold and
warm compile cache). Unparameterised: timeraw and params do not mix well."""

_FIRST_STEP = """
import numpy as np
x = np.zeros(1000, np.float32)
opt = numadam.Adam([x])
opt.step([np.ones(1000, np.float32)])
"""

# Fills a fresh cache directory in a separate process, then points this one at it.
# (One line of code: asv passes the setup on in a way that breaks escaped newlines.)
_WARM_SETUP = """
import os, subprocess, sys, tempfile
cache = tempfile.mkdtemp(prefix="numadam-asv-cache-")
subprocess.run([sys.executable, "-c", {code!r}],
               env=dict(os.environ, NUMBA_CACHE_DIR=cache), check=True)
os.environ["NUMBA_CACHE_DIR"] = cache
import numadam
""".format(code="import numpy as np, numadam; x = np.zeros(1000, np.float32); "
                  "numadam.Adam([x]).step([np.ones(1000, np.float32)])")

_COLD_SETUP = """
import os, tempfile
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numadam-asv-cache-")
import numadam
"""


def timeraw_import_numadam():
    return "import numadam"


def timeraw_first_step_warm_cache():
    return _FIRST_STEP, _WARM_SETUP


def timeraw_first_step_cold_cache():
    return _FIRST_STEP, _COLD_SETUP


timeraw_first_step_cold_cache.repeat = (1, 3, 60.0)
timeraw_first_step_cold_cache.timeout = 300
timeraw_first_step_warm_cache.timeout = 120
