"""numadam.minimize: success means converged (the gtol and ftol tests, bounds, maxiter)."""

import ast
import inspect
import math
import os
import re
import sys
import types

import numpy as np
import pytest

import numadam
from internals import AGREEMENT, NOISE_Z, ValueTrend, projected_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rosenbrock(x):
    """The n-D Rosenbrock function (minimum 0 at all ones) and its gradient."""
    a, b = x[:-1], x[1:]
    value = float(np.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2))
    grad = np.zeros_like(x)
    grad[:-1] = -400.0 * a * (b - a * a) - 2.0 * (1.0 - a)
    grad[1:] += 200.0 * (b - a * a)
    return value, grad


@pytest.mark.parametrize("x0,tol,status", [
    (np.tile([-1.2, 1.0], 25), 1e-6, 0),
    # At lr=0.1 the iterates never settle (after 20,000 steps f is about 0.09
    # and max|g| about 6, measured): the value fluctuates by far more than
    # 1e-10 of itself, so nothing certifies convergence; the best point seen
    # is the minimum all the same.
    (np.tile([-1.2, 1.0], 25), 1e-10, 1),
    (-np.ones(50), 1e-6, 0),        # the value climbs for ~25 steps before it falls further
])
def test_tol_on_50d_rosenbrock_stops_at_the_minimum(x0, tol, status):
    res = numadam.minimize(rosenbrock, x0, jac=True, tol=tol,
                           options=dict(lr=0.1, maxiter=20_000))
    assert res.status == status, res.message
    assert res.fun < 1e-8
    np.testing.assert_allclose(res.x, np.ones(50), atol=1e-4)


CENTRES = np.array([-2.0, 0.5, 3.0])


def mixture_data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(CENTRES[0], 0.5, 90), rng.normal(CENTRES[1], 0.7, 120),
                           rng.normal(CENTRES[2], 0.6, 90)])


def mixture_nll(p, data):
    """Mean negative log-likelihood of a 3-component 1-D Gaussian mixture,
    ``p = (weight logits, means, log sigmas)``, and its gradient."""
    logit, mu, log_sigma = p[:3], p[3:6], p[6:]
    sigma = np.exp(log_sigma)
    log_w = logit - np.logaddexp.reduce(logit)
    z = (data[:, None] - mu) / sigma
    log_p = log_w - log_sigma - 0.5 * z * z - 0.5 * math.log(2 * math.pi)
    total = np.logaddexp.reduce(log_p, axis=1)
    r = np.exp(log_p - total[:, None])          # responsibilities
    grad = np.concatenate([np.exp(log_w) - r.mean(0), -(r * z / sigma).mean(0),
                           -(r * (z * z - 1)).mean(0)])
    return float(-total.mean()), grad


MIXTURE_X0 = np.array([0, 0, 0, -0.5, 0, 0.5, 0, 0, 0], dtype=float)


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_tol_on_a_gaussian_mixture_does_not_stop_on_the_plateau(tol):
    # From MIXTURE_X0 the fit first finds the left cluster and lingers for
    # hundreds of steps with the other two means merged near 1 (value 1.99,
    # falling by ~1e-7 per step) before it splits them (value 1.90).
    data = mixture_data()
    res = numadam.minimize(mixture_nll, MIXTURE_X0, args=(data,), jac=True, tol=tol,
                           options=dict(lr=0.03, maxiter=20_000))
    assert res.success, res.message
    np.testing.assert_allclose(np.sort(res.x[3:6]), CENTRES, atol=0.25)
    assert np.max(np.abs(res.jac)) < 1e-4


def test_gaussian_mixture_reaches_lbfgsbs_optimum():
    optimize = pytest.importorskip("scipy.optimize")
    data = mixture_data()
    reference = optimize.minimize(mixture_nll, MIXTURE_X0, args=(data,), jac=True,
                                  method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-10))
    res = numadam.minimize(mixture_nll, MIXTURE_X0, args=(data,), jac=True, tol=1e-6,
                           options=dict(lr=0.03, maxiter=20_000))
    assert reference.success and res.success
    assert abs(res.fun - reference.fun) <= 1e-6 * abs(reference.fun)

    def weights(p):          # the logits are defined up to a common shift
        return np.exp(p[:3] - np.logaddexp.reduce(p[:3]))
    np.testing.assert_allclose(weights(res.x), weights(reference.x), atol=1e-3)
    np.testing.assert_allclose(res.x[3:], reference.x[3:], atol=1e-3)


def test_ftol_stops_a_noisy_minibatch_fit_near_the_optimum():
    """The noisy use: minibatch least squares never meets gtol; ftol ends the
    run once the windowed means stop changing by more than their noise, near
    the full-data optimum. A minibatch value varies by about 18% of itself, so
    the difference of two window means of W values by about 25% / sqrt(W):
    ftol = 3e-2 can be certified with windows of about 300 values, 1e-3 only
    with about 260,000."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2000, 10))
    b = a @ rng.standard_normal(10) + 0.5 * rng.standard_normal(2000)
    best = np.linalg.lstsq(a, b, rcond=None)[0]
    batches = np.random.default_rng(2)

    def minibatch(x):
        rows = batches.integers(0, 2000, 64)
        r = a[rows] @ x - b[rows]
        return r @ r / 64, a[rows].T @ r / 32

    res = numadam.minimize(minibatch, np.zeros(10), jac=True,
                           options=dict(lr=0.01, ftol=3e-2, gtol=0.0, maxiter=20_000))
    assert res.success and "ftol" in res.message, res.message
    assert 200 < res.nit < 10_000
    assert np.linalg.norm(res.x - best) < 0.1 * np.linalg.norm(best)


def test_noise_that_hides_the_descent_is_not_convergence():
    """One sample per evaluation from far away: each value varies by more
    than the descent of a whole window, so the window means neither fall
    measurably nor agree in direction. That is no evidence of a stall, and
    success must not be claimed far from the optimum (the value test alone
    stopped these runs after 68 and 102 steps with 90% and 99% of the initial
    excess left)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1000, 10))
    b = a @ (3 * rng.standard_normal(10)) + 0.1 * rng.standard_normal(1000)

    def one_sample(x):
        i = rng.integers(0, 1000)
        r = a[i] @ x - b[i]
        return 0.5 * r * r, a[i] * r

    def full(x):
        r = a @ x - b
        return 0.5 * (r @ r) / 1000

    for lr in (1e-3, 1e-2):
        res = numadam.minimize(one_sample, np.zeros(10), jac=True,
                               options=dict(lr=lr, ftol=1e-3, gtol=0.0, maxiter=3000))
        assert not res.success or full(res.x) < 0.01 * full(np.zeros(10)), (lr, res.message)


def naive_stall(values, gradients, ftol, patience):
    """The documented ftol test, spelt out on the whole history."""
    n = len(values)
    w = max(patience, n // 4)
    if n < 3 * w:
        return False
    c, a, b = (np.mean(values[n - k * w:n - (k - 1) * w]) for k in (3, 2, 1))
    unit = gradients[n - w - 1:] / np.linalg.norm(gradients[n - w - 1:], axis=1)[:, None]
    cosines = np.sum(unit[1:] * unit[:-1], axis=1)
    sigma = np.sqrt(np.mean(np.diff(values[n - 3 * w:]) ** 2) / 2)
    error = NOISE_Z * sigma * np.sqrt(2 / w)
    return bool(abs(c - a) + error <= ftol * max(abs(c), abs(a))
                and abs(a - b) + error <= ftol * max(abs(a), abs(b))
                and np.mean(cosines) <= AGREEMENT)


def test_value_trend_is_the_documented_test_on_random_series():
    rng = np.random.default_rng(3)
    decisions = []
    for case in range(40):
        n = int(rng.integers(1, 300))
        trend = rng.choice([0.0, -1e-3, 1e-3, -1e-6]) * np.arange(n)
        values = rng.choice([1.0, -5.0, 1e6, 1e-9]) + trend \
            + rng.choice([0.0, 1e-4, 1e-2]) * rng.standard_normal(n)
        drift = rng.choice([0.0, 0.5, 3.0])        # from disagreeing to agreeing gradients
        scale = rng.choice([1e-200, 1.0, 1e200])   # neither overflows nor underflows
        gradients = (drift + rng.standard_normal((n, 3))) * scale
        ftol, patience = float(rng.choice([0.0, 1e-6, 1e-3])), int(rng.integers(1, 30))
        tracker = ValueTrend(ftol, patience)
        for k in range(n):
            size = np.max(np.abs(gradients[k]))
            stalled, window, _, _ = tracker.add(float(values[k]), gradients[k], size)
            assert window == max(patience, (k + 1) // 4)
            expected = naive_stall(values[:k + 1], gradients[:k + 1] / scale, ftol, patience)
            assert stalled == expected, (case, k)
            decisions.append(stalled)
    assert any(decisions) and not all(decisions)


def test_value_trend_past_its_first_buffer_and_on_a_constant_value():
    rng = np.random.default_rng(5)
    values = 3.0 - 1e-3 * np.sqrt(np.arange(2500)) + 1e-3 * rng.standard_normal(2500)
    gradients = rng.standard_normal((2500, 2))
    tracker = ValueTrend(1e-4, 20)
    for k in range(2500):
        size = np.max(np.abs(gradients[k]))
        stalled, _, _, _ = tracker.add(float(values[k]), gradients[k], size)
        if k % 97 == 0 or k > 2480:
            assert stalled == naive_stall(values[:k + 1], gradients[:k + 1], 1e-4, 20), k
    # A constant 0.1, not a binary fraction: the windowed means must agree to
    # about an ulp after 20,000 values (a plain running sum drifts to ~1e-12).
    tracker = ValueTrend(1e-14, 10)
    flip = np.array([1.0, -1.0])
    for k in range(20_000):
        stalled, window, decrease, _ = tracker.add(0.1, flip * (-1) ** k, 1.0)
        assert stalled == (k + 1 >= 3 * window), (k, decrease)


def alternating(value_at):
    """``fun`` with values ``value_at(call number)`` and a gradient whose sign
    flips every call, as when Adam oscillates about a minimum."""
    calls = []

    def fun(x):
        calls.append(1)
        return value_at(len(calls)), (-1.0) ** len(calls) * np.ones_like(x)
    return fun


def test_ftol_and_patience_stop_on_a_plateau():
    plateau = alternating(lambda k: 1.0 if k < 5 else 0.5)   # one improvement, then flat
    res = numadam.minimize(plateau, np.zeros(3), jac=True,
                           options=dict(ftol=1e-3, patience=7, maxiter=100))
    assert res.success and res.status == 0 and "ftol" in res.message
    # f_0..f_3 = 1: the first n with three windows of max(7, n // 4) values
    # after them is n = 4 + 3 * 7 = 25 values, i.e. iteration 24.
    assert res.nit == 24 and res.fun == 0.5


def test_a_flat_value_with_a_steady_gradient_is_not_converged():
    def steady(x):
        return 1.0, np.ones_like(x)     # a plateau: the value stalls, the descent goes on
    res = numadam.minimize(steady, np.zeros(3), jac=True,
                           options=dict(ftol=1e-3, patience=7, maxiter=300))
    assert (res.success, res.status, res.nit) == (False, 1, 300)


def test_tol_sets_ftol_unless_options_give_it():
    def run(**kwargs):
        # a slow descent (1e-3 per step) with a gradient that flips every call
        return numadam.minimize(alternating(lambda k: 10.0 - 1e-3 * k), np.zeros(2),
                                jac=True, **kwargs)
    loose = run(tol=0.5, options=dict(maxiter=200))
    assert loose.success and "ftol = 0.5" in loose.message and loose.nit == 59
    tight = run(tol=0.5, options=dict(maxiter=200, ftol=1e-6))
    assert (tight.success, tight.nit) == (False, 200)


def test_default_patience_scales_with_beta1():
    nits = [numadam.minimize(alternating(lambda k: 1.0), np.zeros(2), jac=True,
                             options=dict(ftol=0.0, betas=(beta1, 0.999))).nit
            for beta1 in (0.0, 0.9, 0.99)]
    # windows of max(10, 2 / (1 - beta1)): 10, 20, 200; the test needs three
    assert nits == [29, 59, 599]


def test_a_bound_that_stops_the_descent_converges_like_lbfgsb():
    optimize = pytest.importorskip("scipy.optimize")

    def shifted(x):
        return float(np.sum((x - 2.0) ** 2)), 2.0 * (x - 2.0)
    ours = numadam.minimize(shifted, [0.0], jac=True, bounds=[(None, 1.0)],
                            options=dict(lr=0.1, maxiter=20_000))
    theirs = optimize.minimize(shifted, [0.0], jac=True, bounds=[(None, 1.0)],
                               method="L-BFGS-B")
    assert (ours.status, ours.success) == (theirs.status, theirs.success) == (0, True)
    assert ours.nit < 20 and "projected gradient" in ours.message
    assert ours.x[0] == theirs.x[0] == 1.0


def test_bounded_quadratic_matches_lbfgsb():
    optimize = pytest.importorskip("scipy.optimize")
    target = np.array([2.0, -3.0, 0.25, 0.0, 5.0])
    scale = np.array([1.0, 2.0, 0.5, 3.0, 1.0])

    def fun(x):
        r = x - target
        return float(0.5 * np.sum(scale * r * r)), scale * r
    bounds = [(None, 1.0), (-1.0, 4.0), (0.0, 1.0), (-2.0, None), (5.0, 5.0)]
    ours = numadam.minimize(fun, np.zeros(5), jac=True, bounds=bounds,
                            options=dict(lr=0.05, maxiter=20_000))
    theirs = optimize.minimize(fun, np.zeros(5), jac=True, bounds=bounds, method="L-BFGS-B")
    assert ours.success and theirs.success
    np.testing.assert_allclose(ours.x, theirs.x, atol=1e-4)    # gtol 1e-5, curvature 0.5
    assert ours.x[0] == 1.0 and ours.x[1] == -1.0 and ours.x[4] == 5.0


def test_a_component_at_its_bound_with_the_minimum_inside_is_not_converged():
    res = numadam.minimize(lambda x: (float((x[0] - 0.5) ** 2), 2 * (x - 0.5)), [0.0],
                           jac=True, bounds=[(0.0, 1.0)], options=dict(lr=0.01, maxiter=5000))
    assert res.success and res.nit > 10
    assert abs(res.x[0] - 0.5) < 1e-5


def fortran_projgr(x, g, lower, upper):
    """L-BFGS-B's projgr, element by element."""
    pg = g.copy()
    for i, (xi, gi, lo, hi) in enumerate(zip(x, g, lower, upper)):
        if gi < 0:
            if hi < np.inf:
                pg[i] = max(xi - hi, gi)
        elif lo > -np.inf:
            pg[i] = min(xi - lo, gi)
    return pg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projected_gradient_is_lbfgsbs_projgr(dtype):
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        lower = np.where(rng.random(n) < 0.3, -np.inf, rng.uniform(-2, 0, n))
        upper = np.where(rng.random(n) < 0.3, np.inf, rng.uniform(0, 2, n))
        x = np.clip(rng.uniform(-3, 3, n), lower, upper)
        x[rng.random(n) < 0.3] = 0.0
        g = rng.standard_normal(n) * rng.choice([1e-8, 1.0, 1e3], n)
        x, g, lower, upper = (v.astype(dtype) for v in (x, g, lower, upper))
        pg = projected_gradient(x, g, (lower, upper))
        assert pg.dtype == dtype
        np.testing.assert_array_equal(pg, fortran_projgr(x, g, lower, upper))
        assert projected_gradient(x, g, None) is g


@pytest.mark.parametrize("maxiter,steps", [(100.1, 101), (2.5, 3), (3.0, 3), (0.5, 1),
                                           (np.float32(1.2), 2), (np.int64(4), 4), (0, 0)])
def test_a_non_integer_maxiter_runs_as_in_scipy(maxiter, steps):
    # scipy's L-BFGS-B, BFGS and CG stop once the count reaches maxiter:
    # options={"maxiter": 100.1} takes 101 iterations there too.
    res = numadam.minimize(rosenbrock, np.zeros(4), jac=True, options=dict(maxiter=maxiter))
    assert (res.nit, res.status) == (steps, 1)


def test_an_infinite_maxiter_runs_to_convergence():
    res = numadam.minimize(rosenbrock, np.zeros(2), jac=True,
                           options=dict(lr=0.02, maxiter=math.inf, gtol=1e-6))
    assert res.success and res.nit > 1000


@pytest.mark.parametrize("maxiter", [math.nan, -1, -0.5, True, "5", None])
def test_a_bad_maxiter_is_refused_before_fun_is_called(maxiter):
    def never(x):
        raise AssertionError("fun called")
    with pytest.raises(ValueError, match="maxiter must be a number >= 0"):
        numadam.minimize(never, np.zeros(2), jac=True, options=dict(maxiter=maxiter))


def test_the_callbacks_nfev_counts_the_evaluation_at_x0():
    seen = []

    def callback(intermediate_result):
        seen.append((intermediate_result.nit, intermediate_result.nfev))
    res = numadam.minimize(rosenbrock, np.zeros(3), jac=True, callback=callback,
                           options=dict(maxiter=5))
    assert seen == [(k, k + 1) for k in range(1, 6)]
    assert res.nfev == 6


def test_x0_is_clipped_into_the_bounds_before_the_first_evaluation():
    points = []

    def fun(x):
        points.append(x.copy())
        return rosenbrock(x)
    numadam.minimize(fun, np.array([5.0, -5.0, 0.5]), jac=True,
                     bounds=[(None, 1.0), (-1.0, 2.0), (0.0, 1.0)], options=dict(maxiter=3))
    np.testing.assert_array_equal(points[0], [1.0, -1.0, 0.5])


def test_a_bounds_object_with_ub_none_is_unbounded_above():
    class Box:
        lb, ub = 0.0, None
    res = numadam.minimize(lambda x: (float(np.sum((x - 3) ** 2)), 2 * (x - 3)), [-1.0, 1.0],
                           jac=True, bounds=Box(), options=dict(lr=0.1, maxiter=5000))
    assert res.success
    np.testing.assert_allclose(res.x, [3.0, 3.0], atol=1e-5)


def test_the_readme_signature_is_the_code_signature():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"## Fitting like scipy: `numadam.minimize`\s*```python\n(.*?)```",
                      text, re.S).group(1)
    call = block.split("=", 1)[1].strip()                  # numadam.minimize(...)
    documented = ast.parse("def " + call.split(".", 1)[1] + ": pass").body[0].args
    written = inspect.signature(numadam.minimize)
    names = [a.arg for a in documented.args + documented.kwonlyargs]
    assert names == list(written.parameters)
    defaults = documented.defaults + documented.kw_defaults
    positional = [None] * (len(documented.args) - len(documented.defaults))
    for name, node in zip(names, positional + defaults):
        expected = written.parameters[name].default
        if node is None:
            assert expected is inspect.Parameter.empty, name
        else:
            assert ast.literal_eval(node) == expected, name


@pytest.mark.parametrize("maxiter,total", [(2.5, 3), (math.inf, None), (10**400, 10**400)])
def test_the_progress_bar_counts_to_the_step_limit(monkeypatch, maxiter, total):
    bars = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            pass

        def close(self):
            pass
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    numadam.minimize(rosenbrock, np.zeros(2), jac=True,
                     options=dict(maxiter=maxiter, disp=True, gtol=1e-2, lr=0.05))
    assert bars[0].total == total


def test_float32_iterates_never_leave_the_box():
    """float32(0.1) is 0.10000000149: rounding a bound to nearest can put the
    clipped point outside the box ``fun`` was promised (a log barrier there
    would give NaN). Bounds round inwards."""
    seen = []

    def fun(x):
        seen.append(x.copy())
        return float(np.sum((x - 1) ** 2)), 2 * (x - 1)

    lower, upper = [-0.1, -0.3, 1e-40], [0.1, 0.7, 0.3]
    res = numadam.minimize(fun, np.array([0.05, 2.0, -1.0], np.float32), jac=True,
                           bounds=list(zip(lower, upper)), options=dict(lr=0.1, maxiter=30))
    assert res.x.dtype == np.float32
    for x in seen:
        assert np.all(x.astype(np.float64) <= upper) and np.all(x.astype(np.float64) >= lower), x
    assert res.x[0] == np.nextafter(np.float32(0.1), np.float32(0))
    with pytest.raises(ValueError, match="hold no float32 number"):
        numadam.minimize(fun, np.zeros(1, np.float32), jac=True, bounds=[(0.1, 0.1)])
    assert numadam.minimize(fun, np.zeros(1), jac=True, bounds=[(0.1, 0.1)]).x[0] == 0.1
