"""numadam.minimize: scipy's conventions, stopping rules, failures, bit parity."""

import sys
import types

import numpy as np
import pytest

import numadam
from internals import fit_support as _minimize_support
from helpers import assert_bits_equal

TARGET = np.array([1.0, -2.0, 0.5, 3.0])


def quadratic(x, target=TARGET):
    """0.5 * |x - target|^2 with curvatures 1..4, and its gradient."""
    scale = np.arange(1, x.size + 1, dtype=x.dtype).reshape(x.shape)
    r = x - target.astype(x.dtype).reshape(x.shape)
    return float(0.5 * np.sum(scale * r * r)), scale * r


def record_iterates():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
    return seen, callback


ADAM = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method,cls,options,fixed", [
    ("adam", "Adam", dict(ADAM, weight_decay=0.0), {}),
    ("adam", "Adam", dict(ADAM, weight_decay=0.1), {}),
    ("adamw", "AdamW", dict(ADAM, weight_decay=0.05), {}),
    ("amsgrad", "Adam", dict(ADAM, weight_decay=0.0), dict(amsgrad=True)),
    ("sgd", "SGD", dict(lr=0.03), {}),
    ("sgd", "SGD", dict(lr=0.02, momentum=0.8, dampening=0.1, weight_decay=0.01), {}),
    ("sgd", "SGD", dict(lr=0.02, momentum=0.7, nesterov=True), {}),
    ("adagrad", "Adagrad", dict(lr=0.3, lr_decay=0.01, weight_decay=0.02,
                                initial_accumulator_value=0.1, eps=1e-8), {}),
    ("rmsprop", "RMSprop", dict(lr=0.01, alpha=0.9), {}),
    ("rmsprop", "RMSprop", dict(lr=0.005, alpha=0.95, eps=1e-6, weight_decay=0.01,
                                momentum=0.5, centered=True), {}),
])
def test_iterates_are_bit_identical_to_the_class(dtype, method, cls, options, fixed):
    x0 = np.linspace(-1, 1, 4).astype(dtype)
    seen, callback = record_iterates()
    res = numadam.minimize(quadratic, x0, jac=True, method=method, callback=callback,
                           options=dict(options, maxiter=40, gtol=0.0))
    assert res.nit == 40 and len(seen) == 40 and res.status == 1

    x = x0.copy()
    opt = getattr(numadam, cls)([x], **options, **fixed)
    for k in range(40):
        opt.step([quadratic(x)[1]])
        assert_bits_equal(seen[k].x, x, f"iterate {k + 1}")
        assert seen[k].fun == quadratic(x)[0] and seen[k].nit == k + 1
    assert res.x.dtype == np.dtype(dtype)


def test_result_is_scipys_class_with_the_documented_fields():
    optimize = pytest.importorskip("scipy.optimize")
    res = numadam.minimize(quadratic, np.zeros(4), jac=True,
                           options=dict(lr=0.1, maxiter=3000))
    assert isinstance(res, optimize.OptimizeResult)
    assert res.success and res.status == 0 and "gtol" in res.message
    assert np.max(np.abs(res.jac)) <= 1e-5
    np.testing.assert_allclose(res.x, TARGET, atol=1e-5)
    assert res.fun == quadratic(res.x)[0]
    assert res.nfev == res.njev == res.nit + 1


def test_without_scipy_the_result_is_a_dict_with_attributes(monkeypatch):
    monkeypatch.setattr(_minimize_support, "_result_class", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)    # import fails
    res = numadam.minimize(quadratic, np.zeros(4), jac=True, options=dict(maxiter=2))
    assert type(res) is _minimize_support.OptimizeResult
    assert res.nit == 2 and res["nit"] == 2 and not res.success
    assert set(res) == {"x", "fun", "jac", "nit", "nfev", "njev", "status", "success",
                        "message"}
    assert "nit: 2" in repr(res)
    with pytest.raises(AttributeError):
        res.hess_inv
    monkeypatch.setattr(_minimize_support, "_result_class", None)


def test_callable_jac_and_args_give_the_same_run_as_jac_true():
    target = np.array([3.0, 1.0, -1.0, 0.0])
    a = numadam.minimize(lambda x, t: quadratic(x, t)[0], np.zeros(4), args=(target,),
                         jac=lambda x, t: quadratic(x, t)[1], options=dict(maxiter=50))
    b = numadam.minimize(quadratic, np.zeros(4), args=(target,), jac=True,
                         options=dict(maxiter=50))
    assert_bits_equal(a.x, b.x, "x")
    assert a.fun == b.fun and a.nfev == b.nfev == 51


@pytest.mark.parametrize("x0", [np.zeros(4, np.float32), np.zeros((2, 2)), [0, 0, 0, 0]])
def test_x0_is_never_modified_and_its_shape_and_float32_are_kept(x0):
    before = np.array(x0, copy=True)
    seen = []

    def fun(x):
        seen.append(x)
        return quadratic(x.reshape(-1))[0], quadratic(x.reshape(-1))[1].reshape(x.shape)
    res = numadam.minimize(fun, x0, jac=True, options=dict(lr=0.1, maxiter=20))
    assert_bits_equal(np.asarray(x0), before, "x0")
    assert res.x.shape == np.shape(x0)
    assert res.x.dtype == (np.float32 if before.dtype == np.float32 else np.float64)
    assert len({id(x) for x in seen}) == len(seen)       # fun gets fresh copies
    assert not np.array_equal(seen[0], seen[-1])


def test_tol_sets_gtol_and_ftol_unless_options_do():
    slow = dict(lr=1e-3, maxiter=10_000)
    loose = numadam.minimize(quadratic, np.zeros(4), jac=True, tol=1e-2, options=slow)
    tight = numadam.minimize(quadratic, np.zeros(4), jac=True, tol=1e-2,
                             options=dict(slow, gtol=1e-8, ftol=1e-12, patience=50))
    assert loose.success and tight.success
    assert loose.nit < tight.nit
    assert tight.fun < loose.fun


def test_bounds_project_every_iterate_including_x0():
    seen, callback = record_iterates()
    bounds = [(None, 0.5), (-1.0, None), (None, None), (0.0, 2.0)]
    res = numadam.minimize(quadratic, np.array([1.0, -5.0, 0.0, 9.0]), jac=True,
                           bounds=bounds, callback=callback,
                           options=dict(lr=0.1, maxiter=2000))
    assert res.success
    np.testing.assert_allclose(res.x, [0.5, -1.0, 0.5, 2.0], atol=1e-5)    # gtol / curvature
    for r in seen:
        assert r.x[0] <= 0.5 and r.x[1] >= -1.0 and 0.0 <= r.x[3] <= 2.0


def test_bounds_object_with_lb_and_ub_broadcasts():
    box = types.SimpleNamespace(lb=0.0, ub=np.array([2.0, 2.0, 2.0, 2.0]))
    res = numadam.minimize(quadratic, np.ones(4), jac=True, bounds=box,
                           options=dict(lr=0.1, maxiter=2000))
    assert res.success
    np.testing.assert_allclose(res.x, [1.0, 0.0, 0.5, 2.0], atol=1e-5)    # gtol / curvature


def test_fun_raising_ends_the_run_with_the_best_x_so_far():
    seen, callback = record_iterates()

    def fragile(x):
        if len(seen) == 6:
            raise ZeroDivisionError("model blew up")
        return quadratic(x)
    res = numadam.minimize(fragile, np.zeros(4), jac=True, callback=callback,
                           options=dict(lr=0.1))
    assert not res.success and res.status == 2
    assert "ZeroDivisionError: model blew up" in res.message and "iteration 7" in res.message
    best = min(seen, key=lambda r: r.fun)
    assert_bits_equal(res.x, best.x, "best x")
    assert res.fun == best.fun and res.nit == 7     # the 7th step's point failed


@pytest.mark.parametrize("bad,status,words", [
    (lambda x: (np.nan, x), 3, "NaN"),
    (lambda x: (np.inf, x), 3, "inf"),
    (lambda x: (1.0, np.full_like(x, np.nan)), 3, "gradient holds NaN"),
    (lambda x: (1.0, x[:2]), 2, "shape (2,)"),
    (lambda x: (np.ones(2), x), 2, "real scalar"),
    (lambda x: 1.0, 2, "(value, gradient)"),
])
def test_bad_values_end_the_run_without_stepping_on_them(bad, status, words):
    calls = []

    def fun(x):
        calls.append(1)
        return quadratic(x) if len(calls) <= 3 else bad(x)
    res = numadam.minimize(fun, np.zeros(4), jac=True, options=dict(lr=0.1))
    assert (res.success, res.status, res.nit) == (False, status, 3)
    assert words in res.message
    assert np.isfinite(res.x).all() and res.fun == min(quadratic(res.x)[0], res.fun)


def test_failure_at_x0_returns_x0():
    res = numadam.minimize(lambda x: (np.nan, x), np.array([1.0, 2.0]), jac=True)
    assert res.status == 3 and np.isnan(res.fun) and res.jac is None
    assert_bits_equal(res.x, np.array([1.0, 2.0]), "x0")


def test_callback_stop_iteration_and_the_plain_x_signature():
    got = []

    def callback(xk):
        got.append(xk.copy())
        xk[:] = 99.0                     # a copy: cannot derail the run
        if len(got) == 5:
            raise StopIteration
    res = numadam.minimize(quadratic, np.zeros(4), jac=True, callback=callback)
    assert (res.success, res.status, res.nit) == (False, 99, 5)
    assert res.message == "`callback` raised `StopIteration`."
    assert np.all(np.abs(got[-1]) < 1) and np.all(np.abs(res.x) < 1)


def test_disp_without_tqdm_prints_a_summary(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    numadam.minimize(quadratic, np.zeros(4), jac=True, options=dict(maxiter=3, disp=True))
    out = capsys.readouterr().out
    assert "Maximum number of iterations" in out and "Iterations: 3" in out


def test_disp_uses_tqdm_when_installed(monkeypatch, capsys):
    bars = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed, self.postfix = total, 0, False, None
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def close(self):
            self.closed = True
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    monkeypatch.setattr(_minimize_support.time, "monotonic", iter(range(0, 10**6, 10)).__next__)
    numadam.minimize(quadratic, np.zeros(4), jac=True, options=dict(maxiter=7, disp=True))
    (bar,) = bars
    assert (bar.total, bar.n, bar.closed) == (7, 7, True)
    assert bar.postfix.startswith("f=") and "best=" in bar.postfix


def test_no_display_without_disp(capsys):
    numadam.minimize(quadratic, np.zeros(4), jac=True, options=dict(maxiter=3))
    assert capsys.readouterr() == ("", "")


def never_called(x):
    raise AssertionError("fun was called before the input was validated")


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(method="lbfgs"), ValueError, "method must be one of"),
    (dict(options=dict(learning_rate=0.1)), ValueError, "unknown option(s) ['learning_rate']"),
    (dict(options=dict(maxiter=-1)), ValueError, "maxiter must be a number >= 0"),
    (dict(options=dict(patience=0)), ValueError, "patience must be >= 1"),
    (dict(options=dict(gtol=-1)), ValueError, "gtol must be a number >= 0"),
    (dict(options=dict(lr=-0.1)), ValueError, "lr"),
    (dict(options=dict(betas=(0.9, 1.0))), ValueError, "betas[1]"),
    (dict(method="sgd", options=dict(betas=(0.9, 0.99))), ValueError,
     "unknown option(s) ['betas'] for method 'sgd'"),
    (dict(method="adam", options=dict(momentum=0.9)), ValueError,
     "unknown option(s) ['momentum'] for method 'adam'"),
    (dict(method="amsgrad", options=dict(amsgrad=False)), ValueError,
     "unknown option(s) ['amsgrad']"),
    (dict(method="adamw", options=dict(decoupled_weight_decay=False)), ValueError,
     "unknown option(s) ['decoupled_weight_decay']"),
    (dict(method="rmsprop", options=dict(maximize=True)), ValueError,
     "unknown option(s) ['maximize']"),
    (dict(method="adagrad", options=dict(momentum=0.5)), ValueError,
     "its options are ['eps', 'initial_accumulator_value', 'lr', 'lr_decay', 'weight_decay']"),
    (dict(method="sgd", options=dict(momentum=-0.5)), ValueError, "momentum"),
    (dict(method="sgd", options=dict(momentum=0.5, dampening=0.1, nesterov=True)), ValueError,
     "nesterov=True requires a momentum > 0 and zero dampening"),
    (dict(method="sgd", options=dict(nesterov=1)), ValueError,
     "nesterov must be True or False"),
    (dict(method="adagrad", options=dict(lr_decay=np.inf)), ValueError, "lr_decay"),
    (dict(method="adagrad", options=dict(initial_accumulator_value=-1.0)), ValueError,
     "initial_accumulator_value"),
    (dict(method="rmsprop", options=dict(alpha="0.9")), ValueError,
     "alpha must be a real number"),
    (dict(method="rmsprop", options=dict(centered=None)), ValueError,
     "centered must be True or False"),
    (dict(method="sgd", options=dict(momentum=1.0, ftol=1e-6)), ValueError,
     "give options['patience']"),
    (dict(tol="small"), ValueError, "tol must be"),
    (dict(jac=None), ValueError, "needs the gradient"),
    (dict(jac="2-point"), ValueError, "jac must be True or a callable"),
    (dict(bounds=[(0, 1)]), ValueError, "1 pairs for 2 variables"),
    (dict(bounds=[(0, 1), (2, 1)]), ValueError, "element 1 are crossed"),
    (dict(bounds=[(0, 1), (0, "a")]), ValueError, "bounds[1][1]"),
    (dict(bounds=types.SimpleNamespace(lb=[0, 0, 0], ub=1)), ValueError, "bounds.lb"),
    (dict(callback=42), TypeError, "callback must be callable"),
    (dict(x0=np.array([1j, 2])), TypeError, "real numbers"),
    (dict(x0=[]), ValueError, "empty"),
    (dict(x0=[np.nan, 0.0]), ValueError, "NaN"),
])
def test_bad_input_is_rejected_before_fun_is_called(kwargs, error, words):
    kwargs = {"jac": True, "x0": np.zeros(2), **kwargs}
    with pytest.raises(error) as info:
        numadam.minimize(never_called, **kwargs)
    assert words in str(info.value)


def test_method_names_are_case_insensitive_and_adamw_defaults_to_its_decay():
    a = numadam.minimize(quadratic, np.ones(4), jac=True, method="AdamW",
                         options=dict(maxiter=5))
    b = numadam.minimize(quadratic, np.ones(4), jac=True, method="adamw",
                         options=dict(maxiter=5, weight_decay=1e-2))
    c = numadam.minimize(quadratic, np.ones(4), jac=True, method="adamw",
                         options=dict(maxiter=5, weight_decay=0.0))
    assert_bits_equal(a.x, b.x, "x")
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method,options", [
    ("adam", dict(lr=0.1)),
    ("adamw", dict(lr=0.1, weight_decay=0.0)),
    ("amsgrad", dict(lr=0.1)),
    ("sgd", dict(lr=0.2)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adagrad", dict(lr=1.0)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
])
def test_every_method_converges_on_a_small_problem(method, options, dtype):
    res = numadam.minimize(quadratic, np.zeros(4, dtype), jac=True, method=method,
                           options=dict(options, maxiter=5000, gtol=1e-3))
    assert res.success and "gtol" in res.message, res.message
    np.testing.assert_allclose(res.x, TARGET, atol=1e-3)
    assert res.x.dtype == np.dtype(dtype)


@pytest.mark.parametrize("method,options,window", [
    ("sgd", dict(momentum=0.95), 40),
    ("rmsprop", dict(momentum=0.0), 10),
    ("adagrad", {}, 10),
    ("adam", dict(betas=(0.975, 0.999)), 80),
])
def test_the_default_patience_follows_the_methods_momentum(method, options, window,
                                                          monkeypatch):
    seen = []
    original = _minimize_support.ValueTrend.__init__

    def spy(self, ftol, patience):
        seen.append(patience)
        original(self, ftol, patience)
    monkeypatch.setattr(_minimize_support.ValueTrend, "__init__", spy)
    numadam.minimize(quadratic, np.zeros(4), jac=True, method=method,
                     options=dict(options, ftol=1e-9, maxiter=1))
    assert seen == [window]


def test_rosenbrock():
    def rosen(x):
        value = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        return value, np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2),
                                200 * (x[1] - x[0] ** 2)])
    res = numadam.minimize(rosen, [-1.2, 1.0], jac=True, options=dict(lr=0.02, maxiter=20000))
    assert res.success
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-3)
