"""CPU kernels: one compiled call updates every array of a bucket.

A *bucket* is the set of parameters of one group that share a dtype. Its
optimizer state lives in one 2-D array ``state`` of shape ``(2 or 3, total)``
(rows: ``exp_avg``, ``exp_avg_sq`` and, with AMSGrad, ``max_exp_avg_sq``);
parameter ``k`` owns columns ``[offset_k, offset_k + size_k)``. The parameters
and gradients are the user's own arrays, reached through their addresses in
an int64 ``table`` (one row per parameter, columns below), so no Python loop
over arrays and no copy sits between the user and the kernel.

A big bucket's concatenated parameter space is cut into equal, contiguous
*tasks*, a few per thread (:mod:`numadam._pool` runs them on numadam's own
threads), so a single huge array and hundreds of small ones both spread
evenly over the threads. The update is elementwise, so the split (and the
thread count) cannot change a single bit of the result.
"""

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from numadam.core.jitcache import CACHE
from numadam.core.math import NSCALARS, adam_element, loop_scalars, scalars_into

# update_span and address_as_pointer are also used by numadam.functional and
# numadam._distributed_kernels: editing them leaves those modules' Numba caches stale.
__all__ = ["step_serial", "prepare_step", "step_task", "nonfinite_task", "update_span",
           "address_as_pointer", "prepare_uniform", "undo_prepare", "PTR_P", "PTR_G", "OFFSET",
           "SIZE", "STEP", "LIVE", "NCOLS"]

# Columns of the bucket table.
PTR_P, PTR_G, OFFSET, SIZE, STEP, LIVE = range(6)
NCOLS = 6


@intrinsic
def address_as_pointer(typingctx, address, like):
    """Turn an integer address into a pointer to ``like``'s element type."""
    if not isinstance(address, types.Integer) or not isinstance(like, types.Array):
        return None
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, like), codegen


@njit(cache=CACHE, error_model="numpy")
def _prepare(table, state, lr, beta1, beta2, eps, weight_decay):
    """Advance the step of every parameter that has a gradient and build its
    scalar vector (parameter dtype). Parameters without a gradient
    (address 0) keep their step and state, as in torch."""
    n = table.shape[0]
    scal = np.empty((n, NSCALARS), state.dtype)
    previous = -1
    for k in range(n):
        if table[k, PTR_G] == 0:
            continue
        table[k, STEP] += 1
        table[k, LIVE] = 1
        if previous >= 0 and table[previous, STEP] == table[k, STEP]:
            # An element loop, not scal[k, :] = scal[previous, :]: the slice
            # assignment alone took 2 of the 4 s of a cold first step to compile.
            for j in range(NSCALARS):
                scal[k, j] = scal[previous, j]
        else:
            scalars_into(scal[k], table[k, STEP], lr, beta1, beta2, eps, weight_decay)
        previous = k
    return scal


@njit(cache=CACHE, error_model="numpy")
def prepare_uniform(table, state, s, was_live, lr, beta1, beta2, eps, weight_decay):
    """:func:`_prepare` for the device kernels, which take the scalars by value
    when every parameter with a gradient is at the same step.

    Returns ``(scal, mode)``: mode 0, no parameter has a gradient; 1, all are
    at one step and ``s`` holds their scalars; 2, steps differ and ``scal``
    (one row per parameter) is what the kernel must read. ``was_live``
    receives the live column as it was, for :func:`undo_prepare`.
    """
    for k in range(table.shape[0]):
        was_live[k] = table[k, LIVE]
    scal = _prepare(table, state, lr, beta1, beta2, eps, weight_decay)
    first = -1
    for k in range(table.shape[0]):
        if table[k, PTR_G] != 0:
            if first < 0:
                first = k
            elif table[k, STEP] != table[first, STEP]:
                return scal, 2
    if first < 0:
        return scal, 0
    for j in range(NSCALARS):
        s[j] = scal[first, j]
    return scal, 1


def undo_prepare(table, was_live):
    """Take back what :func:`prepare_uniform` did to ``table`` (a launch that failed)."""
    stepped = table[:, PTR_G] != 0
    table[stepped, STEP] -= 1
    table[:, LIVE] = was_live


@njit(cache=CACHE, error_model="numpy")
def update_span(p, g, m, v, vmax, lo, hi, base, s, amsgrad, maximize, decoupled):
    """Update elements ``lo:hi`` of one parameter whose state starts at ``base``."""
    (neg_step, bc2_sqrt, eps, wd, lerp_w, lerp_small, c2, beta2, decay,
     sign) = loop_scalars(s, maximize)
    # Slicing first gives every access the same loop index, which is provably
    # in bounds and non-negative: that is what lets LLVM vectorise the loop.
    p = p[lo:hi]
    g = g[lo:hi]
    m = m[base + lo:base + hi]
    v = v[base + lo:base + hi]
    if amsgrad:
        vmax = vmax[base + lo:base + hi]
        for i in range(p.size):
            p[i], m[i], v[i], vmax[i] = adam_element(
                p[i], g[i], m[i], v[i], vmax[i], neg_step, bc2_sqrt, eps, wd, lerp_w,
                lerp_small, c2, beta2, decay, sign, True, decoupled)
    else:
        for i in range(p.size):
            p[i], m[i], v[i], _ = adam_element(
                p[i], g[i], m[i], v[i], eps, neg_step, bc2_sqrt, eps, wd, lerp_w,
                lerp_small, c2, beta2, decay, sign, False, decoupled)


@njit(cache=CACHE, error_model="numpy")
def _first_param(table, element):
    """Index of the parameter that holds ``element`` (binary search on offsets)."""
    lo = 0
    hi = table.shape[0] - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if table[mid, OFFSET] <= element:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit(cache=CACHE, error_model="numpy")
def _run_task(table, state, scal, lo, hi, amsgrad, maximize, decoupled):
    """Update elements ``lo:hi`` of the concatenated parameter space."""
    k = _first_param(table, lo)
    m = state[0]
    v = state[1]
    vmax = state[2] if amsgrad else state[1]
    n = table.shape[0]
    while lo < hi and k < n:
        offset = table[k, OFFSET]
        size = table[k, SIZE]
        end = min(hi, offset + size)
        if end > lo and table[k, PTR_G] != 0:
            p = carray(address_as_pointer(table[k, PTR_P], state), size)
            g = carray(address_as_pointer(table[k, PTR_G], state), size)
            update_span(p, g, m, v, vmax, lo - offset, end - offset, offset,
                         scal[k], amsgrad, maximize, decoupled)
        if end > lo:
            lo = end
        k += 1


@njit(cache=CACHE, error_model="numpy")
def step_serial(table, state, lr, beta1, beta2, eps, weight_decay,
                amsgrad, maximize, decoupled):
    """One step of a bucket on the calling thread (for small buckets)."""
    scal = _prepare(table, state, lr, beta1, beta2, eps, weight_decay)
    _run_task(table, state, scal, 0, state.shape[1], amsgrad, maximize, decoupled)


@njit(cache=CACHE, nogil=True, error_model="numpy")
def prepare_step(table, state, lr, beta1, beta2, eps, weight_decay):
    """Advance the steps and build the scalars of a bucket (see :func:`_prepare`),
    before its tasks run on several threads (:mod:`numadam._pool`)."""
    return _prepare(table, state, lr, beta1, beta2, eps, weight_decay)


@njit(cache=CACHE, nogil=True, error_model="numpy")
def step_task(table, state, scal, lo, hi, amsgrad, maximize, decoupled):
    """Update elements ``lo:hi`` of a bucket whose scalars ``scal`` are ready.

    Releases the GIL: the tasks of one step run at once on numadam's threads.
    """
    _run_task(table, state, scal, lo, hi, amsgrad, maximize, decoupled)


@njit(cache=CACHE, error_model="numpy")
def address(array):
    """The address of ``array``'s first element (146 ns, against 1.7 us for
    ``array.ctypes.data`` from Python)."""
    return array.ctypes.data


@njit(cache=CACHE, error_model="numpy")
def _span_is_finite(g, lo, hi):
    g = g[lo:hi]
    bad = 0
    for i in range(g.size):
        # x - x is 0 for every finite x and NaN for NaN and +-Inf. An integer OR
        # over a sliced array vectorises (30 GB/s); a boolean OR over g[lo:hi]
        # indexed directly does not (3.5 GB/s), nor would a float sum.
        bad |= np.int32((g[i] - g[i]) != 0)
    return bad == 0


@njit(cache=CACHE, nogil=True, error_model="numpy")
def nonfinite_task(table, like, lo, hi):
    """Row of the first parameter whose gradient holds a NaN or an Inf within
    elements ``lo:hi`` of the bucket, or the row count when there is none.

    Reads the gradients only (the opt-in guard before any update); releases
    the GIL, so the tasks of one check run at once.
    """
    n = table.shape[0]
    k = _first_param(table, lo)
    while lo < hi and k < n:
        offset = table[k, OFFSET]
        end = min(hi, offset + table[k, SIZE])
        if end > lo and table[k, PTR_G] != 0:
            g = carray(address_as_pointer(table[k, PTR_G], like), table[k, SIZE])
            if not _span_is_finite(g, lo - offset, end - offset):
                return k
        if end > lo:
            lo = end
        k += 1
    return n


def compile_kernels(dtypes=("float32", "float64")):
    """Compile (or load from Numba's cache) every kernel a step can call.

    Nothing calls this at import: compiling there would cost every process
    the load of all signatures (about 0.3 s even from a warm cache) and a
    cold import several seconds per dtype. ``python -m numadam compile``
    calls it to fill the on-disk cache ahead of time (container images, CI).
    The kernels run on a one-row table without a gradient, which touches no
    memory. Returns ``[(kernel name, seconds)]``.
    """
    import time

    timings = []
    for dtype in dtypes:
        state = np.zeros((3, 16), dtype)
        table = np.zeros((1, NCOLS), np.int64)
        table[0, SIZE] = 16
        args = (1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False)
        scal = np.zeros((1, NSCALARS), dtype)
        for name, call in (
                ("address", lambda: address(state[0])),
                ("step_serial", lambda: step_serial(table, state, *args)),
                ("prepare_step", lambda: prepare_step(table, state, *args[:5])),
                ("step_task", lambda: step_task(table, state, scal, 0, 16, *args[5:])),
                ("nonfinite_task", lambda: nonfinite_task(table, state, 0, 16))):
            start = time.perf_counter()
            call()
            timings.append((f"{name}[{dtype}]", time.perf_counter() - start))
    return timings
