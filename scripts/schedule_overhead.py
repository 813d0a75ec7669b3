"""The cost of a learning-rate schedule beside a 10-element Adam step.

Each loop runs ``opt.step()`` (owned float32 gradients, 10 elements) and,
except the first, one schedule's ``step()``; rounds of every loop are
interleaved and the median per step of each is printed, with its ratio to
the bare step measured in the same run.

    python scripts/schedule_overhead.py [--rounds 31] [--steps 500]

Timings of a microsecond-scale loop swing by tens of percent on a shared
machine; instruction counts do not. Under callgrind, counting only inside
each loop (one dump per loop)::

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.sched \
        python scripts/schedule_overhead.py --callgrind
    python scripts/callgrind_small_step.py --report /tmp/cg.sched   # divide by --steps
"""

import argparse
import gc
import os
import re
import statistics
import subprocess
import time

import numpy as np

import numadam
from numadam import schedules as S

CASES = {
    "opt.step() alone": None,
    "+ StepLR (lr unchanged between milestones)": lambda o: S.StepLR(o, step_size=10**9),
    "+ ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.999999),
    "+ CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=10**6),
    "+ OneCycleLR (lr and beta1)": lambda o: S.OneCycleLR(o, max_lr=1e-2, total_steps=10**7),
    "+ WarmupCosineLR": lambda o: S.WarmupCosineLR(o, warmup_steps=10, total_steps=10**6),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--callgrind", action="store_true",
                        help="run each loop once under callgrind_control (see above)")
    args = parser.parse_args()
    loops = {}
    for name, make in CASES.items():
        opt = numadam.Adam([np.zeros(10, np.float32)], lr=1e-3)
        opt.grads[0][...] = 1.0
        loops[name] = (opt, None if make is None else make(opt))
        opt.step()
    times = {name: [] for name in CASES}
    if args.callgrind:
        # A collection of the whole heap (Numba's objects included) costs tens
        # of millions of instructions and lands in whichever loop triggers it.
        gc.disable()
        pid = str(os.getpid())

        def control(*flags):
            subprocess.run(["callgrind_control", *flags, pid], check=True,
                           capture_output=True)

        for name, (opt, schedule) in loops.items():
            _loop(opt, schedule, args.steps)      # warm: caches, branch history
            control("-i", "on")
            _loop(opt, schedule, args.steps)
            control("-i", "off")
            control("-d", re.sub(r"\W+", "_", name).strip("_"))
        return
    for _ in range(args.rounds):
        for name, (opt, schedule) in loops.items():
            start = time.perf_counter()
            _loop(opt, schedule, args.steps)
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    base = statistics.median(times["opt.step() alone"])
    print(f"| loop | us per step | ratio |\n| --- | --- | --- |")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.2f} | {median / base:.2f} |")


def _loop(opt, schedule, steps):
    if schedule is None:
        for _ in range(steps):
            opt.step()
    else:
        for _ in range(steps):
            opt.step()
            schedule.step()


if __name__ == "__main__":
    main()
