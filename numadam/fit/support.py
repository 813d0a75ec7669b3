"""The bounds, the stopping tests, the result object and the progress display
of :func:`numadam.minimize`."""

import math
import numbers
import sys
import time
from array import array

import numpy as np

__all__ = ["make_box", "projected_gradient", "ValueTrend", "AGREEMENT", "NOISE_Z", "make_result",
           "Progress", "OptimizeResult"]

# The ftol test passes only where successive gradients disagree: measured
# mean cosines over a window were 0.99-1.00 on plateaus and smooth descents
# (3-component Gaussian mixtures, Rosenbrock), 0.0-0.05 under minibatch noise
# at the optimum and -0.9 to -0.97 while oscillating about a minimum.
AGREEMENT = 0.5
# Standard errors of the noise that a change of window means must clear:
# 2 is about 98% one-sided for Gaussian noise.
NOISE_Z = 2.0
_BLOCK = 128        # values per partial sum of ValueTrend's squared steps


def make_box(bounds, x):
    """``(lower, upper)`` arrays shaped like ``x``, or None when nothing is bounded."""
    if bounds is None:
        return None
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lower = _bound_array(bounds.lb, -np.inf, x, "bounds.lb")
        upper = _bound_array(bounds.ub, np.inf, x, "bounds.ub")
    else:
        if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__"):
            raise ValueError(f"bounds must be a sequence of (min, max) pairs, got {bounds!r}")
        if len(bounds) != x.size:
            raise ValueError(f"bounds has {len(bounds)} pairs for {x.size} variables")
        lower = np.empty(x.size)
        upper = np.empty(x.size)
        for i, pair in enumerate(bounds):
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") \
                    or len(pair) != 2:
                raise ValueError(f"bounds[{i}] must be a (min, max) pair, got {pair!r}")
            lower[i] = -np.inf if pair[0] is None else _real(f"bounds[{i}][0]", pair[0])
            upper[i] = np.inf if pair[1] is None else _real(f"bounds[{i}][1]", pair[1])
        lower, upper = lower.reshape(x.shape), upper.reshape(x.shape)
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise ValueError("bounds hold NaN")
    crossed = np.flatnonzero(lower > upper)
    if crossed.size:
        i = int(crossed[0])
        raise ValueError(f"bounds of element {i} are crossed: min {lower.flat[i]} > "
                         f"max {upper.flat[i]}")
    if np.all(np.isinf(lower)) and np.all(np.isinf(upper)):
        return None
    low, high = _inwards(lower, x.dtype, np.inf), _inwards(upper, x.dtype, -np.inf)
    empty = np.flatnonzero(low > high)
    if empty.size:
        i = int(empty[0])
        raise ValueError(f"bounds of element {i}, [{lower.flat[i]}, {upper.flat[i]}], hold no "
                         f"{x.dtype} number (x0 is {x.dtype})")
    return low, high


def _inwards(bound, dtype, direction):
    """``bound`` in ``dtype``, rounded towards ``direction`` (into the box)
    where rounding to nearest would move it out: float32(0.1) > 0.1."""
    with np.errstate(over="ignore"):      # beyond float32's range: inf, then its max
        rounded = bound.astype(dtype)
    outside = rounded < bound if direction > 0 else rounded > bound
    return np.where(outside, np.nextafter(rounded, dtype.type(direction)), rounded)


def _real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number or None, got {value!r}")
    return float(value)


def _bound_array(bound, unbounded, x, name):
    array = np.asarray(unbounded if bound is None else bound, dtype=np.float64)
    if array.size == x.size and array.shape != x.shape:
        array = array.reshape(x.shape)
    try:
        return np.broadcast_to(array, x.shape)
    except ValueError:
        raise ValueError(f"{name} has shape {array.shape}, which does not fit x0's "
                         f"shape {x.shape}") from None


def projected_gradient(x, g, box):
    """L-BFGS-B's projected gradient (its ``projgr``), ``g`` itself without bounds.

    A component whose descent direction ``-g_i`` leads out of the box counts
    only up to its distance to that bound: where ``g_i < 0`` (descent raises
    ``x_i``), ``pg_i = max(x_i - upper_i, g_i)``; elsewhere
    ``pg_i = min(x_i - lower_i, g_i)``. A component at its bound with the
    gradient pointing out of the box is therefore zero; an infinite bound
    leaves ``g_i`` exactly as it is.
    """
    if box is None:
        return g
    lower, upper = box
    # x lies in the box, so x - upper <= 0 <= x - lower, and clamping g between
    # them is both branches at once: the same subtractions, the same bits
    return np.minimum(np.maximum(g, x - upper), x - lower)


class ValueTrend:
    """The ``ftol`` test of :func:`numadam.minimize`.

    Keeps prefix sums of the values ``f_k`` and of ``c_k``, the cosine between
    the (projected) gradients of evaluations ``k`` and ``k - 1`` (``c_0 = 0``),
    so that a mean over any window costs two look-ups. With ``n`` values and
    the window ``W = max(patience, n // 4)``, once ``n >= 3 W``, the means
    ``C, A, B`` of ``f`` over the three consecutive windows of ``W`` values
    that end with the latest one (``B`` the last) give::

        stalled  <=>  |C - A| + E <= ftol * max(|C|, |A|)
                 and  |A - B| + E <= ftol * max(|A|, |B|)
                 and  mean(c over the last W) <= AGREEMENT

    where ``E = NOISE_Z * sigma * sqrt(2 / W)`` bounds the noise of the
    difference of two window means, with ``sigma^2 = mean((f_k - f_{k-1})^2)
    / 2`` over the ``3 W`` values (von Neumann's estimate, which a slow trend
    hardly inflates). ``E`` keeps a descent hidden in noise (one sample per
    evaluation, far from the optimum) from passing after a few windows:
    window means that do not fall measurably are no evidence that they
    stopped falling. A deterministic run that settles has tiny successive
    differences; one that keeps bouncing (a step size too large) does not
    pass until its fluctuation is within ``ftol``.

    The window grows with the run: late in a long run a slow but steady
    descent still shows, and ``E`` shrinks like ``1 / sqrt(W)``. Two stalled
    pairs in a row let an overshoot (the value rising for a while, then
    falling further) fail one of them. Agreeing gradients mean a consistent
    descent (a plateau near a saddle, a smooth approach), which ``gtol``
    judges, not the value.
    """

    def __init__(self, ftol, patience):
        self.ftol = ftol
        self.patience = patience
        # array('d'): 8 bytes a value, and indexing gives Python floats,
        # whose arithmetic costs a fraction of NumPy scalars'
        self.sums = array("d", [0.0])         # sums[n] = f_0 + ... + f_{n-1}
        # jumps[k] = (f_k - f_{k-1})^2 (jumps[0] = 0) and its sums over blocks
        # of _BLOCK: prefix sums would lose a late window's small jumps to the
        # rounding of an early run's large ones.
        self.jumps = array("d")
        self.blocks = array("d")
        self.block = 0.0
        self.last = None
        self.agreement = array("d", [0.0])    # the same for c_k
        self.total = 0.0
        self.carry = 0.0
        self.direction = None
        self.length = 0.0

    def add(self, f, pg, size):
        """Record the next value and projected gradient ``pg``, whose max-norm
        ``size`` is positive; return ``(stalled, W, change, agreement)``:
        ``change`` the larger of the two relative changes tested (with ``E``
        once the cheaper tests pass), ``agreement`` the mean cosine over the
        last window."""
        # Neumaier's compensated sum: every stored prefix sum is within one
        # rounding of the exact one, so a window's mean is good to a few ulps
        # of |f| however long the run (a plain running sum drifts by ~n ulps).
        total = self.total + f
        if abs(self.total) >= abs(f):
            self.carry += (self.total - total) + f
        else:
            self.carry += (f - total) + self.total
        self.total = total
        self.sums.append(total + self.carry)
        jump = 0.0 if self.last is None else (f - self.last) ** 2
        self.last = f
        self.jumps.append(jump)
        self.block += jump
        if len(self.jumps) % _BLOCK == 0:
            self.blocks.append(self.block)
            self.block = 0.0
        # scaled by max|pg| first, so that huge or tiny gradients neither
        # overflow nor underflow the dot products (float64 even for float32)
        direction = pg / np.float64(size)
        length = math.sqrt(float(np.dot(direction, direction)))
        cosine = 0.0 if self.direction is None else \
            float(np.dot(direction, self.direction)) / (length * self.length)
        self.direction, self.length = direction, length
        self.agreement.append(self.agreement[-1] + cosine)
        n = len(self.sums) - 1
        window = max(self.patience, n // 4)
        if n < 3 * window:
            return False, window, math.nan, math.nan
        s = self.sums
        oldest, before, last = ((s[n - k * window] - s[n - (k + 1) * window]) / window
                                for k in (2, 1, 0))
        agreement = (self.agreement[n] - self.agreement[n - window]) / window
        change = max(_relative_change(oldest, before), _relative_change(before, last))
        if change > self.ftol or agreement > AGREEMENT:    # cheap, and necessary
            return False, window, change, agreement
        # The window means are estimates: the changes must be small by
        # NOISE_Z standard errors. The noise is measured by successive
        # differences (von Neumann), which a slow trend hardly inflates:
        # sigma^2 = mean((f_k - f_{k-1})^2) / 2 over the three windows, and
        # the difference of two window means has variance 2 sigma^2 / W.
        count = 3 * window - 1
        error = NOISE_Z * math.sqrt(self._jump_sum(n - count, n) / (count * window))
        change = max(_relative_change(oldest, before, error),
                     _relative_change(before, last, error))
        return change <= self.ftol, window, change, agreement

    def _jump_sum(self, lo, hi):
        """``jumps[lo] + ... + jumps[hi - 1]`` in O(_BLOCK + hi / _BLOCK). The
        terms are never negative, so plain sums are good to a few ulps."""
        first, last = -(-lo // _BLOCK), hi // _BLOCK
        if first >= last:
            return sum(self.jumps[lo:hi])
        return (sum(self.jumps[lo:first * _BLOCK]) + sum(self.blocks[first:last])
                + sum(self.jumps[last * _BLOCK:hi]))


def _relative_change(earlier, later, error=0.0):
    """``(|earlier - later| + error) / max(|earlier|, |later|)``; 0 when all are 0."""
    scale = max(abs(earlier), abs(later))
    if not scale:
        return math.inf if error else 0.0
    return (abs(earlier - later) + error) / scale


class OptimizeResult(dict):
    """``scipy.optimize.OptimizeResult``'s stand-in when scipy is not installed:
    a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __dir__(self):
        return list(self.keys())

    def __repr__(self):
        if not self:
            return f"{type(self).__name__}()"
        width = max(map(len, self.keys())) + 1
        return "\n".join(f"{key.rjust(width)}: {value!r}" for key, value in self.items())


_result_class = None


def make_result(**fields):
    """An ``OptimizeResult``: scipy's own class when scipy is importable."""
    global _result_class
    if _result_class is None:
        try:
            from scipy.optimize import OptimizeResult as scipy_result
        except ImportError:
            scipy_result = OptimizeResult
        _result_class = scipy_result
    return _result_class(**fields)


class Progress:
    """``disp``: a tqdm bar when tqdm is installed, else a line a second."""

    def __init__(self, maxiter, enabled):
        self.enabled = enabled
        total = None if maxiter == math.inf else math.ceil(maxiter)
        self.bar = None
        self.last = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="numadam.minimize", unit="step")

    def update(self, nit, f, best, gnorm):
        if not self.enabled:
            return
        if self.bar is not None and nit > self.bar.n:
            self.bar.update(nit - self.bar.n)
        now = time.monotonic()
        interval = 0.1 if self.bar is not None else 1.0
        if now - self.last < interval:
            return
        self.last = now
        text = f"f={f:.6g} best={best:.6g} max|g|={gnorm:.3g}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        else:
            print(f"numadam.minimize step {nit}: {text}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def summary(self, result):
        if self.enabled:
            print(result.message)
            print(f"         Current function value: {result.fun:.6g}")
            print(f"         Iterations: {result.nit:d}")
            print(f"         Function evaluations: {result.nfev:d}")
