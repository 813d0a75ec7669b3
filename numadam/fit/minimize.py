"""``numadam.minimize``: numadam's update rules in the shape of ``scipy.optimize.minimize``."""

import inspect
import math
import numbers
import operator

import numpy as np

from numadam.fit.support import (AGREEMENT, Progress, ValueTrend, make_box, make_result,
                                projected_gradient)
from numadam import rules as _rules

__all__ = ["minimize"]

# method -> (rule, the hyperparameters the method fixes, its own defaults).
# Every other hyperparameter of the rule is an option, with the class's default.
METHODS = {
    "adam": ("adam", dict(amsgrad=False, decoupled_weight_decay=False), {}),
    "adamw": ("adam", dict(amsgrad=False, decoupled_weight_decay=True),
              dict(weight_decay=1e-2)),
    "amsgrad": ("adam", dict(amsgrad=True, decoupled_weight_decay=False), {}),
    "sgd": ("sgd", {}, {}),
    "adagrad": ("adagrad", {}, {}),
    "rmsprop": ("rmsprop", {}, {}),
}
# minimize minimises: no method takes ``maximize``.
FIXED = dict(maximize=False)
# The options of the loop, whatever the method.
LOOP_OPTIONS = dict(maxiter=1000, disp=False, gtol=1e-5, ftol=None, patience=None,
                    schedule=None)

# status codes of the result
CONVERGED, MAXITER, BAD_FUN, NONFINITE, CALLBACK_STOP = 0, 1, 2, 3, 99


class _Failure(Exception):
    """An evaluation of ``fun`` / ``jac`` that ends the run: ``(status, message)``."""


def minimize(fun, x0, args=(), *, jac=None, method="adam", bounds=None, tol=None,
             callback=None, options=None):
    r"""Minimise a differentiable function with one of numadam's update rules.

    A drop-in for ``scipy.optimize.minimize`` where the method is Adam (or
    SGD, Adagrad, RMSprop): for noisy objectives (minibatches, Monte Carlo
    estimates) and for problems too large or too rough for quasi-Newton
    methods.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args) -> float``, or ``-> (float, gradient)`` with
        ``jac=True``. ``x`` is a fresh copy shaped like ``x0``, so ``fun``
        may keep it.
    x0 : array_like
        Starting point, any shape (scalars become shape ``(1,)``). float32
        stays float32; every other real dtype becomes float64. Never modified.
    args : tuple, optional
        Extra arguments passed to ``fun`` and ``jac``.
    jac : True or callable
        Required (the default ``None`` raises ``ValueError`` before ``fun``
        is called, as scipy's Newton-CG does): the methods need gradients, so there
        is no finite-difference default. ``True``: ``fun`` returns
        ``(value, gradient)``. A callable: ``jac(x, *args)`` returns the
        gradient. The gradient must have the shape of ``x0`` (its dtype is
        converted).
    method : {"adam", "adamw", "amsgrad", "sgd", "adagrad", "rmsprop"}, default "adam"
        ``numadam.Adam``, ``numadam.AdamW``, ``Adam(amsgrad=True)``,
        ``numadam.SGD``, ``numadam.Adagrad`` or ``numadam.RMSprop``
        (case-insensitive); the iterates are bit-identical to that class's
        ``step()`` with the hyperparameters of ``options``.
    bounds : sequence of (min, max) pairs, or scipy.optimize.Bounds, optional
        One pair per element of ``x0`` (in C order; ``None`` for no bound),
        or an object with ``lb`` and ``ub`` that broadcast to ``x0``. ``x0``
        is clipped into the box before ``fun`` first sees it, and so is every
        iterate; ``gtol`` applies to the projected gradient (see Notes). For
        float32 ``x0`` each bound is rounded to float32 inwards, so that no
        iterate leaves the box as given (``ValueError`` if a pair holds no
        float32 number).
    tol : float, optional
        Sets both ``gtol`` and ``ftol`` (each only where ``options`` does not
        give it), as ``tol`` does for scipy's L-BFGS-B.
    callback : callable, optional
        Called after each iteration. ``callback(intermediate_result)`` (the
        parameter must have that name) receives an ``OptimizeResult`` with
        ``x``, ``fun``, ``jac``, ``nit`` and ``nfev`` of the new point; any
        other signature is called as ``callback(x)``. Raising
        ``StopIteration`` ends the run (``status`` 99, ``success`` False).
    options : dict, optional
        The method's hyperparameters, named and defaulted as in its class
        (all but ``maximize``, and for the Adam methods ``amsgrad`` and
        ``decoupled_weight_decay``, which the method fixes): ``lr`` (1e-3),
        ``betas`` ((0.9, 0.999)), ``eps`` (1e-8), ``weight_decay`` (0; 1e-2
        for ``"adamw"``) for the Adam methods; ``lr`` (1e-3), ``momentum``,
        ``dampening``, ``weight_decay`` (0) and ``nesterov`` (False) for
        ``"sgd"``; ``lr`` (1e-2), ``lr_decay``, ``weight_decay``,
        ``initial_accumulator_value`` (0) and ``eps`` (1e-10) for
        ``"adagrad"``; ``lr`` (1e-2), ``alpha`` (0.99), ``eps`` (1e-8),
        ``weight_decay``, ``momentum`` (0) and ``centered`` (False) for
        ``"rmsprop"``. Then the loop's: ``maxiter`` (1000 steps;
        any real number >= 0, as in scipy: the run stops once
        ``nit >= maxiter``, so 100.1 allows 101 steps and ``inf`` no limit),
        ``disp`` (False: a progress bar with the current and best values,
        through tqdm when it is installed, else a line a second, then a
        summary), ``gtol`` (1e-5), ``ftol`` (None: off) and ``patience``
        (the smallest window of the ``ftol`` test; default ``2 / (1 - mu)``
        rounded, at least 10, with ``mu`` the momentum: ``beta1``, SGD's or
        RMSprop's ``momentum``, 0 for Adagrad; 20 for Adam's default betas)
        and ``schedule`` (None: a learning-rate schedule factory,
        ``schedule(optimizer)`` returning a :mod:`numadam.schedules` schedule
        of that optimizer, such as
        ``lambda opt: numadam.schedules.CosineAnnealingLR(opt, T_max=500)``;
        it is stepped after each step of the method, as in a torch training
        loop: ``ReduceLROnPlateau`` with the value of ``fun`` whose gradient
        that step used).
        Keys the method does not take raise ``ValueError``.

    Returns
    -------
    OptimizeResult
        ``scipy.optimize.OptimizeResult`` when scipy is importable, otherwise
        a dict with the same attribute access: ``x`` (the evaluated point
        with the lowest value, see Notes), ``fun`` and ``jac`` there, ``nit``
        (steps taken), ``nfev``, ``njev``, ``success``, ``status`` and
        ``message``.

    Raises
    ------
    TypeError, ValueError
        Before ``fun`` is ever called: a bad method, option, bound, ``x0`` or
        hyperparameter.

    Notes
    -----
    Each iteration evaluates ``fun`` (and the gradient) at the current point,
    then takes one step of the method and projects onto ``bounds``. After each
    evaluation the run stops with

    * ``status 0`` (success) when the projected gradient's max-norm
      ``max|pg_i|`` is at most ``gtol``. ``pg`` is L-BFGS-B's: without bounds
      it is the gradient; a component whose descent direction leads out of
      the box counts only up to its distance to the bound
      (``pg_i = max(x_i - upper_i, g_i)`` where ``g_i < 0``, else
      ``min(x_i - lower_i, g_i)``), so one at its bound with the gradient
      pointing outwards counts as zero;
    * ``status 0`` (success) when ``ftol`` is set and the value has stopped
      changing, beyond its noise, while the gradient no longer points one
      way. With ``f_0, ..., f_{n-1}`` the ``n`` values so far (``f_0`` at
      ``x0``), the window ``W = max(patience, n // 4)`` and ``c_k`` the
      cosine between the projected gradients of evaluations ``k`` and
      ``k - 1``: once ``n >= 3 W``, the means ``C, A, B`` of ``f`` over the
      three consecutive windows of ``W`` values ending with the latest (``B``
      the last) satisfy ``|C - A| + E <= ftol * max(|C|, |A|)`` and
      ``|A - B| + E <= ftol * max(|A|, |B|)``, and the mean of ``c_k`` over
      the last window is at most 0.5. ``E = 2 sigma sqrt(2 / W)`` is two
      standard errors of the difference of two window means, ``sigma^2`` half
      the mean squared difference of successive values over the three
      windows. The window grows with the run, so noise in ``f``
      (minibatches) averages out, and ``E`` keeps a descent hidden in noise
      from passing for a stall: under noise of relative size ``s`` per
      evaluation, ``ftol`` can pass once ``W`` is about ``8 (s / ftol)**2``.
      Two stalled pairs in a row, over windows of at least twice the
      momentum's time constant, keep Adam's overshoots (the value rising for
      tens of steps, then falling further) from passing for a stall; and the
      cosine keeps a consistent descent, however slow (a plateau near a
      saddle, a smooth approach, where successive gradients agree), from
      passing for convergence: that is for ``gtol`` to judge. Under noise,
      or oscillating about a minimum, successive gradients disagree (mean
      cosines of about 0 and -0.9 were measured). A value that keeps
      bouncing (a step size too large to settle) passes only once its
      fluctuation is within ``ftol``;
    * ``status 1`` when ``nit >= maxiter`` (scipy's "Maximum number of
      iterations has been exceeded."; ``success`` is False, as in scipy);
    * ``status 2`` when ``fun`` or ``jac`` raises an exception or returns
      something unusable (not a real scalar, a gradient of the wrong shape);
    * ``status 3`` when the value or the gradient is NaN or infinite;
    * ``status 99`` when ``callback`` raises ``StopIteration``.

    The result always holds the best point evaluated (lowest ``fun``), with
    its value and gradient, so a run that fails still returns the best ``x``
    seen so far. For a noisy objective that is the best noisy evaluation.

    Examples
    --------
    >>> import numpy as np, numadam
    >>> def rosen(x):
    ...     value = (1 - x[0])**2 + 100 * (x[1] - x[0]**2)**2
    ...     grad = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0]**2),
    ...                      200 * (x[1] - x[0]**2)])
    ...     return value, grad
    >>> res = numadam.minimize(rosen, [-1.0, 1.0], jac=True,
    ...                        options=dict(lr=0.02, maxiter=5000))
    >>> bool(np.allclose(res.x, [1, 1], atol=1e-2))
    True
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {fun!r}")
    if not isinstance(args, tuple):
        args = (args,)
    evaluate = _evaluator(fun, jac, args)
    x = _initial_point(x0)
    cls, hyper, opts = _settings(method, tol, options)
    box = make_box(bounds, x)
    if box is not None:
        np.clip(x, *box, out=x)
    optimizer = cls([x], **hyper)
    schedule = _schedule(opts["schedule"], optimizer, opts["maxiter"])
    if opts["patience"] is None:
        # The momentum averages gradients over about 1 / (1 - mu) steps and
        # its overshoots last a few of those: shorter windows judge the swing,
        # not the trend (by the value alone, windows of 10 took a 25-step climb
        # on 50-D Rosenbrock at Adam's lr 0.1 for a stall; twice the time
        # constant did not, for beta1 = 0.5, 0.9 and 0.99).
        group = optimizer.param_groups[0]
        mu = float(group["betas"][0] if "betas" in group else group.get("momentum", 0.0))
        if mu < 1.0:
            opts["patience"] = max(10, round(2.0 / (1.0 - mu)))
        elif opts["ftol"] is not None:
            raise ValueError(f"with momentum {mu} >= 1 the momentum never forgets, so the "
                             "ftol test has no natural window: give options['patience']")
    notify = _wrap_callback(callback)
    progress = Progress(opts["maxiter"], opts["disp"])
    try:
        fields = _iterate(evaluate, x, optimizer, schedule, box, notify, progress, opts)
    finally:
        progress.close()
    result = make_result(**fields)
    progress.summary(result)
    return result


def _schedule(factory, optimizer, maxiter):
    """The schedule ``factory`` builds for ``optimizer``, checked; or None.

    A OneCycleLR that would run out of steps before ``maxiter`` is refused
    here: stepping it past ``total_steps`` raises, which mid-run would lose
    the best point found so far.
    """
    if factory is None:
        return None
    if not callable(factory):
        raise TypeError("options['schedule'] must be a callable that takes the optimizer "
                        f"and returns a schedule, got {factory!r}")
    from numadam.schedules import LRScheduler
    schedule = factory(optimizer)
    if not isinstance(schedule, LRScheduler) or schedule.optimizer is not optimizer:
        raise TypeError("options['schedule'](optimizer) must return a numadam.schedules "
                        f"schedule of that optimizer, got {schedule!r}")
    from numadam.schedules import OneCycleLR
    if isinstance(schedule, OneCycleLR):
        left = schedule.total_steps - schedule.last_epoch
        if maxiter > left:
            raise ValueError(
                f"options['schedule'] is a OneCycleLR with {left} steps left "
                f"(total_steps={schedule.total_steps}) but maxiter is {maxiter}; the "
                "schedule would end before the run: give maxiter <= total_steps or a "
                "longer schedule")
    return schedule


def _iterate(evaluate, x, optimizer, schedule, box, notify, progress, opts):
    """Run the loop; return the fields of the result."""
    maxiter, gtol, ftol = opts["maxiter"], opts["gtol"], opts["ftol"]
    plateau = False
    if schedule is not None:
        from numadam.schedules import ReduceLROnPlateau
        plateau = isinstance(schedule, ReduceLROnPlateau)
    trend = None if ftol is None else ValueTrend(ftol, opts["patience"])
    best_x = x.copy()
    best_g = None
    best_f = math.inf
    nit = 0
    counts = [0, 0]                      # nfev, njev
    while True:
        try:
            f, g, gmax = evaluate(x, counts)
        except _Failure as failure:
            status, message = failure.args
            message += f" at iteration {nit}" + ("; x is the best point before it"
                                                 if best_g is not None else "")
            break
        if f < best_f:
            best_f = f
            np.copyto(best_x, x)
            if best_g is None:
                best_g = g.copy()
            else:
                np.copyto(best_g, g)
        pg = projected_gradient(x, g, box)
        gnorm = gmax if box is None else float(np.max(np.abs(pg)))
        stalled = False
        if trend is not None and gnorm > gtol:
            stalled, window, decrease, agreement = trend.add(f, pg, gnorm)
        if nit > 0 and notify is not None:
            try:
                notify(x, f, g, nit, counts[0])
            except StopIteration:
                status, message = CALLBACK_STOP, "`callback` raised `StopIteration`."
                break
        progress.update(nit, f, best_f, gnorm)
        if gnorm <= gtol:
            status, message = CONVERGED, (
                "Optimization terminated successfully: max|"
                + ("projected gradient" if box is not None else "gradient")
                + f"| = {gnorm:.3g} <= gtol = {gtol:g}.")
            break
        if stalled:
            status, message = CONVERGED, (
                f"Optimization terminated successfully: the mean value over three "
                f"consecutive windows of {window} iterations changed by at most "
                f"{decrease:.3g} (relative, with two standard errors of its noise) from "
                f"one window to the next, <= ftol = {ftol:g}, and successive gradients "
                f"agreed by a mean cosine of "
                f"{agreement:.2f} <= {AGREEMENT:g} over the last window.")
            break
        if nit >= maxiter:
            status, message = MAXITER, "Maximum number of iterations has been exceeded."
            break
        optimizer.step([g])
        if schedule is not None:
            if plateau:
                schedule.step(f)
            else:
                schedule.step()
        if box is not None:
            np.clip(x, *box, out=x)
        nit += 1
    found = best_g is not None
    return dict(x=best_x, fun=best_f if found else math.nan, jac=best_g, nit=nit,
                nfev=counts[0], njev=counts[1], status=status, success=status == CONVERGED,
                message=message)


def _evaluator(fun, jac, args):
    """``evaluate(x, counts) -> (value, gradient, max|gradient|)``, all finite,
    or ``_Failure``."""
    if jac is True:
        def both(x):
            out = fun(x.copy(), *args)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise _Failure(BAD_FUN, "with jac=True, fun must return (value, gradient); "
                                        f"it returned {_short(out)}")
            return out
    elif callable(jac):
        def both(x):
            return fun(x.copy(), *args), jac(x.copy(), *args)
    elif jac is None or jac is False:
        raise ValueError(
            "numadam.minimize needs the gradient: pass jac=True when fun returns "
            "(value, gradient), or a callable jac(x, *args); for a quick try, "
            "scipy.optimize.approx_fprime gives a finite-difference gradient")
    else:
        raise ValueError(f"jac must be True or a callable, got {jac!r}")

    def evaluate(x, counts):
        counts[0] += 1
        counts[1] += 1
        try:
            value, grad = both(x)
        except _Failure:
            raise
        except Exception as error:
            raise _Failure(BAD_FUN, f"fun raised {type(error).__name__}: {error}") from None
        value = np.asarray(value)
        if value.size != 1 or value.dtype.kind not in "fiub":
            raise _Failure(BAD_FUN, f"fun must return a real scalar, got {_short(value)}")
        f = float(value.reshape(()))
        grad = np.asarray(grad)
        if grad.shape != x.shape or grad.dtype.kind not in "fiub":
            raise _Failure(BAD_FUN, f"the gradient has shape {grad.shape} and dtype "
                                    f"{grad.dtype}; x has shape {x.shape} ({x.dtype})")
        if grad.dtype != x.dtype or not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad, dtype=x.dtype)
        gmax = float(max(grad.max(), -grad.min()))
        if not math.isfinite(f):
            raise _Failure(NONFINITE, f"NaN result encountered: fun returned {f}")
        if not math.isfinite(gmax):
            raise _Failure(NONFINITE, "NaN result encountered: the gradient holds NaN or Inf")
        return f, grad, gmax

    return evaluate


def _short(obj):
    text = repr(obj)
    return text if len(text) < 80 else text[:76] + "..."


def _initial_point(x0):
    x = np.asarray(x0)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"x0 must hold real numbers, got dtype {x.dtype}")
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    x = np.array(np.atleast_1d(x), dtype=dtype, order="C", copy=True)
    if x.size == 0:
        raise ValueError("x0 is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 holds NaN or Inf")
    return x


def _settings(method, tol, options):
    """``(class, hyperparameters, loop options)`` of the run, the defaults
    filled in; the hyperparameters are validated by the class."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    method = method.lower()
    name, fixed, defaults = METHODS[method]
    fixed = {**FIXED, **fixed}
    module = _rules.module(name)
    cls = getattr(module, _rules.REGISTRY[name].classes[0])
    hyper = {key: value for key, value in module.RULE.defaults(**defaults).items()
             if key not in fixed}
    options = {} if options is None else dict(options)
    unknown = sorted(set(options) - set(hyper) - set(LOOP_OPTIONS), key=str)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; its options "
                         f"are {sorted(hyper)} and {sorted(LOOP_OPTIONS)}")
    if tol is not None:
        tol = _nonnegative("tol", tol)
        options.setdefault("gtol", tol)
        options.setdefault("ftol", tol)
    for key in hyper:
        if key in options:
            hyper[key] = options.pop(key)
    opts = {**LOOP_OPTIONS, **options}
    opts["maxiter"] = _limit(opts["maxiter"])
    if opts["patience"] is not None:
        opts["patience"] = _count("patience", opts["patience"], 1)
    opts["gtol"] = _nonnegative("gtol", opts["gtol"])
    if opts["ftol"] is not None:
        opts["ftol"] = _nonnegative("ftol", opts["ftol"])
    if not isinstance(opts["disp"], (bool, np.bool_, int)):
        raise ValueError(f"disp must be True or False, got {opts['disp']!r}")
    opts["disp"] = bool(opts["disp"])
    return cls, {**hyper, **fixed}, opts


def _nonnegative(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _limit(maxiter):
    """``maxiter`` as scipy's gradient methods take it: any real number >= 0,
    compared with the step count (``nit >= maxiter`` stops), so 100.1 allows
    101 steps and ``inf`` no limit."""
    if isinstance(maxiter, (bool, np.bool_)) or not isinstance(maxiter, numbers.Real) \
            or not maxiter >= 0:
        raise ValueError(f"maxiter must be a number >= 0, got {maxiter!r}")
    return int(maxiter) if isinstance(maxiter, numbers.Integral) else float(maxiter)


def _count(name, value, low):
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _wrap_callback(callback):
    """``notify(x, f, g, nit, nfev)`` calling ``callback`` in scipy's convention."""
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    try:
        parameters = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):
        parameters = None
    if parameters == {"intermediate_result"}:
        def notify(x, f, g, nit, nfev):
            callback(intermediate_result=make_result(
                x=x.copy(), fun=f, jac=g.copy(), nit=nit, nfev=nfev))
    else:
        def notify(x, f, g, nit, nfev):
            callback(x.copy())
    return notify
