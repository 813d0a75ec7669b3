"""Instructions per 10-element step, this numadam against another, under callgrind.

Timings of a microsecond-scale call swing by tens of percent on a shared
machine; instruction counts do not. Both packages are loaded in one process
and callgrind counts only around each loop of ``N`` calls: ``step([g])`` and
``step()`` (owned gradients) of a float64 ``Adam`` in each package, then of
every other rule's class in this one (``SGD`` with momentum, ``Adagrad``,
``RMSprop``), where the baseline may not have them.

Usage (a baseline package copied under another name, e.g. from a commit)::

    mkdir -p /tmp/ab && git archive REV numadam | tar -x -C /tmp/ab
    mv /tmp/ab/numadam /tmp/ab/numadam_base
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/ab/cg.out \\
        python scripts/callgrind_small_step.py /tmp/ab
    python scripts/callgrind_small_step.py --report /tmp/ab/cg.out

The first command runs under valgrind and dumps one profile per variant; the
second prints instructions per call from those dumps. ``--time BASE_DIR``
times the same loops instead (no valgrind): rounds of every variant in turn,
and a Numba call that does nothing, median microseconds per call.
"""

import glob
import os
import statistics
import subprocess
import sys
import time

N = 3000


# Rule classes measured in this package beyond Adam, with hyperparameters
# that give each its state rows (a plain SGD would have none).
OTHERS = (("SGD", dict(lr=1e-3, momentum=0.9)), ("Adagrad", dict(lr=1e-3)),
          ("RMSprop", dict(lr=1e-3)))


def _loops(cls, kwargs):
    """``(step([g]) loop, step() loop)`` over fresh optimizers of ``cls``."""
    import numpy as np

    x = np.ones(10)
    g = [np.full(10, 0.1)]
    with_grads = cls([x], **kwargs)
    y = np.ones(10)
    owned = cls([y], **kwargs)
    owned.grads[0][...] = 0.1
    for _ in range(200):
        with_grads.step(g)
        owned.step()

    def step_g(opt=with_grads, g=g):
        for _ in range(N):
            opt.step(g)

    def step_owned(opt=owned):
        for _ in range(N):
            opt.step()

    return step_g, step_owned


def _variants(base_dir):
    sys.path.insert(0, base_dir)
    import numadam
    import numadam_base

    variants = {}
    for name, module in (("base", numadam_base), ("this", numadam)):
        variants[f"{name}.step_g"], variants[f"{name}.step"] = _loops(
            module.Adam, dict(lr=1e-3))
    for cls, kwargs in OTHERS:
        variants[f"this.{cls}.step_g"], variants[f"this.{cls}.step"] = _loops(
            getattr(numadam, cls), kwargs)
    return variants


def run(base_dir):
    pid = str(os.getpid())

    def control(*args):
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)

    for label, loop in _variants(base_dir).items():
        loop()                                   # warm: caches, branch history
        control("-i", "on")
        loop()
        control("-i", "off")
        control("-d", label)


def report(out):
    for path in sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            text = f.read()
        label = text.split("desc: Trigger: dump ", 1)[1].split("\n", 1)[0]
        totals = int(text.split("\ntotals: ", 1)[1].split()[0])
        print(f"{label:22s} {totals / N:10,.0f} instructions per call")


def timings(base_dir, rounds=21):
    """Median microseconds per call of every variant, interleaved round by round."""
    import numpy as np
    from numba import njit

    @njit
    def bare(a):
        return a

    x = np.ones(10)

    def bare_loop():
        for _ in range(N):
            bare(x)

    variants = dict(_variants(base_dir), bare_njit=bare_loop)
    samples = {label: [] for label in variants}
    for loop in variants.values():
        loop()
    for _ in range(rounds):
        for label, loop in variants.items():
            start = time.perf_counter()
            loop()
            samples[label].append((time.perf_counter() - start) / N * 1e6)
    for label, values in samples.items():
        print(f"{label:22s} {statistics.median(values):8.2f} us per call (median of {rounds})")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report(sys.argv[2])
    elif sys.argv[1] == "--time":
        timings(sys.argv[2])
    else:
        run(sys.argv[1])
