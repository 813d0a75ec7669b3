"""Wall time of ``import numadam`` and of a first step, each in fresh processes.

Usage::

    python scripts/startup_times.py [--runs 5] [--cold]

Prints medians (and ranges) over ``--runs`` fresh interpreters of: ``import
numpy, numba`` alone; ``import numadam``; and, per rule and dtype, building an
optimizer over 10 elements plus its first ``step([g])`` (timed inside the
process, after ``import numadam``). The Numba cache is the user's own (warm
after the first run) unless ``--cold``, which points ``NUMBA_CACHE_DIR`` at a
new empty directory for every process.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

RULES = (("Adam", ""), ("SGD", "momentum=0.9"), ("Adagrad", ""), ("RMSprop", ""))

IMPORT = """
import time
start = time.perf_counter()
import {module}
print(time.perf_counter() - start)
"""

FIRST_STEP = """
import numpy as np, numadam, time
x = np.zeros(10, np.{dtype})
g = [np.ones(10, np.{dtype})]
start = time.perf_counter()
numadam.{cls}([x], {kwargs}).step(g)
print(time.perf_counter() - start)
"""


def seconds(code, cold):
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["NUMBA_CACHE_DIR"] = cache
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True).stdout
    return float(out.split()[-1])


def show(label, values):
    print(f"{label:34s} median {statistics.median(values):6.3f} s "
          f"(range {min(values):.3f}-{max(values):.3f}, {len(values)} runs)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true")
    options = parser.parse_args()
    if not options.cold:
        seconds(FIRST_STEP.format(dtype="float32", cls="Adam", kwargs=""), False)  # fill
        for module in ("numpy, numba", "numadam"):
            show(f"import {module}", [seconds(IMPORT.format(module=module), False)
                                       for _ in range(options.runs)])
    for cls, kwargs in RULES:
        for dtype in ("float32", "float64"):
            code = FIRST_STEP.format(dtype=dtype, cls=cls, kwargs=kwargs)
            if not options.cold:
                seconds(code, False)        # this rule and dtype in the cache
            show(f"{cls} {dtype} first step{' (cold)' if options.cold else ''}",
                 [seconds(code, options.cold) for _ in range(options.runs)])


if __name__ == "__main__":
    main()
