"""The exact global gradient norm: integer bins of float64 squares.

``S = sum(float64(g_i) ** 2)`` over every gradient element, each square
rounded to float64 (exact for float32 gradients) and the sum exact, rounded
once. The squares go into integer bins, one per float64 exponent; integer
sums are exact and associative, so bins from any split of the elements
(threads, tasks, MPI ranks) add up to the same totals and the norm depends
on neither. :func:`bins_to_sum` turns the bins into the correctly rounded
float64 sum. Both the plain optimizers (``max_grad_norm``) and the sharded
ones use these kernels.

Layout of a bins array (int64, ``NBINS`` entries): ``bins[j]`` and
``bins[EXPONENTS + j]`` hold the high and low parts of the integer
significands of squares whose float64 biased exponent is ``j`` (subnormals
share ``j = 1``), so the sum is
``sum_j (bins[j] * 2**26 + bins[EXPONENTS + j]) * 2**(j - 1075)``; then two
counters: elements that are NaN or Inf (``NONFINITE``) and finite elements
whose float64 square overflows (``OVERFLOW``).
"""

import math

import numpy as np
from numba import carray, njit

from numadam.core.config import config
from numadam.core.jitcache import CACHE
from numadam.cpu.kernels import OFFSET, PTR_G, SIZE, address_as_pointer, gradient
from numadam.cpu.pool import run_tasks, task_bounds

__all__ = ["square_sum_bins", "square_bins", "square_bins_serial", "square_bins_parallel",
           "bins_to_sum",
           "NBINS", "EXPONENTS", "NONFINITE", "OVERFLOW"]

EXPONENTS = 2048
NONFINITE = 2 * EXPONENTS
OVERFLOW = NONFINITE + 1
NBINS = OVERFLOW + 1
_LOW_BITS = 26
_LOW_MASK = (1 << _LOW_BITS) - 1

# float32: x = m * 2**(e - 150) with an integer m < 2**24, so x*x = m*m *
# 2**(2e - 300) exactly: the 48-bit integer m*m belongs to float64 exponent
# bin 2e + 775. Its high and low parts go to scratch bins of the float32
# exponent (2**37 elements fit), so the bins are a sum over elements, the
# same for any split, like the float64 path's. _WAYS interleaved scratch
# rows break the store-to-load dependency between consecutive elements
# (which mostly share an exponent).
_WAYS = 4
_F32_TO_F64 = 775


@njit(cache=CACHE, error_model="numpy")
def _bin_element32(x, scratch, w):
    """Add the square of float32 ``x`` to scratch row ``w``; 1 if ``x`` is
    NaN or Inf (then counted nowhere else), else 0."""
    bits = np.int32(np.float32(x).view(np.int32))
    e = (bits >> 23) & 0xFF
    m = np.int64(bits & 0x7FFFFF)
    # Normal: the implicit bit; subnormal (e = 0): the scale of e = 1.
    m |= np.int64(e != 0) << 23
    e += np.int32(e == 0)
    square = m * m
    # e = 255 (NaN, Inf) lands in scratch bins that are never read.
    scratch[w, 0, e] += square >> _LOW_BITS
    scratch[w, 1, e] += square & _LOW_MASK
    return np.int64(e == 255)


@njit(cache=CACHE, error_model="numpy")
def _bin_span32(g, lo, hi, bins, clip):
    """Bin the squares of float32 elements ``g[lo:hi]`` read as the update
    reads them (``clip``: see :func:`numadam.cpu.kernels.gradient`)."""
    scratch = np.zeros((_WAYS, 2, 256), np.int64)
    g = g[lo:hi]
    n = g.size
    whole = n // _WAYS * _WAYS
    nonfinite = np.int64(0)
    for i in range(0, whole, _WAYS):
        for w in range(_WAYS):
            nonfinite += _bin_element32(gradient(g[i + w], clip), scratch, w)
    for i in range(whole, n):
        nonfinite += _bin_element32(gradient(g[i], clip), scratch, 0)
    for w in range(_WAYS):
        for e in range(1, 255):
            j = 2 * e + _F32_TO_F64
            bins[j] += scratch[w, 0, e]
            bins[EXPONENTS + j] += scratch[w, 1, e]
    bins[NONFINITE] += nonfinite


@njit(cache=CACHE, error_model="numpy")
def _bin_span64(g, lo, hi, bins, clip):
    """Bin the rounded float64 squares of elements ``g[lo:hi]`` read as the
    update reads them (``clip``: see :func:`numadam.cpu.kernels.gradient`)."""
    for i in range(lo, hi):
        x = np.float64(gradient(g[i], clip))
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
        bins[EXPONENTS + exponent] += significand & _LOW_MASK


# The float32 path, a block of _BLOCK elements at a time. In general (the
# floor levels): the block's squares (exact in float64) go to a float64
# buffer in cache, then each level takes from every buffered value its part
# on a grid of 2**k (a floor, by Rump, Ogita and Oishi's extraction:
# (sigma + v) - sigma, sigma = 2**(e+1) for values below 2**(e+1),
# corrected down where it rounded up) and leaves the exact remainder below
# 2**k. The parts are integers < 2**52 in units of 2**k, summed exactly in
# int64 (_BLOCK * 2**52 < 2**63), whose sum goes to the bins as one
# integer. The next level starts below the largest remainder; a float32
# square has 48 significant bits. Most blocks take the fused two levels
# further below instead. Vectorised (SIMD) loops instead of one scattered
# add per element: 12.6 against 24.6 ms for 1e7 float32 on one thread
# (this machine). The split into blocks depends on the task bounds, so the
# bins do too; their sum does not.
_BLOCK = 1 << 10
_SIGN = np.int64(0x7FFFFFFFFFFFFFFF)
_INF_BITS = np.int64(0x7FF0000000000000)


@njit(cache=CACHE, error_model="numpy")
def _square_block(g, p, clip):
    """``p[i] = float64(gradient(g[i], clip))**2``; returns the largest bits
    of ``p`` (sign cleared), ``_INF_BITS`` or more if any is NaN or Inf."""
    top = np.int64(0)
    for i in range(g.size):
        x = np.float64(gradient(g[i], clip))
        v = x * x
        p[i] = v
        b = np.float64(v).view(np.int64) & _SIGN
        top = b if b > top else top
    return top


@njit(cache=CACHE, error_model="numpy")
def _level(p, sigma, unit, per_unit):
    """Take from each ``p[i]`` (all in ``[0, sigma)``) its part on the grid
    ``unit`` (``sigma * 2**-52``), leaving the remainder in ``p``; returns
    (sum of the parts in units, largest bits of the remainders)."""
    parts = np.int64(0)
    top = np.int64(0)
    for i in range(p.size):
        v = p[i]
        q = (sigma + v) - sigma
        q = q - unit if q > v else q
        r = v - q
        p[i] = r
        parts += np.int64(q * per_unit)
        b = np.float64(r).view(np.int64)
        top = b if b > top else top
    return parts, top


# Two levels fused with the squaring (the common case): one pass over the
# float32 block, no buffer. A level takes round-to-nearest parts instead of
# floors: for sigma = 1.5 * 2**k and |v| <= 2**(k-1), a = fl(sigma + v)
# lies in the binade [2**k, 2**(k+1)] (2**(k+1) included: its bits continue
# the binade's), whose spacing is u = 2**(k-52), so
#   q = a - sigma      is exact (both in one binade, Sterbenz),
#   q / u = bits(a) - bits(sigma), an integer with |q / u| <= 2**51,
#   r = v - q          is exact, |r| <= u / 2 = 2**((k-52) - 1)
# (r is a multiple of v's spacing and, when q != 0, |v| >= u / 2 bounds
# that spacing below by u * 2**-53; when q == 0, r = v). So the remainder
# fits the next level with k - 52, and the part is read off the bits of a
# (an integer subtraction instead of a multiply and a conversion). Parts
# may be negative: at most _BLOCK * 2**51 = 2**61 in magnitude per level.
# With k from the block's largest square v_max <= 2**(k-1), two levels hold
# every square that is a multiple of 2**(k-104): all squares within 2**55
# of v_max (float32 squares have 48 significant bits). k is guessed from
# the previous block's largest square, with one bit of margin (no extra
# pass over the block to find its own); a block with a nonzero second
# remainder or a square above 2**(k-1) (a NaN leaves a NaN remainder) is
# redone with k from its own largest square, then if need be by the floor
# levels. Over 1e7 Gaussian float32 gradients 5 of 9,766 blocks were
# redone. 0.69 against 1.32 ns an element for the squaring and two floor
# levels (a block in cache, one thread).


@njit(cache=CACHE, error_model="numpy")
def _two_levels(g, clip, k):
    """Parts of the squares of ``g`` (read under ``clip``) on the grids
    ``2**(k-52)`` and ``2**(k-104)`` by rounding to nearest (see above);
    returns (parts on each grid in their units, the OR of the second
    remainders' bits (0: nothing is left), the largest bits of a square
    (NaN with its sign bit set excepted; its remainder is not 0))."""
    sigma1 = 1.5 * math.ldexp(1.0, k)
    sigma2 = 1.5 * math.ldexp(1.0, k - 52)
    bits1 = np.float64(sigma1).view(np.int64)
    bits2 = np.float64(sigma2).view(np.int64)
    parts1 = np.int64(0)
    parts2 = np.int64(0)
    rest = np.int64(0)
    top = np.int64(0)
    for i in range(g.size):
        x = np.float64(gradient(g[i], clip))
        v = x * x
        a = sigma1 + v
        r = v - (a - sigma1)
        parts1 += np.float64(a).view(np.int64) - bits1
        a = sigma2 + r
        rest |= np.float64(r - (a - sigma2)).view(np.int64)
        parts2 += np.float64(a).view(np.int64) - bits2
        b = np.float64(v).view(np.int64)
        top = b if b > top else top
    return parts1, parts2, rest, top


@njit(cache=CACHE, error_model="numpy")
def _fits(top, k):
    """Whether squares up to bits ``top`` satisfy ``v <= 2**(k-1)``."""
    return top <= (np.int64(k - 1 + 1023) << 52)


@njit(cache=CACHE, error_model="numpy")
def _floor_levels(block, bins, top):
    """Floor levels over the squares in ``block`` (largest bits ``top``,
    finite) until nothing is left, each level's part sum to ``bins``."""
    while top != 0:
        e = (top >> 52) - 1023          # the largest value is below 2**(e+1)
        parts, top = _level(block, math.ldexp(1.0, e + 1), math.ldexp(1.0, e - 51),
                            math.ldexp(1.0, 51 - e))
        # parts * 2**(e - 51): the low bin of biased exponent e - 51 + 1075
        _add_bin(bins, e + 1024, parts)


@njit(cache=CACHE, error_model="numpy")
def _add_bin(bins, j, value):
    """``value`` (``0 <= value < 2**63``) to bin ``j``'s high and low parts."""
    bins[j] += value >> _LOW_BITS
    bins[EXPONENTS + j] += value & _LOW_MASK


@njit(cache=CACHE, error_model="numpy")
def _sum_span32(g, lo, hi, bins, clip, p):
    """Add the squares of float32 elements ``g[lo:hi]`` (read under
    ``clip``) to ``bins``, a block at a time; ``p``: a float64 buffer of
    ``_BLOCK``."""
    k = 0
    guessed = False
    for start in range(lo, hi, _BLOCK):
        end = min(hi, start + _BLOCK)
        gb = g[start:end]
        done = False
        if guessed:
            parts1, parts2, rest, top = _two_levels(gb, clip, k)
            done = rest == 0 and _fits(top, k)
        if not done:
            block = p[:end - start]
            top = _square_block(gb, block, clip)
            if top >= _INF_BITS:
                _bin_span32(g, start, end, bins, clip)     # counts the NaN and Inf
                continue
            if top == 0:
                continue
            k = ((top >> 52) - 1023) + 2            # v_max < 2**(k-1)
            parts1, parts2, rest, _ = _two_levels(gb, clip, k)
            done = rest == 0
            if not done:
                _floor_levels(block, bins, top)
        if top == 0:
            continue                                # all zero: keep the guess
        if done:
            # parts1 * 2**52 + parts2 (units 2**(k-104)) is the block's exact
            # sum, >= 0: a carry makes parts2 (and so parts1) nonnegative.
            carry = parts2 >> 52
            _add_bin(bins, k + 1023, parts1 + carry)     # units 2**(k-52)
            _add_bin(bins, k + 971, parts2 - (carry << 52))
        guessed = True
        k = ((top >> 52) - 1023) + 3                # one bit of margin


@njit(cache=CACHE, error_model="numpy")
def _bin_range(table, like, lo, hi, bins, clip, fast):
    """Bin the squares of elements ``lo:hi`` of a bucket (rows with a
    gradient); ``fast``: float32 by blocks (bins that depend on the split),
    else element by element (bins that do not)."""
    p = np.empty(_BLOCK if fast else 0, np.float64)
    for k in range(table.shape[0]):
        offset = table[k, OFFSET]
        start = max(lo, offset)
        end = min(hi, offset + table[k, SIZE])
        if end > start and table[k, PTR_G] != 0:
            g = carray(address_as_pointer(table[k, PTR_G], like), table[k, SIZE])
            if like.itemsize == 4 and fast:
                _sum_span32(g, start - offset, end - offset, bins, clip, p)
            elif like.itemsize == 4:
                _bin_span32(g, start - offset, end - offset, bins, clip)
            else:
                _bin_span64(g, start - offset, end - offset, bins, clip)


def square_bins_serial(table, like, clip=None):
    """Exact integer bins of ``sum(float64(gradient(g, clip))**2)`` over a
    bucket's gradients (rows without a gradient are skipped), on the
    calling thread; see the module's docstring for the layout. ``like``: an
    array of the gradients' dtype (float32 or float64); ``clip``: ``None``
    or ``(lo, hi, scale)`` of that dtype (see
    :func:`numadam.cpu.kernels.gradient`; the optimizers pass ``scale = 1``:
    the clamp comes before the norm).
    """
    n = table.shape[0]
    bins = np.zeros(NBINS, np.int64)
    if n:
        _square_bins_span(table, like, 0, table[n - 1, OFFSET] + table[n - 1, SIZE], bins,
                          clip, False)
    return bins


@njit(cache=CACHE, nogil=True, error_model="numpy")
def _square_bins_span(table, like, lo, hi, bins, clip, fast):
    """Add the bins of elements ``lo:hi`` to ``bins`` (one task; releases the GIL)."""
    _bin_range(table, like, lo, hi, bins, clip, fast)


def square_bins_parallel(table, like, min_task=None, threads=None, clip=None):
    """:func:`square_bins_serial` cut into tasks of at least ``min_task``
    elements for at most ``threads`` threads (defaults: ``numadam.config``),
    run on numadam's threads; integer bins add up exactly in any split."""
    return _on_threads(table, like, min_task, threads, clip, False)


def _on_threads(table, like, min_task, threads, clip, fast):
    n = table.shape[0]
    total = int(table[n - 1, OFFSET] + table[n - 1, SIZE]) if n else 0
    ntasks, chunk = task_bounds(total, min_task, threads)
    partial = np.zeros((ntasks, NBINS), np.int64)

    def task(index):
        lo = min(index * chunk, total)
        _square_bins_span(table, like, lo, min(lo + chunk, total), partial[index], clip,
                          fast)

    run_tasks(task, ntasks, threads)
    return partial.sum(axis=0)


def square_bins(table, like, total, clip=None):
    """Bins of the squares of a bucket of ``total`` elements (see
    :func:`square_bins_serial`); small buckets stay on the calling thread."""
    if total < config.serial_below:
        return square_bins_serial(table, like, clip)
    return square_bins_parallel(table, like, clip=clip)


def square_sum_bins(table, like, total, clip=None):
    """Bins whose exact sum is that of :func:`square_bins`, computed by
    blocks for float32 (twice as fast); the bins themselves depend on how
    the work was split (threads, tasks), their sum (:func:`bins_to_sum`)
    never does. What the optimizers' norms use."""
    if total < config.serial_below:
        bins = np.zeros(NBINS, np.int64)
        _square_bins_span(table, like, 0, total, bins, clip, True)
        return bins
    return _on_threads(table, like, None, None, clip, True)


# ------------------------------------------------ bins -> correctly rounded sum
#
# The exact sum is an integer N times 2**-1074. N is built in 32-bit limbs
# held in int64 words (room for the carries of thousands of bins), then its
# top 53 bits are rounded half to even: the float64 nearest N * 2**-1074.
# Bit position of the low part of bin j: j - 1; of the high part: j - 1 + 26;
# a bin holds < 2**63, so N < 2**(2046 + 26 + 63 + 13): 68 limbs.
_LIMBS = 72
_MASK32 = 0xFFFFFFFF


@njit(cache=CACHE, error_model="numpy")
def _add_at(limbs, value, position):
    """``limbs += value * 2**position`` for ``0 <= value < 2**63``, uncarried."""
    for chunk in (value & _MASK32, value >> 32):
        q = position >> 5
        shifted = chunk << (position & 31)          # < 2**63
        limbs[q] += shifted & _MASK32
        limbs[q + 1] += shifted >> 32
        position += 32


@njit(cache=CACHE, error_model="numpy")
def _bit(limbs, position):
    return (limbs[position >> 5] >> (position & 31)) & 1


@njit(cache=CACHE, error_model="numpy")
def bins_to_sum(bins):
    """The float64 value of the exact sum held in ``bins``, correctly
    rounded (to nearest, ties to even).

    Returns ``nan`` when any element was NaN or Inf, and ``inf`` when an
    element's square or the exact sum exceeds the float64 range. Compiled,
    so it also runs inside ``@njit`` code.
    """
    if bins[NONFINITE] != 0:
        return np.nan
    if bins[OVERFLOW] != 0:
        return np.inf
    limbs = np.zeros(_LIMBS, np.int64)
    for j in range(1, EXPONENTS):
        if bins[j] != 0:
            _add_at(limbs, bins[j], j - 1 + _LOW_BITS)
        if bins[EXPONENTS + j] != 0:
            _add_at(limbs, bins[EXPONENTS + j], j - 1)
    for q in range(_LIMBS - 1):
        limbs[q + 1] += limbs[q] >> 32
        limbs[q] &= _MASK32
    top = _LIMBS - 1
    while top >= 0 and limbs[top] == 0:
        top -= 1
    if top < 0:
        return 0.0
    length = 32 * top
    word = limbs[top]
    while word != 0:
        length += 1
        word >>= 1
    if length <= 53:
        # N < 2**53: exact, and so is its scaling (a subnormal or the least normals).
        n = limbs[0] + (limbs[1] << 32)
        return math.ldexp(np.float64(n), -1074)
    shift = length - 53
    significand = np.int64(0)
    for b in range(53):
        significand |= _bit(limbs, shift + b) << b
    half = _bit(limbs, shift - 1)
    sticky = 0
    for b in range(shift - 1):
        if _bit(limbs, b):
            sticky = 1
            break
    if half and (sticky or (significand & 1)):
        significand += 1
        if significand == np.int64(1) << 53:
            significand >>= 1
            shift += 1
    if shift - 1074 + 53 > 1024:
        return np.inf
    return math.ldexp(np.float64(significand), shift - 1074)
