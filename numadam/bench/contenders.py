"""The contenders of ``python -m numadam bench``: one optimizer step, many ways.

Each contender is a :class:`Contender` whose ``setup`` allocates its arrays
and returns a zero-argument callable that performs one complete optimizer
step (synchronised: it returns when the parameters hold their new values).
Optional libraries (torch, jax/optax) are imported inside ``setup``; a
contender whose library is missing raises :class:`Unavailable`.

The in-process streaming kernel reads 4 arrays and writes 3 (5 and 4 with
AMSGrad), exactly the traffic of an Adam step, with a trivial body: it is the
yardstick of "the machine's streaming bandwidth" in the table. SGD with
momentum, Adagrad and RMSprop (without momentum or centering) each read 3
arrays and write 2; their yardstick is the 3-read, 2-write kernel (their
contenders are in :mod:`numadam.bench.rules`).
"""

import functools
import math

import numpy as np
from numba import get_num_threads, njit, prange

import numadam
from numadam.core.jitcache import CACHE

__all__ = ["Contender", "Unavailable", "make_arrays", "stream_traffic", "CONTENDERS",
           "numadam_step", "numadam_owned", "numadam_flat", "stream", "noop_call",
           "fit_gradient", "fit_numadam", "fit_numpy", "fit_gradient_only", "fit_numpy_step",
           "stream_3r2w", "CLIPPING", "task_bounds"]

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8


class Unavailable(Exception):
    """The contender's library is not importable here."""


class Contender:
    """A named way to run a step; ``setup(sizes, dtype, amsgrad)`` -> step callable."""

    def __init__(self, name, setup, arrays_per_element):
        self.name = name
        self._setup = setup
        # Full-size buffers the contender keeps alive (for the memory estimate).
        self.arrays_per_element = arrays_per_element

    def setup(self, sizes, dtype, amsgrad):
        return self._setup(sizes, np.dtype(dtype), amsgrad)

    def __repr__(self):
        return f"Contender({self.name!r})"


def stream_traffic(itemsize, amsgrad):
    """Bytes an Adam step moves per element: 4 reads + 3 writes (AMSGrad 5 + 4)."""
    return (9 if amsgrad else 7) * itemsize


@njit(parallel=True, cache=CACHE, error_model="numpy")
def _fill(a, seed):
    # Written by Numba's threads, so pages are first touched where they are used.
    for i in prange(a.size):
        a[i] = ((i * 2654435761 + seed) % 2001 - 1000) * 1e-5


def make_arrays(sizes, dtype, seed):
    """Arrays of ``sizes`` with small deterministic values, filled in parallel."""
    out = []
    for k, n in enumerate(sizes):
        a = np.empty(n, dtype)
        _fill(a, seed + 7919 * k)
        out.append(a)
    return out


# ------------------------------------------------------------------ numadam
def _numadam(sizes, dtype, amsgrad, owned=False):
    params = make_arrays(sizes, dtype, 1)
    opt = numadam.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, amsgrad=amsgrad)
    if owned:
        for g, src in zip(opt.grads, make_arrays(sizes, dtype, 2)):
            g[...] = src
        return opt.step
    return functools.partial(opt.step, make_arrays(sizes, dtype, 2))


numadam_step = Contender("numadam", _numadam, 4)
# Interleaved with the many-array contenders, so that the "200 arrays vs one flat
# array" ratio compares two measurements taken in the same machine state.
numadam_flat = Contender("numadam, one flat array of the same total",
                         lambda sizes, dtype, amsgrad: _numadam([sum(sizes)], dtype, amsgrad), 4)
numadam_owned = Contender("numadam step() owned grads",
                          functools.partial(_numadam, owned=True), 4)


# ------------------------------------------------------------------ clipping
# The "clipping" section: Adam with max_grad_norm (and clip_value) fused into
# the step, against the same step after a NumPy clip pass over the
# gradients (a norm, then one multiply into a buffer the step reads).
CLIP_NORM, CLIP_VALUE = 1.0, 1e-2   # make_arrays' gradients (|g| <= 1e-2) have norm > 1 from 1e5


def _numadam_clipped(sizes, dtype, amsgrad, **clipping):
    params = make_arrays(sizes, dtype, 1)
    opt = numadam.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, amsgrad=amsgrad,
                       **clipping)
    return functools.partial(opt.step, make_arrays(sizes, dtype, 2))


def _numpy_clip_then_numadam(sizes, dtype, amsgrad, wide):
    """``wide``: the norm in float64 (a converted copy of each gradient),
    else NumPy's float32 norm (faster, but rounded in float32)."""
    params = make_arrays(sizes, dtype, 1)
    grads = make_arrays(sizes, dtype, 2)
    scaled = [np.empty_like(g) for g in grads]
    opt = numadam.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, amsgrad=amsgrad)

    def step():
        norm = math.sqrt(sum(float(np.linalg.norm(g.astype(np.float64) if wide else g)) ** 2
                             for g in grads))
        coef = min(1.0, CLIP_NORM / (norm + 1e-6))
        for g, s in zip(grads, scaled):
            np.multiply(g, dtype.type(coef), out=s)
        opt.step(scaled)
    return step


numadam_clip_norm = Contender("numadam max_grad_norm",
                              functools.partial(_numadam_clipped, max_grad_norm=CLIP_NORM), 4)
numadam_clip_both = Contender("numadam max_grad_norm + clip_value", functools.partial(
    _numadam_clipped, max_grad_norm=CLIP_NORM, clip_value=CLIP_VALUE), 4)
numpy_clip32 = Contender("NumPy float32 norm + multiply, numadam step",
                         functools.partial(_numpy_clip_then_numadam, wide=False), 5)
numpy_clip64 = Contender("NumPy float64 norm + multiply, numadam step",
                         functools.partial(_numpy_clip_then_numadam, wide=True), 7)
CLIPPING = (numadam_step, numadam_clip_norm, numadam_clip_both, numpy_clip32, numpy_clip64)


# ------------------------------------------------------------ streaming kernel
@njit(cache=CACHE, inline="always")
def task_bounds(task, n, nthreads, align):
    """``[lo, hi)`` of ``task``'s slice when ``n`` elements are cut like
    numadam's kernel: one contiguous task per thread, each starting at a
    multiple of ``align``, which lets LLVM vectorise the slice (about 10%
    faster than a prange over elements)."""
    chunk = ((n + nthreads - 1) // nthreads + align - 1) // align * align
    lo = min(task * chunk, n)
    return lo, min(lo + chunk, n)


def _stream_body(p, g, m, v, a, b, nthreads):
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, 16)
        pp, gg, mm, vv = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(pp.size):
            gi = gg[i]
            pp[i] = pp[i] + a * gi
            mm[i] = mm[i] * b + gi
            vv[i] = vv[i] * b + gi


def _stream_body_ams(p, g, m, v, w, a, b, nthreads):
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, 16)
        pp, gg, mm, vv, ww = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], w[lo:hi]
        for i in range(pp.size):
            gi = gg[i]
            vi = vv[i] * b + gi
            pp[i] = pp[i] + a * gi
            mm[i] = mm[i] * b + gi
            vv[i] = vi
            ww[i] = max(ww[i], vi)


def _stream_body_3r2w(p, g, m, a, b, nthreads):
    # The traffic of SGD with momentum, Adagrad and plain RMSprop.
    n = p.size
    for task in prange(nthreads):
        lo, hi = task_bounds(task, n, nthreads, 16)
        pp, gg, mm = p[lo:hi], g[lo:hi], m[lo:hi]
        for i in range(pp.size):
            gi = gg[i]
            pp[i] = pp[i] + a * gi
            mm[i] = mm[i] * b + gi


_STREAM = {(parallel, ams): njit(parallel=parallel, cache=CACHE, error_model="numpy")(
    _stream_body_ams if ams else _stream_body)
    for parallel in (False, True) for ams in (False, True)}


def _stream(sizes, dtype, amsgrad):
    n = sum(sizes)
    arrays = make_arrays([n] * (5 if amsgrad else 4), dtype, 3)
    parallel = n >= numadam.config.serial_below
    return functools.partial(_STREAM[parallel, amsgrad], *arrays, dtype.type(1e-7),
                             dtype.type(0.5), get_num_threads() if parallel else 1)


stream = Contender("stream 4r/3w kernel", _stream, 4)

_STREAM_3R2W = {parallel: njit(parallel=parallel, cache=CACHE, error_model="numpy")(
    _stream_body_3r2w) for parallel in (False, True)}


def _stream_3r2w(sizes, dtype, amsgrad):
    n = sum(sizes)
    arrays = make_arrays([n] * 3, dtype, 3)
    parallel = n >= numadam.config.serial_below
    return functools.partial(_STREAM_3R2W[parallel], *arrays, dtype.type(1e-7),
                             dtype.type(0.5), get_num_threads() if parallel else 1)


stream_3r2w = Contender("stream 3r/2w kernel", _stream_3r2w, 3)


# --------------------------------------------------------------------- NumPy
def _numpy_naive(sizes, dtype, amsgrad):
    """The textbook update with a temporary for every operation."""
    params = make_arrays(sizes, dtype, 1)
    grads = make_arrays(sizes, dtype, 2)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        for k, (p, g) in enumerate(zip(params, grads)):
            m[k] = BETA1 * m[k] + (1 - BETA1) * g
            v[k] = BETA2 * v[k] + (1 - BETA2) * g * g
            if amsgrad:
                vmax[k] = np.maximum(vmax[k], v[k])
            m_hat = m[k] / (1 - BETA1 ** t[0])
            v_hat = (vmax[k] if amsgrad else v[k]) / (1 - BETA2 ** t[0])
            p -= LR * m_hat / (np.sqrt(v_hat) + EPS)
    return step


def _numpy_inplace(sizes, dtype, amsgrad):
    """Every operation in place, with one scratch buffer shared by all arrays."""
    return _numpy_adam(make_arrays(sizes, dtype, 1), make_arrays(sizes, dtype, 2), amsgrad)


def _numpy_adam(params, grads, amsgrad):
    """The step of :func:`_numpy_inplace` over the given arrays."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params]
    scratch = np.empty(max(p.size for p in params), params[0].dtype)
    t = [0]

    def step():
        t[0] += 1
        bc2_sqrt = math.sqrt(1 - BETA2 ** t[0])
        neg_step = -LR / (1 - BETA1 ** t[0])
        for k, (p, g) in enumerate(zip(params, grads)):
            s = scratch[:p.size]
            np.subtract(g, m[k], out=s)
            s *= 1 - BETA1
            m[k] += s
            v[k] *= BETA2
            np.multiply(g, g, out=s)
            s *= 1 - BETA2
            v[k] += s
            second = v[k]
            if amsgrad:
                np.maximum(vmax[k], v[k], out=vmax[k])
                second = vmax[k]
            np.sqrt(second, out=s)
            s /= bc2_sqrt
            s += EPS
            np.divide(m[k], s, out=s)
            s *= neg_step
            p += s
    return step


numpy_naive = Contender("NumPy naive", _numpy_naive, 9)
numpy_inplace = Contender("NumPy in-place", _numpy_inplace, 6)


# --------------------------------------------------------------------- torch
def _torch(sizes, dtype, amsgrad, mode):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed") from None
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in make_arrays(sizes, dtype, 1)]
    for p, g in zip(params, make_arrays(sizes, dtype, 2)):
        p.grad = torch.from_numpy(g)
    flags = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True),
             "fused": dict(fused=True)}[mode]
    opt = torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS,
                           amsgrad=amsgrad, **flags)
    return opt.step


torch_loop = Contender("torch for-loop", functools.partial(_torch, mode="for-loop"), 4)
torch_foreach = Contender("torch foreach", functools.partial(_torch, mode="foreach"), 5)
torch_fused = Contender("torch fused", functools.partial(_torch, mode="fused"), 4)


# --------------------------------------------------------------------- optax
def _optax(sizes, dtype, amsgrad):
    try:
        import jax
        import optax
    except ImportError:
        raise Unavailable("jax/optax is not installed") from None
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    tx = (optax.amsgrad if amsgrad else optax.adam)(LR, b1=BETA1, b2=BETA2, eps=EPS)
    params = [jax.device_put(a) for a in make_arrays(sizes, dtype, 1)]
    grads = [jax.device_put(a) for a in make_arrays(sizes, dtype, 2)]

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    box = [params, tx.init(params)]

    def step():
        box[0], box[1] = update(box[0], box[1], grads)
        jax.block_until_ready(box[0])
    return step


optax_jit = Contender("optax adam jit", _optax, 5)


# ------------------------------------------------- a fit loop with threaded BLAS
FIT_COLUMNS = 8


def fit_gradient(x, g):
    """The gradient of a quadratic fit, ``g = X @ C + d`` with ``X`` the parameters
    as an ``(n/8, 8)`` matrix: one matrix product per step, which NumPy's BLAS
    runs on its own threads, as most gradients of real fits do.

    ``C`` is small, symmetric and positive definite and ``d`` is +-1, so the
    optimum lies far away: over a benchmark's few thousand steps the
    parameters drift steadily and no value turns subnormal or overflows
    (either would change the timing).
    """
    n = x.size - x.size % FIT_COLUMNS
    rng = np.random.default_rng(5)
    b = rng.standard_normal((FIT_COLUMNS, FIT_COLUMNS))
    c = ((b @ b.T / FIT_COLUMNS + np.eye(FIT_COLUMNS)) * 1e-2).astype(x.dtype)
    d = np.where(rng.random(x.size) < 0.5, -1, 1).astype(x.dtype)
    xm = x[:n].reshape(-1, FIT_COLUMNS)
    gm = g[:n].reshape(-1, FIT_COLUMNS)

    def gradient():
        np.matmul(xm, c, out=gm)
        g[n:] = 0
        np.add(g, d, out=g)
    return gradient


def _fit(sizes, dtype, amsgrad, optimizer, step_only=False):
    x = make_arrays([sum(sizes)], dtype, 1)[0]
    g = np.zeros_like(x)
    gradient = fit_gradient(x, g)
    if optimizer == "none":
        return gradient
    if step_only:
        gradient()
        return _numpy_adam([x], [g], amsgrad)
    if optimizer == "numadam":
        opt = numadam.Adam([x], lr=LR, betas=(BETA1, BETA2), eps=EPS, amsgrad=amsgrad)
        update = functools.partial(opt.step, [g])
    else:
        update = _numpy_adam([x], [g], amsgrad)

    def iteration():
        gradient()
        update()
    return iteration


fit_numadam = Contender("numadam loop", functools.partial(_fit, optimizer="numadam"), 5)
fit_numpy = Contender("NumPy Adam loop", functools.partial(_fit, optimizer="numpy"), 7)
fit_gradient_only = Contender("gradient only", functools.partial(_fit, optimizer="none"), 3)
fit_numpy_step = Contender("NumPy Adam step", functools.partial(_fit, optimizer="numpy",
                                                                step_only=True), 7)


# ------------------------------------------------------------ bare njit call
@njit(cache=CACHE)
def _noop(table, state, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled):
    pass


def _noop_call(sizes, dtype, amsgrad):
    """A Numba no-op with the serial kernel's arguments: the floor of a step."""
    table = np.zeros((len(sizes), 6), np.int64)
    state = np.zeros((3 if amsgrad else 2, sum(sizes)), dtype)
    return functools.partial(_noop, table, state, LR, BETA1, BETA2, EPS, 0.0, amsgrad,
                             False, False)


noop_call = Contender("bare njit call (no-op)", _noop_call, 2)

CONTENDERS = {c.name: c for c in (
    numadam_step, numadam_owned, numadam_flat, stream, numpy_naive, numpy_inplace, torch_loop,
    torch_foreach, torch_fused, optax_jit, noop_call, fit_numadam, fit_numpy,
    fit_gradient_only, fit_numpy_step, stream_3r2w)}
