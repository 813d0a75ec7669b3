"""The 8-bit encoder's cost per element against a streaming loop over the
same arrays, on one thread.

Loops over ``--size`` float32 values in [-1, 1] (absolute values for the
unsigned map) writing uint8 codes: ``copy`` writes the top byte of each
value's bits (the same traffic, no encoding), ``encode_signed`` and
``encode_unsigned`` the codes, ``decode_signed`` reads codes back to float32.
Prints the median and the fastest ns per element over ``--rounds`` runs (on
a shared machine the fastest is the uncontended figure) and, from the
compiled assembly, whether each loop is vectorised (vector registers and
gathers).

    python scripts/encode_speed.py [--size 1e7] [--rounds 15]
"""

import argparse
import re
import statistics
import time

import numpy as np
from numba import njit

from numadam.core.math import float_bits
from numadam.formats.dynamic8 import decode_signed, encode_signed, encode_unsigned


@njit(error_model="numpy")
def copy(y, out):
    for i in range(y.size):
        out[i] = np.uint8(float_bits(y[i]) >> np.uint32(24))


@njit(error_model="numpy")
def encode_signed_loop(y, out):
    for i in range(y.size):
        out[i] = encode_signed(y[i])


@njit(error_model="numpy")
def encode_unsigned_loop(y, out):
    for i in range(y.size):
        out[i] = encode_unsigned(y[i])


@njit(error_model="numpy")
def decode_signed_loop(codes, out):
    for i in range(codes.size):
        out[i] = decode_signed(codes[i])


def vector_summary(dispatcher):
    """Counts of vector-register and gather instructions in the loop's code."""
    asm = next(iter(dispatcher.inspect_asm().values()))
    return {"zmm": len(re.findall(r"%zmm", asm)), "ymm": len(re.findall(r"%ymm", asm)),
            "gathers": len(re.findall(r"\bvp?gather\w+", asm))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=float, default=1e7)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = int(args.size)
    y = np.random.default_rng(0).uniform(-1, 1, n).astype(np.float32)
    y_abs = np.abs(y)
    codes = np.empty(n, np.uint8)
    back = np.empty(n, np.float32)
    cases = {"copy": (copy, y, codes), "encode_signed": (encode_signed_loop, y, codes),
             "encode_unsigned": (encode_unsigned_loop, y_abs, codes),
             "decode_signed": (decode_signed_loop, codes, back)}
    for fn, a, b in cases.values():
        fn(a, b)                        # compile and touch the pages
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, a, b) in cases.items():
            start = time.perf_counter()
            fn(a, b)
            times[name].append(time.perf_counter() - start)
    for name, (fn, _, _) in cases.items():
        median, fastest = (t / n * 1e9 for t in (statistics.median(times[name]), min(times[name])))
        print(f"{name:16s} median {median:6.3f}  fastest {fastest:6.3f} ns/element  "
              f"{vector_summary(fn)}")


if __name__ == "__main__":
    main()
