"""Instructions per 10-element step, this numadam against another, under callgrind.

Timings of a microsecond-scale call swing by tens of percent on a shared
machine; instruction counts do not. Both packages are loaded in one process
and callgrind counts only around each loop of ``N`` calls.

Usage (a baseline package copied under another name, e.g. from a commit)::

    mkdir -p /tmp/ab && git archive REV numadam | tar -x -C /tmp/ab
    mv /tmp/ab/numadam /tmp/ab/numadam_base
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/ab/cg.out \\
        python scripts/callgrind_small_step.py /tmp/ab
    python scripts/callgrind_small_step.py --report /tmp/ab/cg.out

The first command runs under valgrind and dumps one profile per variant; the
second prints instructions per call from those dumps.
"""

import glob
import os
import subprocess
import sys

N = 3000


def _variants(base_dir):
    import numpy as np

    sys.path.insert(0, base_dir)
    import numadam
    import numadam_base

    variants = {}
    for name, module in (("base", numadam_base), ("this", numadam)):
        x = np.ones(10)
        g = [np.full(10, 0.1)]
        with_grads = module.Adam([x], lr=1e-3)
        y = np.ones(10)
        owned = module.Adam([y], lr=1e-3)
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

        variants[f"{name}.step_g"] = step_g
        variants[f"{name}.step"] = step_owned
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
    for path in sorted(glob.glob(out + ".*")):
        with open(path) as f:
            text = f.read()
        label = text.split("desc: Trigger: dump ", 1)[1].split("\n", 1)[0]
        totals = int(text.split("\ntotals: ", 1)[1].split()[0])
        print(f"{label:16s} {totals / N:10,.0f} instructions per call")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report(sys.argv[2])
    else:
        run(sys.argv[1])
