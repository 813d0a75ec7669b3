"""The clipped Adam step against the plain one, on a chosen thread count.

Three float32 Adams over ``--size`` elements (plain, ``max_grad_norm``, and
``max_grad_norm`` with ``clip_value``) step in turn, ``--rounds`` times; the
median of each and its ratio to the plain step are printed. One thread
leaves the other core of a 2-core machine to whatever else runs, which makes
the ratio steadier than ``python -m numadam bench --sections clipping``.

    python scripts/clip_cost.py [--size 1e7] [--threads 1] [--rounds 9]
"""

import argparse
import statistics
import time

import numpy as np

import numadam


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=float, default=1e7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    numadam.config.threads = args.threads
    n = int(args.size)
    g = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    variants = {}
    for name, kwargs in (("plain", {}), ("max_grad_norm", dict(max_grad_norm=1.0)),
                         ("max_grad_norm + clip_value",
                          dict(max_grad_norm=1.0, clip_value=0.5))):
        opt = numadam.Adam([np.zeros(n, np.float32)], lr=1e-3, **kwargs)
        opt.grads[0][...] = g
        opt.step()                      # compiled, state allocated
        variants[name] = opt
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, opt in variants.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"{n:.0e} float32 elements, {args.threads} thread(s), medians of {args.rounds}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:28s} {median * 1e3:8.2f} ms  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
