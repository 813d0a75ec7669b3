"""Fit the rates of a predator-prey simulation entirely inside compiled code.

The Lotka-Volterra model ``prey' = a*prey - b*prey*pred``,
``pred' = d*prey*pred - g*pred`` is stepped with explicit Euler, together with
its forward sensitivities (the exact derivative of every Euler step with
respect to ``(a, b, d, g)``), so each fitting iteration costs one simulation.
The whole fit -- simulation, gradient, Adam update and a warmup-cosine
learning-rate schedule -- runs in one ``@njit`` function, stepping a
``numadam.Adam`` through its handle ``opt.jit()``; the schedule's rates come
from ``sched.lr_table(n)``, one row per step. The same loop driven from
Python, calling the same compiled simulation, ``opt.step()`` and
``sched.step()``, gives bit-identical rates; the example measures both.

The functions here are compiled afresh on every run (about two seconds):
``cache=True`` caches per file, and a file that is both run as a script and
imported (as the tests do) would share one cache between two module names.

    python examples/fit_simulation.py
"""

import time

import numpy as np
from numba import njit

import numadam

TRUE = np.array([1.1, 0.4, 0.1, 0.4])       # a, b, d, g
START = np.array([10.0, 5.0])              # prey, predators at t = 0
DT = 0.05
LR, BETA1, BETA2, EPS = 5e-3, 0.9, 0.999, 1e-8


@njit
def simulate(rates, start, dt, n, out):
    a, b, d, g = rates
    x, y = start
    for k in range(n):
        out[k, 0], out[k, 1] = x, y
        x, y = x + dt * (a * x - b * x * y), y + dt * (d * x * y - g * y)


@njit
def loss_and_grad(rates, start, dt, observed, grad):
    """Mean squared error of a simulation against ``observed``; gradient in ``grad``."""
    a, b, d, g = rates
    x, y = start
    sx = np.zeros(4)                         # d prey / d rates
    sy = np.zeros(4)                         # d predators / d rates
    grad[:] = 0.0
    loss = 0.0
    n = observed.shape[0]
    for k in range(n):
        rx, ry = x - observed[k, 0], y - observed[k, 1]
        loss += rx * rx + ry * ry
        for j in range(4):
            grad[j] += 2.0 * (rx * sx[j] + ry * sy[j])
        # derivative of the Euler step: s += dt * (J s + df/drates)
        for j in range(4):
            dx = (a - b * y) * sx[j] - b * x * sy[j]
            dy = d * y * sx[j] + (d * x - g) * sy[j]
            sx[j], sy[j] = sx[j] + dt * dx, sy[j] + dt * dy
        sx[0] += dt * x
        sx[1] -= dt * x * y
        sy[2] += dt * x * y
        sy[3] -= dt * y
        x, y = x + dt * (a * x - b * x * y), y + dt * (d * x * y - g * y)
    grad /= n
    return loss / n


@njit
def fit_compiled(h, rates, grad, start, dt, observed, lrs, last_lr):
    """The whole fit in compiled code: ``h`` is the handle of an optimizer of
    ``rates`` whose owned gradient is ``grad``; step ``t`` uses the rate
    ``lrs[t, 0]`` of a schedule's table, and the group is left at
    ``last_lr``, where the schedule stands after the table (else it would
    keep the last rate set here). Returns the last loss."""
    loss = 0.0
    for t in range(lrs.shape[0]):
        h.set_lr(0, lrs[t, 0])
        loss = loss_and_grad(rates, start, dt, observed, grad)
        h.step()
    h.set_lr(0, last_lr)
    return loss


def fit_from_python(opt, sched, rates, grad, start, dt, observed, iterations):
    """The same loop, one Python iteration per step: the same compiled
    simulation, ``opt.step()`` and ``sched.step()``."""
    loss = 0.0
    for _ in range(iterations):
        loss = loss_and_grad(rates, start, dt, observed, grad)
        opt.step()
        sched.step()
    return loss


def timed(compiled, guess, observed, iterations, repeats):
    """Median seconds of ``repeats`` fits from ``guess``, each with a fresh
    Adam and schedule (the compiled fit's time includes ``lr_table``); the
    fitted rates, loss, and the optimizer's and schedule's state dicts."""
    times = []
    for _ in range(repeats):
        rates = guess.copy()
        opt = numadam.Adam([rates], lr=LR, betas=(BETA1, BETA2), eps=EPS)
        sched = numadam.schedules.WarmupCosineLR(opt, warmup_steps=iterations // 20,
                                                 total_steps=iterations, min_lr_ratio=0.1)
        grad = opt.grads[0]
        begin = time.perf_counter()
        if compiled:
            lrs = sched.lr_table(iterations)
            loss = fit_compiled(opt.jit(), rates, grad, START, DT, observed, lrs,
                                sched.get_last_lr()[0])
        else:
            loss = fit_from_python(opt, sched, rates, grad, START, DT, observed, iterations)
        times.append(time.perf_counter() - begin)
    return float(np.median(times)), rates, loss, opt.state_dict(), sched.state_dict()


def main(steps=200, iterations=6000, noise=0.3, repeats=3, seed=0):
    rng = np.random.default_rng(seed)
    observed = np.empty((steps, 2))
    simulate(TRUE, START, DT, steps, observed)
    observed += noise * rng.standard_normal(observed.shape)
    guess = np.array([0.8, 0.3, 0.13, 0.5])
    for compiled in (True, False):                  # compile first
        timed(compiled, guess, observed, 2, 1)

    compiled, rates, loss, state, sched_state = timed(True, guess, observed, iterations,
                                                      repeats)
    python, rates_py, _, state_py, sched_state_py = timed(False, guess, observed, iterations,
                                                          repeats)
    identical = bool(
        np.array_equal(rates, rates_py) and sched_state == sched_state_py
        and state["param_groups"] == state_py["param_groups"]
        and all(np.array_equal(state["state"][0][key], value)
                for key, value in state_py["state"][0].items()))

    print(f"Lotka-Volterra, {steps} Euler steps per simulation, {iterations} Adam "
          f"iterations: mean squared error {loss:.4f} (the noise alone gives "
          f"{2 * noise ** 2:.4f})")
    print("         " + "".join(f"{name:>9}" for name in "abdg"))
    print("true     " + "".join(f"{r:9.4f}" for r in TRUE))
    print("fitted   " + "".join(f"{r:9.4f}" for r in rates))
    print(f"compiled loop : {iterations / compiled:12,.0f} iterations/s ({compiled:.3f} s)")
    print(f"Python loop   : {iterations / python:12,.0f} iterations/s ({python:.3f} s)")
    print(f"speed-up {python / compiled:.1f}x, same result bit for bit: {identical}")
    return dict(rates=rates, loss=loss, identical=identical,
                compiled_seconds=compiled, python_seconds=python)


if __name__ == "__main__":
    main()
