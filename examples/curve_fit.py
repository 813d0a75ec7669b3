"""Fit a damped oscillation to noisy data with numadam.minimize.

The model is ``y = a * exp(-gamma * t) * cos(omega * t + phi)``, the objective
the mean squared residual with its analytic gradient (``jac=True``), exactly
as one would hand it to ``scipy.optimize.minimize``. Where scipy is
installed the fit is compared with ``scipy.optimize.curve_fit``.

    python examples/curve_fit.py
"""

import time

import numpy as np

import numadam

TRUE = np.array([1.5, 0.3, 2.0, 0.5])        # a, gamma, omega, phi
NAMES = ("a", "gamma", "omega", "phi")


def model(p, t):
    a, gamma, omega, phi = p
    return a * np.exp(-gamma * t) * np.cos(omega * t + phi)


def loss_and_grad(p, t, y):
    """Mean squared residual and its gradient with respect to ``p``."""
    a, gamma, omega, phi = p
    decay = np.exp(-gamma * t)
    cos, sin = np.cos(omega * t + phi), np.sin(omega * t + phi)
    r = a * decay * cos - y
    d_model = np.stack([decay * cos, -t * a * decay * cos, -t * a * decay * sin,
                        -a * decay * sin])
    return r @ r / t.size, d_model @ r * (2.0 / t.size)


def main(n=2000, maxiter=20_000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 10.0, n)
    y = model(TRUE, t) + 0.05 * rng.standard_normal(n)
    p0 = np.array([1.0, 0.1, 1.8, 0.0])

    start = time.perf_counter()
    res = numadam.minimize(loss_and_grad, p0, args=(t, y), jac=True,
                           options=dict(lr=0.01, maxiter=maxiter, gtol=1e-9))
    seconds = time.perf_counter() - start
    print(f"numadam.minimize: {res.message}")
    print(f"  {res.nit} steps in {seconds:.2f} s, mean squared residual {res.fun:.6g}")

    reference = None
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        print("scipy is not installed: no curve_fit comparison")
    else:
        reference, _ = curve_fit(lambda t, *p: model(p, t), t, y, p0=p0)
    header = f"  {'':6} {'true':>8} {'numadam':>10}"
    print(header + (f" {'curve_fit':>10}" if reference is not None else ""))
    for k, name in enumerate(NAMES):
        line = f"  {name:6} {TRUE[k]:8.4f} {res.x[k]:10.5f}"
        if reference is not None:
            line += f" {reference[k]:10.5f}"
        print(line)
    return res, reference


if __name__ == "__main__":
    main()
