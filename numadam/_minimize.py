"""``numadam.minimize``: Adam in the shape of ``scipy.optimize.minimize``."""

import inspect
import math
import numbers
import operator

import numpy as np

from ._minimize_support import Progress, make_result
from .optimizer import Adam, AdamW

__all__ = ["minimize"]

METHODS = ("adam", "adamw", "amsgrad")
DEFAULT_OPTIONS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=None,
                       maxiter=1000, disp=False, gtol=1e-5, ftol=None, patience=10)

# status codes of the result
CONVERGED, MAXITER, BAD_FUN, NONFINITE, CALLBACK_STOP = 0, 1, 2, 3, 99


class _Failure(Exception):
    """An evaluation of ``fun`` / ``jac`` that ends the run: ``(status, message)``."""


def minimize(fun, x0, args=(), *, jac=None, method="adam", bounds=None, tol=None,
             callback=None, options=None):
    r"""Minimise a differentiable function with Adam, AdamW or AMSGrad.

    A drop-in for ``scipy.optimize.minimize`` where the method is Adam: for
    noisy objectives (minibatches, Monte Carlo estimates) and for problems
    too large or too rough for quasi-Newton methods.

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
        ``True``: ``fun`` returns ``(value, gradient)``. A callable:
        ``jac(x, *args)`` returns the gradient. The gradient must have the
        shape of ``x0`` (its dtype is converted). Adam needs gradients, so
        there is no finite-difference default.
    method : {"adam", "adamw", "amsgrad"}, default "adam"
        ``numadam.Adam``, ``numadam.AdamW`` or ``Adam(amsgrad=True)``; the
        iterates are bit-identical to those classes' ``step()``.
    bounds : sequence of (min, max) pairs, or scipy.optimize.Bounds, optional
        One pair per element of ``x0`` (in C order; ``None`` for no bound),
        or an object with ``lb`` and ``ub`` that broadcast to ``x0``. ``x0``
        and every iterate are projected (clipped) into the box.
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
        ``lr`` (1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
        ``weight_decay`` (0; 1e-2 for ``"adamw"``), ``maxiter`` (1000 steps),
        ``disp`` (False: a progress bar with the current and best values,
        through tqdm when it is installed, else a line a second, then a
        summary), ``gtol`` (1e-5), ``ftol`` (None: off) and ``patience`` (10).
        Unknown keys raise ``ValueError``.

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
    then takes one Adam step and projects onto ``bounds``. The run stops

    * ``status 0`` (success) when the gradient's max-norm ``max|g_i|`` is at
      most ``gtol``, or when, with ``ftol`` set, the best value has not
      improved on the value at its last improvement ``f_ref`` by more than
      ``ftol * |f_ref|`` for ``patience`` consecutive iterations;
    * ``status 1`` after ``maxiter`` steps (scipy's "Maximum number of
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
    method, opts = _settings(method, tol, options)
    box = _box(bounds, x)
    if box is not None:
        np.clip(x, *box, out=x)
    cls = AdamW if method == "adamw" else Adam
    weight_decay = opts["weight_decay"]
    if weight_decay is None:
        weight_decay = 1e-2 if method == "adamw" else 0.0
    optimizer = cls([x], lr=opts["lr"], betas=opts["betas"], eps=opts["eps"],
                    weight_decay=weight_decay, amsgrad=method == "amsgrad")
    notify = _wrap_callback(callback)
    progress = Progress(opts["maxiter"], opts["disp"])
    try:
        fields = _iterate(evaluate, x, optimizer, box, notify, progress, opts)
    finally:
        progress.close()
    result = make_result(**fields)
    progress.summary(result)
    return result


def _iterate(evaluate, x, optimizer, box, notify, progress, opts):
    """Run the loop; return the fields of the result."""
    maxiter, gtol = opts["maxiter"], opts["gtol"]
    ftol, patience = opts["ftol"], opts["patience"]
    best_x = x.copy()
    best_g = None
    best_f = math.inf
    f_ref = None
    stall = nit = 0
    counts = [0, 0]                      # nfev, njev
    while True:
        try:
            f, g, gnorm = evaluate(x, counts)
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
        if ftol is not None:
            if f_ref is None or f_ref - f > ftol * abs(f_ref):
                f_ref, stall = f, 0
            else:
                stall += 1
        if nit > 0 and notify is not None:
            try:
                notify(x, f, g, nit, counts[0])
            except StopIteration:
                status, message = CALLBACK_STOP, "`callback` raised `StopIteration`."
                break
        progress.update(nit, f, best_f, gnorm)
        if gnorm <= gtol:
            status, message = CONVERGED, (
                f"Optimization terminated successfully: max|gradient| = {gnorm:.3g} "
                f"<= gtol = {gtol:g}.")
            break
        if ftol is not None and stall >= patience:
            status, message = CONVERGED, (
                "Optimization terminated successfully: the best value improved by no "
                f"more than ftol = {ftol:g} (relative) in {patience} iterations.")
            break
        if nit >= maxiter:
            status, message = MAXITER, "Maximum number of iterations has been exceeded."
            break
        optimizer.step([g])
        if box is not None:
            np.clip(x, *box, out=x)
        nit += 1
    found = best_g is not None
    return dict(x=best_x, fun=best_f if found else math.nan, jac=best_g, nit=nit,
                nfev=counts[0], njev=counts[1], status=status, success=status == CONVERGED,
                message=message)


def _evaluator(fun, jac, args):
    """``evaluate(x, counts) -> (value, gradient, max|gradient|)`` or ``_Failure``."""
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
        gnorm = float(max(grad.max(), -grad.min()))
        if not math.isfinite(f):
            raise _Failure(NONFINITE, f"NaN result encountered: fun returned {f}")
        if not math.isfinite(gnorm):
            raise _Failure(NONFINITE, "NaN result encountered: the gradient holds NaN or Inf")
        return f, grad, gnorm

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
    """Validated ``(method, options)`` with the defaults filled in."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    options = {} if options is None else dict(options)
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS), key=str)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; the options are "
                         f"{sorted(DEFAULT_OPTIONS)}")
    if tol is not None:
        tol = _nonnegative("tol", tol)
        options.setdefault("gtol", tol)
        options.setdefault("ftol", tol)
    opts = {**DEFAULT_OPTIONS, **options}
    opts["maxiter"] = _count("maxiter", opts["maxiter"], 0)
    opts["patience"] = _count("patience", opts["patience"], 1)
    opts["gtol"] = _nonnegative("gtol", opts["gtol"])
    if opts["ftol"] is not None:
        opts["ftol"] = _nonnegative("ftol", opts["ftol"])
    if not isinstance(opts["disp"], (bool, np.bool_, int)):
        raise ValueError(f"disp must be True or False, got {opts['disp']!r}")
    opts["disp"] = bool(opts["disp"])
    return method.lower(), opts


def _nonnegative(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


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


def _box(bounds, x):
    """``(lower, upper)`` arrays shaped like ``x``, or None when nothing is bounded."""
    if bounds is None:
        return None
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lower, upper = (_bound_array(b, x, f"bounds.{name}")
                        for b, name in ((bounds.lb, "lb"), (bounds.ub, "ub")))
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
    return lower.astype(x.dtype), upper.astype(x.dtype)


def _real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number or None, got {value!r}")
    return float(value)


def _bound_array(bound, x, name):
    array = np.asarray(-np.inf if bound is None else bound, dtype=np.float64)
    if array.size == x.size and array.shape != x.shape:
        array = array.reshape(x.shape)
    try:
        return np.broadcast_to(array, x.shape)
    except ValueError:
        raise ValueError(f"{name} has shape {array.shape}, which does not fit x0's "
                         f"shape {x.shape}") from None


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
