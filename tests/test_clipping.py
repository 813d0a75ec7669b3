"""Gradient clipping (``max_grad_norm``, ``clip_value``) of every optimizer.

The contract: a clipped step equals clipping the gradients in NumPy
(``np.clip``, then ``g * dtype(coef)`` with the norm from ``math.fsum`` of
the float64 squares) and taking the unclipped step, bit for bit; the user's
gradient arrays are never written; the thread count changes no bit.
"""

import copy
import importlib.util
import math
import os
import pickle
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numadam
from helpers import assert_bits_equal
from internals import (NBINS, NCOLS, NONFINITE, OFFSET, OVERFLOW, PTR_G, SIZE, address,
                       bins_to_sum, clip_gradient, square_bins_parallel, square_bins_serial,
                       square_sum_bins)

EPS = 1e-6      # torch.nn.utils.clip_grad_norm_'s


# ------------------------------------------------------------ the reference
def _square_sum(grads):
    """Exact sum of the float64 squares, correctly rounded (math.fsum)."""
    squares = [np.square(g.astype(np.float64)).ravel() for g in grads if g is not None]
    if not squares:
        return 0.0
    squares = np.concatenate(squares)
    if not np.isfinite(squares).all():
        return math.nan if np.isnan(squares).any() else math.inf
    try:
        return math.fsum(squares.tolist())
    except OverflowError:
        return math.inf


def reference_clip(grads, max_grad_norm, clip_value):
    """``(clipped copies of grads, norm)`` as NumPy computes them."""
    out = []
    for g in grads:
        if g is not None and clip_value is not None:
            t = g.dtype.type
            with np.errstate(over="ignore"):
                g = np.clip(g, t(-clip_value), t(clip_value))
        out.append(None if g is None else g.copy())
    norm = None
    if max_grad_norm is not None:
        norm = math.sqrt(_square_sum(out))
        coef = max_grad_norm / (norm + EPS)
        if coef < 1:
            out = [None if g is None else g * g.dtype.type(coef) for g in out]
    return out, norm


# ------------------------------------------------ rules, random hyperparameters
def _variants(rng):
    """(class, keyword arguments) of every rule variant, hyperparameters random."""
    betas = (float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.9, 0.9999)))
    return {
        "adam": (numadam.Adam, dict(lr=rng.uniform(1e-4, 0.1), betas=betas,
                                    eps=10 ** rng.uniform(-10, -6),
                                    weight_decay=rng.uniform(0, 0.1))),
        "adamw": (numadam.AdamW, dict(lr=rng.uniform(1e-4, 0.1), betas=betas,
                                      weight_decay=rng.uniform(0, 0.1), maximize=True)),
        "amsgrad": (numadam.Adam, dict(lr=rng.uniform(1e-4, 0.1), amsgrad=True,
                                       eps=10 ** rng.uniform(-10, -6))),
        "sgd": (numadam.SGD, dict(lr=rng.uniform(1e-4, 0.1), momentum=rng.uniform(0.1, 0.99),
                                  dampening=rng.uniform(0, 0.5),
                                  weight_decay=rng.uniform(0, 0.1))),
        "sgd_nesterov": (numadam.SGD, dict(lr=rng.uniform(1e-4, 0.1),
                                           momentum=rng.uniform(0.1, 0.99), nesterov=True)),
        "sgd_plain": (numadam.SGD, dict(lr=rng.uniform(1e-4, 0.1))),
        "adagrad": (numadam.Adagrad, dict(lr=rng.uniform(1e-4, 0.1),
                                          lr_decay=rng.uniform(0, 0.01),
                                          initial_accumulator_value=rng.uniform(0, 0.5),
                                          eps=10 ** rng.uniform(-12, -8))),
        "rmsprop": (numadam.RMSprop, dict(lr=rng.uniform(1e-4, 0.1),
                                          alpha=rng.uniform(0.8, 0.999),
                                          momentum=rng.uniform(0.1, 0.9), centered=True,
                                          weight_decay=rng.uniform(0, 0.1))),
    }


VARIANTS = sorted(_variants(np.random.default_rng(0)))


def _params(rng, dtype, mixed):
    """Parameters of two groups; ``mixed``: group 0 holds both dtypes."""
    other = np.float64 if dtype == np.float32 else np.float32
    shapes = [(33,), (5, 7), (129,), (3,)]
    dtypes = [dtype, other if mixed else dtype, dtype, other if mixed else dtype]
    return [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]


def _groups(params, rng):
    return [dict(params=params[:2]), dict(params=params[2:], lr=float(rng.uniform(1e-4, 0.1)))]


def _gradients(rng, params, step):
    scale = 10 ** rng.uniform(-3, 2)
    grads = [(rng.standard_normal(p.shape) * scale).astype(p.dtype) for p in params]
    if step % 3 == 2:
        grads[1] = None         # a parameter without a gradient this step
    return grads


def _state_arrays(opt):
    state = opt.state_dict()["state"]
    return [value for k in sorted(state) for name, value in sorted(state[k].items())
            if isinstance(value, np.ndarray)]


def _compare(name, dtype, mixed, max_grad_norm, clip_value, seed, steps=5):
    rng = np.random.default_rng(seed)
    cls, kwargs = _variants(rng)[name]
    params = _params(rng, dtype, mixed)
    mine = [p.copy() for p in params]
    theirs = [p.copy() for p in params]
    clipped = cls(_groups(mine, np.random.default_rng(seed)), **kwargs,
                  max_grad_norm=max_grad_norm, clip_value=clip_value)
    plain = cls(_groups(theirs, np.random.default_rng(seed)), **kwargs)
    for step in range(steps):
        grads = _gradients(rng, params, step)
        kept = [None if g is None else g.copy() for g in grads]
        expected, norm = reference_clip(grads, max_grad_norm, clip_value)
        clipped.step(grads)
        plain.step(expected)
        for g, k in zip(grads, kept):
            if g is not None:
                assert_bits_equal(g, k, "the user's gradient")
        if max_grad_norm is None:
            assert clipped.last_grad_norm is None
        else:
            assert clipped.last_grad_norm == norm
        for k, (a, b) in enumerate(zip(mine, theirs)):
            assert_bits_equal(a, b, f"{name} {np.dtype(dtype)} parameter {k} step {step}")
        for k, (a, b) in enumerate(zip(_state_arrays(clipped), _state_arrays(plain))):
            assert_bits_equal(a, b, f"{name} state array {k} step {step}")


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_step_is_numpy_clipping_then_the_plain_step(name, dtype):
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        c = float(10 ** rng.uniform(-1, 2))
        v = float(10 ** rng.uniform(-2, 1))
        _compare(name, dtype, seed == 1, c, None, seed)
        _compare(name, dtype, seed != 1, None, v, seed)
        _compare(name, dtype, seed == 2, c, v, seed)


def test_owned_gradients_are_clipped_and_left_as_they_were():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(100).astype(np.float32)
    y = x.copy()
    opt = numadam.Adam([x], lr=0.01, max_grad_norm=0.5, clip_value=0.8)
    plain = numadam.Adam([y], lr=0.01)
    g = (rng.standard_normal(100) * 3).astype(np.float32)
    opt.grads[0][...] = g
    expected, norm = reference_clip([g], 0.5, 0.8)
    opt.step()
    plain.step(expected)
    assert_bits_equal(opt.grads[0], g, "the owned gradient")
    assert_bits_equal(x, y, "parameter")
    assert opt.last_grad_norm == norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_and_the_task_split_change_no_bit(dtype):
    rng = np.random.default_rng(11)
    n = 5000
    start = [rng.standard_normal(n).astype(dtype), rng.standard_normal(777).astype(dtype)]
    grads = [[(rng.standard_normal(p.size) * 10.0 ** rng.uniform(-30, 30, p.size))
              .astype(dtype) for p in start] for _ in range(3)]
    saved = (numadam.config.threads, numadam.config.serial_below, numadam.config.min_task)
    results = []
    try:
        for threads, serial_below in ((1, 1 << 40), (1, 16), (2, 16)):
            numadam.config.threads, numadam.config.serial_below = threads, serial_below
            numadam.config.min_task = 100
            params = [p.copy() for p in start]
            opt = numadam.Adam(params, lr=1e-3, max_grad_norm=1.0, clip_value=1e20)
            norms = []
            for g in grads:
                opt.step(g)
                norms.append(opt.last_grad_norm)
            results.append((params, norms))
    finally:
        numadam.config.threads, numadam.config.serial_below, numadam.config.min_task = saved
    for params, norms in results[1:]:
        assert norms == results[0][1]
        for a, b in zip(params, results[0][0]):
            assert_bits_equal(a, b, "parameter")
    expected = [math.sqrt(_square_sum(reference_clip(g, None, 1e20)[0])) for g in grads]
    assert results[0][1] == expected


# ---------------------------------------------------------------- the norm
def _table_over(arrays):
    table = np.zeros((len(arrays), NCOLS), np.int64)
    offset = 0
    for row, g in enumerate(arrays):
        table[row, PTR_G] = address(g)
        table[row, OFFSET] = offset
        table[row, SIZE] = g.size
        offset += g.size
    return table


def _fraction_sum(bins):
    """The exact sum in ``bins`` as a Fraction (the layout of numadam.cpu.norm)."""
    half = (NBINS - 2) // 2
    exact = 0
    for j in range(1, half):
        exact += ((int(bins[j]) << 26) + int(bins[half + j])) << (j - 1)
    return Fraction(exact, 1 << 1074)


def _rounded(fraction):
    try:
        return float(fraction)      # Fraction.__float__ rounds correctly
    except OverflowError:
        return math.inf


def test_bins_to_sum_rounds_correctly_on_adversarial_bins():
    rng = np.random.default_rng(3)
    half = (NBINS - 2) // 2
    cases = [np.zeros(NBINS, np.int64)]
    for _ in range(300):
        bins = np.zeros(NBINS, np.int64)
        count = rng.integers(1, 6)
        for j in rng.integers(1, 2046, count):
            bins[j] = rng.integers(0, 1 << 62)
            bins[half + j] = rng.integers(0, 1 << 62)
        cases.append(bins)
    # Ties and near-ties: a 53-bit significand, then a half and a far sticky bit.
    for significand in (1 << 52, (1 << 53) - 1, (1 << 52) + 1):
        for sticky in (0, 1):
            for low in (0, 1):
                bins = np.zeros(NBINS, np.int64)
                bins[1000] = significand << 4 | (low << 3)     # bit 3: the half
                bins[half + 1] = sticky
                cases.append(bins)
    top = np.zeros(NBINS, np.int64)
    top[2046] = (1 << 62) - 1                               # far beyond float64: inf
    cases.append(top)
    small = np.zeros(NBINS, np.int64)
    small[half + 1] = 3                                     # subnormal 3 * 2**-1074
    cases.append(small)
    for bins in cases:
        expected = _rounded(_fraction_sum(bins))
        assert bins_to_sum(bins) == expected, bins[np.flatnonzero(bins)]


def test_bins_flag_nonfinite_and_overflow():
    bins = np.zeros(NBINS, np.int64)
    bins[NONFINITE] = 1
    assert math.isnan(bins_to_sum(bins))
    bins[NONFINITE] = 0
    bins[OVERFLOW] = 2
    assert bins_to_sum(bins) == math.inf


_floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_floats64 = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e150,
                      max_value=1e150)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(_floats32, min_size=1, max_size=40).map(
    lambda v: np.array(v, np.float32)), st.lists(_floats64, min_size=1, max_size=40).map(
    lambda v: np.array(v, np.float64))), st.integers(0, 39))
def test_the_norm_is_exact_on_any_gradient(g, cut):
    """Subnormals, huge values and cancellation-prone mixtures: the bins give
    the correctly rounded sum of the float64 squares in any split."""
    like = np.empty(0, g.dtype)
    expected = _square_sum([g])
    whole = square_bins_serial(_table_over([g]), like)
    assert bins_to_sum(whole) == expected
    assert _rounded(_fraction_sum(whole)) == expected
    cut = min(cut, g.size)
    pieces = [g[:cut].copy(), g[cut:].copy()]
    split = square_bins_parallel(_table_over(pieces), like, 1, 2)
    assert bins_to_sum(split) == expected
    assert bins_to_sum(square_sum_bins(_table_over(pieces), like, g.size)) == expected


@pytest.mark.parametrize("spread", [0, 3, 30])
def test_the_blocked_float32_norm_is_exact_in_any_split(spread):
    """The optimizers' float32 path (blocks of extracted squares): the exact
    sum on one thread and on tasks of any size, subnormals and NaN-free
    blocks beside a block that holds a NaN."""
    rng = np.random.default_rng(spread)
    n = 20_000
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-spread, spread, n)).astype(np.float32)
    g[:4] = [0.0, 1e-45, -3e-44, np.finfo(np.float32).tiny]
    like = np.empty(0, np.float32)
    table = _table_over([g[:7001], g[7001:]])
    expected = _square_sum([g])
    for split in _splits():
        assert bins_to_sum(square_sum_bins(table, like, n)) == expected, split
    g[12345] = np.nan
    bins = square_sum_bins(table, like, n)
    assert bins[NONFINITE] == 1 and math.isnan(bins_to_sum(bins))
    g[12345] = 0.0
    assert bins_to_sum(square_sum_bins(table, like, n)) == _square_sum([g])


def _splits():
    """Yield ``(serial_below, min_task, threads)`` set in numadam.config: one
    thread, then tasks of 1,000 elements for 2 threads and of 1 element for
    3; the config is restored afterwards."""
    saved = (numadam.config.serial_below, numadam.config.min_task, numadam.config.threads)
    try:
        for serial_below, min_task, threads in ((1 << 40, 1, 1), (0, 1000, 2), (0, 1, 3)):
            numadam.config.serial_below, numadam.config.min_task = serial_below, min_task
            numadam.config.threads = threads
            yield serial_below, min_task, threads
    finally:
        numadam.config.serial_below, numadam.config.min_task, numadam.config.threads = saved


def _exact_sum_of_squares(g):
    """The exact sum of the float64 squares of float32 ``g``, as a Fraction."""
    total = 0
    for v in np.square(g.astype(np.float64)).tolist():
        n, d = v.as_integer_ratio()
        total += n * ((1 << 1074) // d)
    return Fraction(total, 1 << 1074)


def _assert_exact_in_splits(g, cuts, exact=None):
    """``square_sum_bins`` over ``g`` cut into table rows at ``cuts``, on one
    thread and on tasks of several sizes: always the correctly rounded sum
    (and, when ``exact`` is given, bins that hold exactly that sum)."""
    like = np.empty(0, np.float32)
    table = _table_over(np.split(g, cuts))
    expected = _square_sum([g])
    for split in _splits():
        bins = square_sum_bins(table, like, g.size)
        assert bins[NONFINITE] == 0 and bins[OVERFLOW] == 0
        assert (bins >= 0).all()       # any number of them add up without overflow
        assert bins_to_sum(bins) == expected, split
        if exact is not None:
            assert _fraction_sum(bins) == exact, split


def test_the_blocked_float32_norm_is_exact_on_adversarial_blocks():
    """Blocks of 1024 that each take the float32 path's corner: the grid of a
    block is guessed from the one before (largest square v_max, then a bound
    2**(k-1) = 4 * 2**floor(log2(v_max))), so each block below is placed
    after one that makes the guess exact, too small or too large."""
    b = 1024
    f32 = np.float32
    big = np.finfo(np.float32).max
    rng = np.random.default_rng(13)
    ones = np.ones(b, f32)                              # v_max = 1: bound 4
    above = ones.copy()
    above[700] = np.nextafter(f32(2), f32(3))          # one square just above 4
    # Squares at odd multiples of half a grid unit of the blocks with bound 4
    # (units 2**-49 and 2**-101): ties of the rounding to nearest.
    ties = np.resize(np.array([2.0 ** -25, (1 + 2.0 ** -23) * 2.0 ** -2, 2.0 ** -51, 1.0,
                               -(1 - 2.0 ** -24), 2.0 ** -50 * 3], f32), b)
    powers = np.resize(np.ldexp(f32(1), np.arange(-149, 128)).astype(f32), b)
    powers[::2] *= -1
    wide = (rng.standard_normal(b) * 10.0 ** rng.uniform(-20, 20, b)).astype(f32)
    near = (1 + rng.integers(0, 8, b) * 2.0 ** -23).astype(f32)    # all in [1, 1 + 2**-20)
    blocks = [ones, np.full(b, 2, f32),                 # every square at the bound: a = 2**(k+1)
              ones, above, ones, ties, ones, near,
              # squares 25 * 2**-54, 7 * 2**-54 below the grid point 2**-49:
              # negative remainders, 1024 of them: negative second-level parts
              ones, np.full(b, 5 * 2.0 ** -27, f32),
              np.full(b, big, f32),                     # all equal, the largest squares
              np.full(b, 1e-45, f32),                   # subnormals after them: guess too large
              np.zeros(b, f32), ones,                   # zeros keep the guess
              np.full(b, -3.0, f32), powers, wide, ones,
              np.full(b, 2.0 ** -60, f32), ones]        # a guess far too large, exact anyway
    g = np.concatenate(blocks)
    exact = _exact_sum_of_squares(g)
    _assert_exact_in_splits(g, [len(blocks) // 2 * b], exact)      # rows on block bounds
    _assert_exact_in_splits(g, [1, 5000, 5001, 9000], exact)        # rows that shift them


_segment = st.tuples(st.sampled_from(["equal", "gauss", "powers", "zeros"]),
                     st.integers(-75, 63), st.integers(1, 2500))


@settings(max_examples=60, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=8), st.integers(0, 2 ** 32 - 1),
       st.integers(0, 20_000))
def test_the_blocked_float32_norm_is_exact_on_any_sequence_of_blocks(segments, seed, cut):
    """Runs of equal values, Gaussians, powers of two and zeros, of any
    scale and length, one after the other: each block's guessed grid meets
    every kind of neighbour; any split gives the same exact sum."""
    rng = np.random.default_rng(seed)
    parts = []
    for kind, exponent, length in segments:
        scale = 2.0 ** exponent
        if kind == "equal":
            part = np.full(length, scale * rng.uniform(-2, 2))
        elif kind == "gauss":
            part = rng.standard_normal(length) * scale
        elif kind == "powers":
            part = np.ldexp(1.0, rng.integers(-149, 128, length)) * rng.choice([-1, 1], length)
        else:
            part = np.zeros(length)
        parts.append(part.astype(np.float32))
    g = np.concatenate(parts)
    _assert_exact_in_splits(g, [min(cut, g.size)], _exact_sum_of_squares(g))


def test_the_blocked_float32_norm_is_exact_over_a_huge_dynamic_range():
    """A million float32 gradients spread over 10**-46 .. 10**37 (subnormals
    included), whole and cut into rows."""
    rng = np.random.default_rng(7)
    n = 1_000_000
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-46, 37, n)).astype(np.float32)
    g[rng.integers(0, n, 1000)] = 0.0
    _assert_exact_in_splits(g, [])
    _assert_exact_in_splits(g, [123_457, 600_000])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_norm_bins_the_clamped_gradient(dtype):
    t = np.dtype(dtype).type
    g = np.array([np.inf, -np.inf, 3.0, -0.5, np.finfo(dtype).tiny / 4], dtype)
    like = np.empty(0, dtype)
    bins = square_bins_serial(_table_over([g]), like, (t(-1.5), t(1.5), t(1)))
    assert bins[NONFINITE] == 0
    assert bins_to_sum(bins) == _square_sum([np.clip(g, t(-1.5), t(1.5))])
    g[0] = np.nan
    bins = square_bins_serial(_table_over([g]), like, (t(-1.5), t(1.5), t(1)))
    assert bins[NONFINITE] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_transform_is_np_clip_then_scale(dtype):
    t = np.dtype(dtype).type
    values = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, -2.0, 2.0, 1.5, -1.5, 0.25], dtype)
    for lo, hi in ((-1.5, 1.5), (-2.0, 2.0), (-np.inf, np.inf)):
        for scale in (1.0, 0.3):
            expected = np.clip(values, t(lo), t(hi)) * t(scale)
            got = np.array([clip_gradient(x, (t(lo), t(hi), t(scale))) for x in values], dtype)
            assert_bits_equal(got, expected, f"clip {lo, hi, scale}", nan_bits=False)


# ------------------------------------------------------- NaN, skips, copies
def test_a_nonfinite_gradient_leaves_the_norm_nan_and_the_gradient_unscaled():
    x = np.zeros(4)
    y = np.zeros(4)
    g = np.array([1e3, np.nan, 2.0, -1e3])
    opt = numadam.SGD([x], lr=0.1, max_grad_norm=1.0)
    numadam.SGD([y], lr=0.1).step([g])
    opt.step([g])
    assert math.isnan(opt.last_grad_norm)
    assert_bits_equal(x, y, "parameter", nan_bits=False)


@pytest.mark.parametrize("check", ["skip", "raise"])
def test_check_finite_with_clipping_records_a_nan_norm_and_changes_nothing(check):
    x = np.ones(4, np.float32)
    opt = numadam.Adam([x], lr=0.1, max_grad_norm=1.0, check_finite=check)
    opt.step([np.ones(4, np.float32)])
    before = x.copy(), copy.deepcopy(opt.state_dict())
    bad = np.array([1, 2, np.nan, 3], np.float32)
    if check == "raise":
        with pytest.raises(FloatingPointError, match="parameter 0"):
            opt.step([bad])
    else:
        opt.step([bad])
        assert opt.skipped_steps == 1
    assert math.isnan(opt.last_grad_norm)
    assert_bits_equal(x, before[0], "parameter")
    assert opt.state[0]["step"] == 1


def test_clip_value_turns_an_inf_into_the_bound_before_the_guard_and_the_norm():
    x = np.zeros(3)
    y = np.zeros(3)
    g = np.array([np.inf, -np.inf, 0.5])
    opt = numadam.Adam([x], lr=0.1, clip_value=2.0, max_grad_norm=1.0, check_finite="raise")
    opt.step([g])
    expected, norm = reference_clip([g], 1.0, 2.0)
    numadam.Adam([y], lr=0.1).step(expected)
    assert opt.last_grad_norm == norm == math.sqrt(8.25)
    assert_bits_equal(x, y, "parameter")
    guarded = numadam.Adam([np.zeros(3)], clip_value=2.0, check_finite="raise")
    guarded.step([g])                   # the clamped gradient is finite
    with pytest.raises(FloatingPointError):
        guarded.step([np.array([np.nan, 0.0, 0.0])])


def test_settings_are_attributes_validated_on_set_and_carried_by_copies():
    x = np.ones(8, np.float32)
    opt = numadam.RMSprop([x], lr=0.01)
    assert opt.max_grad_norm is None and opt.clip_value is None and opt.last_grad_norm is None
    opt.step([np.ones(8, np.float32)])
    assert opt.last_grad_norm is None
    opt.max_grad_norm = 2
    opt.clip_value = np.float32(0.5)
    assert type(opt.max_grad_norm) is float and opt.clip_value == 0.5
    opt.step([np.full(8, 3.0, np.float32)])
    assert opt.last_grad_norm == math.sqrt(8 * 0.25)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert (clone.max_grad_norm, clone.clip_value, clone.last_grad_norm) == (
            2.0, 0.5, opt.last_grad_norm)
        g = np.full(8, 9.0, np.float32)
        clone.step([g])
        twin = copy.deepcopy(opt)
        twin.step([g])
        assert_bits_equal(clone.param_groups[0]["params"][0],
                          twin.param_groups[0]["params"][0], "parameter")
    opt.max_grad_norm = None
    opt.clip_value = None
    assert not opt._clipping


@pytest.mark.parametrize("name", ["max_grad_norm", "clip_value"])
@pytest.mark.parametrize("bad", [0, -1.0, 0.0, math.nan, math.inf, -math.inf, True, False,
                                 "1.0", 1 + 0j, [1.0], np.array(1.0)])
def test_bad_settings_are_refused_naming_the_value(name, bad):
    x = np.ones(3)
    with pytest.raises(ValueError, match=name) as error:
        numadam.Adam([x], **{name: bad})
    assert repr(bad) in str(error.value)
    opt = numadam.SGD([x], lr=0.1)
    with pytest.raises(ValueError, match=name):
        setattr(opt, name, bad)
    assert getattr(opt, name) is None
    opt.step([np.ones(3)])
    assert (x == 0.9).all()


def test_a_parameter_without_gradient_does_not_count():
    x, y = np.zeros(2), np.zeros(2)
    opt = numadam.SGD([x, y], lr=1.0, max_grad_norm=1.0)
    opt.step([np.array([3.0, 4.0]), None])
    assert opt.last_grad_norm == 5.0
    assert (y == 0).all()


# ------------------------------------------------------------ sharded (one rank)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sharded_optimizer_clips_as_the_plain_one(dtype):
    """On one rank the averaged gradient is the gradient: ShardedAdam with
    clip_value and max_grad_norm steps bit for bit as Adam does, its scale
    fused into the kernel."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from numadam.distributed import ShardedAdam, ShardedRMSprop
    rng = np.random.default_rng(9)
    for cls, plain_cls in ((ShardedAdam, numadam.Adam), (ShardedRMSprop, numadam.RMSprop)):
        params = _params(rng, dtype, mixed=True)
        mine = [p.copy() for p in params]
        theirs = [p.copy() for p in params]
        sharded = cls(_groups(mine, np.random.default_rng(1)), lr=1e-2, max_grad_norm=0.7,
                      clip_value=0.9, comm=MPI.COMM_SELF)
        plain = plain_cls(_groups(theirs, np.random.default_rng(1)), lr=1e-2,
                          max_grad_norm=0.7, clip_value=0.9)
        for step in range(4):
            grads = _gradients(rng, params, step)
            kept = [None if g is None else g.copy() for g in grads]
            sharded.step(grads)
            plain.step(grads)
            assert sharded.last_grad_norm == plain.last_grad_norm
            for g, k in zip(grads, kept):
                if g is not None:
                    assert_bits_equal(g, k, "the user's gradient")
            for k, (a, b) in enumerate(zip(mine, theirs)):
                assert_bits_equal(a, b, f"{cls.__name__} parameter {k} step {step}")
    with pytest.raises(ValueError, match="clip_value"):
        ShardedAdam([np.zeros(3)], clip_value=-1.0, comm=MPI.COMM_SELF)


_DEVICE_SCRIPT = """
import numpy as np, numadam
from numba import cuda
x = cuda.to_device(np.ones(8, np.float32))
y = np.ones(8, np.float32)
for make in (lambda: numadam.Adam([x], max_grad_norm=1.0),
             lambda: numadam.SGD([x], lr=0.1, clip_value=1.0)):
    try:
        make()
    except NotImplementedError as error:
        assert "CUDA" in str(error), error
    else:
        raise AssertionError("clipping accepted over device arrays")
opt = numadam.Adam([x])
try:
    opt.max_grad_norm = 1.0
except NotImplementedError:
    assert opt.max_grad_norm is None
else:
    raise AssertionError("max_grad_norm set on a device optimizer")
host = numadam.Adam([y], clip_value=0.5)
try:
    host.add_param_group(dict(params=[x]))
except NotImplementedError:
    assert len(host.param_groups) == 1
else:
    raise AssertionError("device arrays added to a clipping optimizer")
print("refused")
"""


def test_device_parameters_refuse_clipping_under_the_cuda_simulator():
    """No silent fallback: device parameters with clipping are refused, at
    construction, when set, and through add_param_group."""
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT], cwd=root,
                            env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=root),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "refused" in result.stdout, result.stderr[-3000:]
