"""Kernels of the sharded optimizer: the ordered mean and the exact norm.

Both are elementwise or exact, so neither the thread count nor the way the
parameter space is cut into shards can change a bit of their results.
"""

import math
from fractions import Fraction

import numpy as np
from numba import carray, njit

from numadam.core.config import config
from numadam.cpu.kernels import OFFSET, PTR_G, SIZE, address_as_pointer
from numadam.core.jitcache import CACHE
from numadam.cpu.pool import run_tasks, task_bounds

__all__ = ["ordered_mean", "square_bins", "bins_to_sum", "NBINS", "NONFINITE", "OVERFLOW"]

# One bin per float64 exponent (subnormals share bin 1 with the smallest
# normals), twice (high and low halves of the significand), then two counters:
# gradient elements that are NaN or Inf, and finite ones whose square overflows.
_EXPONENTS = 2048
NONFINITE = 2 * _EXPONENTS
OVERFLOW = NONFINITE + 1
NBINS = OVERFLOW + 1
_LOW_BITS = 26
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


@njit(cache=CACHE, error_model="numpy")
def _bin_span(g, lo, hi, bins):
    for i in range(lo, hi):
        x = np.float64(g[i])
        if x - x != 0:
            bins[NONFINITE] += 1
            continue
        bits = np.int64(np.float64(x * x).view(np.int64))
        exponent = (bits >> 52) & 0x7FF
        if exponent == 0x7FF:
            bins[OVERFLOW] += 1
            continue
        significand = bits & 0xFFFFFFFFFFFFF
        if exponent > 0:
            significand |= np.int64(1) << 52
        else:
            exponent = 1
        bins[exponent] += significand >> _LOW_BITS
        bins[_EXPONENTS + exponent] += significand & ((1 << _LOW_BITS) - 1)


@njit(cache=CACHE, error_model="numpy")
def _bin_range(table, like, lo, hi, bins):
    """Bin the squares of elements ``lo:hi`` of the shard (rows with a gradient)."""
    for k in range(table.shape[0]):
        offset = table[k, OFFSET]
        start = max(lo, offset)
        end = min(hi, offset + table[k, SIZE])
        if end > start and table[k, PTR_G] != 0:
            g = carray(address_as_pointer(table[k, PTR_G], like), table[k, SIZE])
            _bin_span(g, start - offset, end - offset, bins)


@njit(cache=CACHE, error_model="numpy")
def square_bins_serial(table, like):
    """Exact integer bins of ``sum(float64(g)**2)`` over a shard's gradients.

    Each square is rounded to float64 (exact for float32 gradients), split
    into its exponent and integer significand, and the significand's high and
    low halves are added to integer bins of that exponent. Integer sums are
    exact and associative, so bins from any split of the elements (threads,
    ranks) add up to the same totals. Rows without a gradient are skipped.
    Bin ``NONFINITE`` counts NaN and Inf elements, bin ``OVERFLOW`` finite
    elements whose square overflows.
    """
    n = table.shape[0]
    bins = np.zeros(NBINS, np.int64)
    if n:
        _bin_range(table, like, 0, table[n - 1, OFFSET] + table[n - 1, SIZE], bins)
    return bins


@njit(cache=CACHE, nogil=True, error_model="numpy")
def _square_bins_span(table, like, lo, hi, bins):
    """Add the bins of elements ``lo:hi`` to ``bins`` (one task; releases the GIL)."""
    _bin_range(table, like, lo, hi, bins)


def square_bins_parallel(table, like, min_task=None, threads=None):
    """:func:`square_bins_serial` cut into tasks of at least ``min_task``
    elements for at most ``threads`` threads (defaults: ``numadam.config``),
    run on numadam's threads; integer bins add up exactly in any split."""
    n = table.shape[0]
    total = int(table[n - 1, OFFSET] + table[n - 1, SIZE]) if n else 0
    ntasks, chunk = task_bounds(total, min_task, threads)
    partial = np.zeros((ntasks, NBINS), np.int64)

    def task(index):
        lo = min(index * chunk, total)
        _square_bins_span(table, like, lo, min(lo + chunk, total), partial[index])

    run_tasks(task, ntasks, threads)
    return partial.sum(axis=0)


def ordered_mean(received, out):
    """Average the rows of ``received`` into ``out`` in rank order (see
    :func:`ordered_mean_serial`); small shards stay on the calling thread."""
    count = out.dtype.type(received.shape[0])
    if received.size < config.serial_below:
        ordered_mean_serial(received, out, count)
    else:
        ordered_mean_parallel(received, out, count)


def square_bins(table, like, total):
    """Bins of the squares of a shard of ``total`` elements (see
    :func:`square_bins_serial`); small shards stay on the calling thread."""
    if total < config.serial_below:
        return square_bins_serial(table, like)
    return square_bins_parallel(table, like)


def bins_to_sum(bins):
    """The float64 value of the exact sum held in ``bins``, correctly rounded.

    Returns ``nan`` when any element was NaN or Inf, and ``inf`` when the
    exact sum exceeds the float64 range.
    """
    if bins[NONFINITE]:
        return math.nan
    if bins[OVERFLOW]:
        return math.inf
    exact = 0
    high = bins[:_EXPONENTS]
    low = bins[_EXPONENTS:2 * _EXPONENTS]
    for exponent in np.flatnonzero(high | low).tolist():
        significand = (int(high[exponent]) << _LOW_BITS) + int(low[exponent])
        exact += significand << (exponent - 1)
    try:
        return float(Fraction(exact, 1 << 1074))
    except OverflowError:
        return math.inf
