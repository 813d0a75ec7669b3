"""Fit a linear model on the GPU with CuPy arrays and numadam.Adam.

The parameters, the data and the gradient stay on the device; the gradient is
written into the optimizer's own buffer (``opt.grads``), so a step checks
nothing per gradient and copies nothing: one kernel launch through the CUDA
driver. The same code runs on the CPU with NumPy arrays (``--cpu``), which is
how the tests run it.

    python examples/gpu_least_squares.py          # CuPy and an NVIDIA GPU
    python examples/gpu_least_squares.py --cpu    # NumPy, for comparison
"""

import argparse
import sys
import time

import numpy as np

import numadam


def main(xp, n=8192, d=512, steps=400, lr=0.05):
    """Fit ``y = A x`` by Adam on the mean squared residual; return a summary."""
    rng = xp.random.default_rng(0)
    a = rng.standard_normal((n, d), dtype=xp.float32) / np.float32(np.sqrt(d))
    x_true = rng.standard_normal(d, dtype=xp.float32)
    y = a @ x_true + np.float32(0.01) * rng.standard_normal(n, dtype=xp.float32)
    x = xp.zeros(d, xp.float32)
    opt = numadam.Adam([x], lr=lr)
    (grad,) = opt.grads                      # the optimizer's buffer, on x's device
    scale = np.float32(2.0 / n)

    def loss():
        r = a @ x - y
        return float((r @ r) / n)

    first = loss()
    synchronize = getattr(getattr(xp, "cuda", None), "Device", None)
    t0 = time.perf_counter()
    for _ in range(steps):
        grad[...] = (a.T @ (a @ x - y)) * scale     # in place: opt.step() reads it
        opt.step()
    if synchronize is not None:
        synchronize().synchronize()
    seconds = time.perf_counter() - t0
    error = float(xp.linalg.norm(x - x_true) / xp.linalg.norm(x_true))
    last = loss()
    print(f"{xp.__name__}: loss {first:.4g} -> {last:.4g}, relative error of x {error:.2e}, "
          f"{steps / seconds:.0f} steps/s (gradient and step, {n}x{d})")
    return dict(first=first, last=last, error=error, steps_per_second=steps / seconds)


def cli(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="NumPy arrays on the CPU")
    options = parser.parse_args(argv)
    if options.cpu:
        return main(np)
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as error:                  # no CuPy, or no GPU / driver
        sys.exit(f"this example needs CuPy and an NVIDIA GPU ({type(error).__name__}: "
                 f"{error}); run it with --cpu for the same fit on the CPU")
    return main(cupy)


if __name__ == "__main__":
    cli()
