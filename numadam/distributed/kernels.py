"""Kernels of the sharded optimizer: the ordered mean and the exact norm.

Both are elementwise or exact, so neither the thread count nor the way the
parameter space is cut into shards can change a bit of their results.
"""

from numba import njit

from numadam.core.config import config
from numadam.core.jitcache import CACHE
from numadam.cpu.norm import (NBINS, NONFINITE, OVERFLOW, bins_to_sum, square_bins,
                              square_bins_parallel, square_bins_serial)
from numadam.cpu.pool import run_tasks, task_bounds

# The exact norm's kernels are the plain optimizers' (numadam.cpu.norm).
__all__ = ["ordered_mean", "square_bins", "square_bins_serial", "square_bins_parallel",
           "bins_to_sum", "NBINS", "NONFINITE", "OVERFLOW"]

_BLOCK = 1024


@njit(cache=CACHE, error_model="numpy")
def _mean_range(received, out, lo, hi, count):
    acc = out[lo:hi]
    first = received[0, lo:hi]
    for i in range(acc.size):
        acc[i] = first[i]
    for q in range(1, received.shape[0]):
        row = received[q, lo:hi]
        for i in range(acc.size):
            acc[i] = acc[i] + row[i]
    for i in range(acc.size):
        acc[i] = acc[i] / count


@njit(cache=CACHE, error_model="numpy")
def ordered_mean_serial(received, out, count):
    """``out[i] = (((received[0, i] + received[1, i]) + ...) + received[P-1, i]) / count``.

    The sum runs in rank order in the arrays' dtype, one rounding per
    addition, exactly as ``g0 + g1 + ... + g_{P-1}`` evaluates in NumPy; the
    division is one correctly rounded division by ``count`` (same dtype).
    Blocks of ``_BLOCK`` elements keep the partial sums in cache while the
    ``P`` rows stream through.
    """
    for lo in range(0, out.size, _BLOCK):
        _mean_range(received, out, lo, min(lo + _BLOCK, out.size), count)


@njit(cache=CACHE, nogil=True, error_model="numpy")
def _ordered_mean_span(received, out, lo, hi, count):
    """:func:`ordered_mean_serial` over elements ``lo:hi`` (one task; releases the GIL)."""
    for start in range(lo, hi, _BLOCK):
        _mean_range(received, out, start, min(start + _BLOCK, hi), count)


def ordered_mean_parallel(received, out, count, min_task=None, threads=None):
    """:func:`ordered_mean_serial` cut into tasks of whole blocks, run on
    numadam's threads (:mod:`numadam.cpu.pool`: they sleep between calls)."""
    ntasks, chunk = task_bounds(out.size, min_task, threads)
    chunk = -(-chunk // _BLOCK) * _BLOCK

    def task(index):
        lo = min(index * chunk, out.size)
        _ordered_mean_span(received, out, lo, min(lo + chunk, out.size), count)

    run_tasks(task, ntasks, threads)


def ordered_mean(received, out):
    """Average the rows of ``received`` into ``out`` in rank order (see
    :func:`ordered_mean_serial`); small shards stay on the calling thread."""
    count = out.dtype.type(received.shape[0])
    if received.size < config.serial_below:
        ordered_mean_serial(received, out, count)
    else:
        ordered_mean_parallel(received, out, count)
