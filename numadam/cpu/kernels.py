"""CPU kernels: one compiled call updates every array of a bucket, for any rule.

A *bucket* is the set of parameters of one group that share a dtype. Its
optimizer state lives in one 2-D array ``state`` of shape ``(rows, total)``,
one row per state array of the rule (``exp_avg``, ``exp_avg_sq``, ...);
parameter ``k`` owns columns ``[offset_k, offset_k + size_k)``. The parameters
and gradients are the user's own arrays, reached through their addresses in
an int64 ``table`` (one row per parameter, columns below), so no Python loop
over arrays and no copy sits between the user and the kernel.

The kernels of a rule are made by :func:`kernels` from templates in this
module and the rule's three Numba functions (:mod:`numadam.core.rule`); the
CUDA twins are in :mod:`numadam.cuda.kernels`. A big bucket's concatenated
parameter space is cut into equal, contiguous *tasks*, a few per thread
(:mod:`numadam.cpu.pool` runs them on numadam's own threads), so a single
huge array and hundreds of small ones both spread evenly over the threads.
The update is elementwise, so the split (and the thread count) cannot change
a single bit of the result.
"""

import functools
import types as pytypes
from collections import namedtuple

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic, overload

from numadam.core.jitcache import CACHE

__all__ = ["kernels", "Kernels", "nonfinite_task", "address", "address_as_pointer",
           "gradient", "host_address", "undo_prepare", "compile_kernels", "PTR_P", "PTR_G",
           "OFFSET", "SIZE", "STEP", "LIVE", "NCOLS"]

# Columns of the bucket table. LIVE: the parameter has state (torch's
# ``state[p]`` is not empty).
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


@njit(error_model="numpy")
def _clamp(x, lo, hi):
    # np.clip's scalar loop (numpy/_core/src/umath/clip.cpp, _NPY_MAX and
    # _NPY_MIN) keeps a NaN x and otherwise compares as below. Only a bound
    # that is itself a zero (a clip_value below the dtype's least subnormal)
    # could tell the two zeros apart, where NumPy's SIMD loops differ too.
    y = lo if x <= lo else x
    return hi if y >= hi else y


def gradient(x, clip):
    """The gradient element ``x`` as the update reads it under ``clip``.

    ``clip`` is ``None`` (``x`` as it is) or a tuple ``(lo, hi, scale)`` of
    three scalars of the parameter dtype: ``x`` clamped to ``[lo, hi]`` as
    ``np.clip(x, lo, hi)`` does (a NaN stays NaN), then multiplied by
    ``scale``; ``(-inf, inf, 1)`` changes no bit. Inside ``@njit`` code the
    choice is made at compile time: for ``None`` the kernels compile to the
    very loops they have without clipping.
    """
    if clip is None:
        return x
    return _clamp(x, clip[0], clip[1]) * clip[2]


@overload(gradient)
def _gradient_overload(x, clip):
    if x == types.uint16:
        # Imported here: only kernels reading bfloat16 gradients need it, and
        # its module costs every process that imports the kernels 5 ms.
        from numadam.formats.bf16 import to_float32

        # bfloat16 bits (numadam.formats): read as their float32 value.
        if isinstance(clip, types.NoneType):
            return lambda x, clip: to_float32(x)
        return lambda x, clip: _clamp(to_float32(x), clip[0], clip[1]) * clip[2]
    if isinstance(clip, types.NoneType):
        return lambda x, clip: x

    def impl(x, clip):
        return _clamp(x, clip[0], clip[1]) * clip[2]
    return impl


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
def address(array):
    """The address of ``array``'s first element (146 ns, against 1.7 us for
    ``array.ctypes.data`` from Python)."""
    return array.ctypes.data


def host_address(array):
    """The address of a host array's first element, bfloat16 arrays included
    (Numba has no bfloat16 type; the kernels see their bits as uint16)."""
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    return address(array)


@njit(cache=CACHE, error_model="numpy")
def _span_is_finite(g, lo, hi, clip):
    g = g[lo:hi]
    bad = 0
    for i in range(g.size):
        # x - x is 0 for every finite x and NaN for NaN and +-Inf. An integer OR
        # over a sliced array vectorises (30 GB/s); a boolean OR over g[lo:hi]
        # indexed directly does not (3.5 GB/s), nor would a float sum.
        x = gradient(g[i], clip)
        bad |= np.int32((x - x) != 0)
    return bad == 0


@njit(cache=CACHE, nogil=True, error_model="numpy")
def nonfinite_task(table, like, lo, hi, clip):
    """Row of the first parameter whose gradient holds a NaN or an Inf within
    elements ``lo:hi`` of the bucket, or the row count when there is none.
    The gradients are read as the update reads them (``clip``: see
    :func:`gradient`; a clamp turns an Inf into a finite bound).

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
            if not _span_is_finite(g, lo - offset, end - offset, clip):
                return k
        if end > lo:
            lo = end
        k += 1
    return n




def undo_prepare(table, was_live):
    """Take back what a ``prepare`` did to ``table`` (a launch that failed)."""
    stepped = table[:, PTR_G] != 0
    table[stepped, STEP] -= 1
    table[:, LIVE] = was_live


# ------------------------------------------------------------------ templates
#
# Each template is compiled once per rule. The defs carry a leading underscore
# so that the names they call (``prepare``, ``update_span`` ...) are globals,
# not cells of this closure. A template reads the rule's functions as
# globals (``scalars_into``, ``loop_scalars``, ``element`` and the kernels it
# calls, ``update_span`` ...), given to it by :func:`_instantiate` through a
# globals dict of its own; its closure holds only the rule's cache stamp, so
# Numba's on-disk cache keys each rule's build apart (the index key hashes the
# closure) and notices an edit of the rule's module. A closure over the
# functions themselves would not be cached: a dispatcher pickles differently
# in every process.

def _templates(stamp):
    def _prepare(table, state, hyp):
        """Advance the step of every parameter that has a gradient and build
        its scalar vector (parameter dtype). Parameters without a gradient
        (address 0) keep their step and state, as in torch."""
        stamp  # noqa: B018 (the cache key)
        n = table.shape[0]
        scal = np.empty((n, NSCALARS), state.dtype)
        previous = -1
        was_first = False
        for k in range(n):
            if table[k, PTR_G] == 0:
                continue
            first = table[k, LIVE] == 0
            table[k, STEP] += 1
            table[k, LIVE] = 1
            if (previous >= 0 and table[previous, STEP] == table[k, STEP]
                    and not first and not was_first):
                # An element loop, not scal[k, :] = scal[previous, :]: the slice
                # assignment alone took 2 of the 4 s of a cold first step to compile.
                for j in range(NSCALARS):
                    scal[k, j] = scal[previous, j]
            else:
                scalars_into(scal[k], table[k, STEP], first, hyp)
            previous = k
            was_first = first
        return scal

    def _update_span(p, g, a, b, c, nrows, lo, hi, base, s, flags, clip):
        """Update elements ``lo:hi`` of one parameter ``p`` whose state rows
        ``a, b, c`` (the first ``nrows`` exist; the others are any array of
        the dtype and are not touched) start at column ``base``; ``s`` is its
        scalar vector. Each gradient element is read as
        ``gradient(g[i], clip)``: ``clip`` is ``None`` or ``(lo, hi, scale)``
        in the parameter dtype (see :func:`gradient`); ``g`` is never
        written. The functional update calls it on whole arrays."""
        stamp  # noqa: B018
        sc = loop_scalars(s, flags)
        # Slicing first gives every access the same loop index, which is provably
        # in bounds and non-negative: that is what lets LLVM vectorise the loop.
        # One loop per row count, each writing back only the rows that exist.
        p = p[lo:hi]
        g = g[lo:hi]
        if nrows == 0:
            for i in range(p.size):
                x = gradient(g[i], clip)
                p[i], _, _, _ = element(p[i], x, x, x, x, sc, flags)
        elif nrows == 1:
            a = a[base + lo:base + hi]
            for i in range(p.size):
                x = a[i]
                p[i], a[i], _, _ = element(p[i], gradient(g[i], clip), x, x, x, sc, flags)
        elif nrows == 2:
            a = a[base + lo:base + hi]
            b = b[base + lo:base + hi]
            for i in range(p.size):
                x = a[i]
                p[i], a[i], b[i], _ = element(p[i], gradient(g[i], clip), x, b[i], x, sc,
                                              flags)
        else:
            a = a[base + lo:base + hi]
            b = b[base + lo:base + hi]
            c = c[base + lo:base + hi]
            for i in range(p.size):
                p[i], a[i], b[i], c[i] = element(p[i], gradient(g[i], clip), a[i], b[i], c[i],
                                                 sc, flags)

    def _run_task(table, state, scal, lo, hi, flags, clip):
        """Update elements ``lo:hi`` of the concatenated parameter space
        (``clip``: see :func:`gradient`)."""
        stamp  # noqa: B018
        k = _first_param(table, lo)
        n = table.shape[0]
        nrows = state.shape[0]
        while lo < hi and k < n:
            offset = table[k, OFFSET]
            size = table[k, SIZE]
            end = min(hi, offset + size)
            if end > lo and table[k, PTR_G] != 0:
                p = carray(address_as_pointer(table[k, PTR_P], state), size)
                g = carray(address_as_pointer(table[k, PTR_G], state), size)
                # Rows that do not exist are stood in for by g, never written.
                a = state[0] if nrows > 0 else g
                b = state[1] if nrows > 1 else a
                c = state[2] if nrows > 2 else a
                update_span(p, g, a, b, c, nrows, lo - offset, end - offset, offset,
                            scal[k], flags, clip)
            if end > lo:
                lo = end
            k += 1

    def _step_serial(table, state, hyp, flags, clip):
        """One step of a bucket on the calling thread (for small buckets);
        ``clip``: ``None`` or ``(lo, hi, scale)``, see :func:`gradient`."""
        stamp  # noqa: B018
        scal = prepare(table, state, hyp)
        run_task(table, state, scal, 0, state.shape[1], flags, clip)

    def _prepare_step(table, state, hyp):
        """:func:`prepare`, releasing the GIL, before the tasks of a step run
        on several threads (:mod:`numadam.cpu.pool`)."""
        stamp  # noqa: B018
        return prepare(table, state, hyp)

    def _step_task(table, state, scal, lo, hi, flags, clip):
        """Update elements ``lo:hi`` of a bucket whose scalars ``scal`` are
        ready (``clip``: see :func:`gradient`). Releases the GIL: the tasks
        of one step run at once."""
        stamp  # noqa: B018
        run_task(table, state, scal, lo, hi, flags, clip)

    def _prepare_uniform(table, state, s, was_live, hyp):
        """:func:`prepare` for the device kernels, which take the scalars by
        value when every parameter with a gradient is at the same step.

        Returns ``(scal, mode)``: mode 0, no parameter has a gradient; 1, all
        are at one step and ``s`` holds their scalars; 2, steps differ and
        ``scal`` (one row per parameter) is what the kernel must read.
        ``was_live`` receives the live column as it was, for
        :func:`undo_prepare`.
        """
        stamp  # noqa: B018
        for k in range(table.shape[0]):
            was_live[k] = table[k, LIVE]
        scal = prepare(table, state, hyp)
        first = -1
        for k in range(table.shape[0]):
            if table[k, PTR_G] != 0:
                if first < 0:
                    first = k
                elif (table[k, STEP] != table[first, STEP]
                      or was_live[k] != was_live[first]):
                    return scal, 2
        if first < 0:
            return scal, 0
        for j in range(NSCALARS):
            s[j] = scal[first, j]
        return scal, 1

    return dict(prepare=_prepare, update_span=_update_span, run_task=_run_task,
                step_serial=_step_serial, prepare_step=_prepare_step, step_task=_step_task,
                prepare_uniform=_prepare_uniform)


# name -> options of the compiled kernel; inner functions first (a template's
# globals must hold the compiled functions it calls).
_BUILD = (("prepare", {}), ("update_span", {}), ("run_task", {}), ("step_serial", {}),
          ("prepare_step", dict(nogil=True)), ("step_task", dict(nogil=True)),
          ("prepare_uniform", {}))

Kernels = namedtuple("Kernels", [name for name, _ in _BUILD])
Kernels.__doc__ = "The compiled CPU kernels of one rule (see :func:`kernels`)."


def _instantiate(function, namespace, rule, suffix="", **options):
    """``function`` compiled with ``namespace`` as its globals, for ``rule``.

    The qualified name carries the rule's name, which gives each rule its own
    cache index file. Numba updates an index by reading it, adding an entry
    and writing it back, without a lock: two processes compiling different
    entries of one index at once (MPI ranks at different rules, say) can
    leave one entry's key pointing at the other's code. Within one rule the
    entries differ by signature only, so such a race cannot hand a rule
    another rule's kernel. ``suffix`` tells apart builds of one template
    for one rule with different globals (Numba's cache does not see them).
    """
    name = function.__name__.lstrip("_")
    clone = pytypes.FunctionType(function.__code__, namespace, name,
                                 function.__defaults__, function.__closure__)
    clone.__qualname__ = f"{function.__qualname__}.{rule.name}{suffix}"
    clone.__doc__ = function.__doc__
    clone.__module__ = function.__module__
    return njit(cache=CACHE, error_model="numpy", **options)(clone)


@functools.lru_cache(maxsize=None)
def kernels(rule):
    """The CPU kernels of ``rule`` (an :class:`~numadam.core.rule.UpdateRule`).

    Built on first use (nothing compiles until a kernel is called), so a rule
    that is never used costs nothing.
    """
    namespace = dict(globals(), scalars_into=rule.scalars_into,
                     loop_scalars=rule.loop_scalars, element=rule.element,
                     NSCALARS=rule.nscalars)
    templates = _templates(rule.stamp())
    built = {}
    for name, options in _BUILD:
        built[name] = namespace[name] = _instantiate(templates[name], namespace, rule,
                                                     **options)
    return Kernels(**built)


def compile_kernels(rules, dtypes=("float32", "float64"), clipping=False):
    """Compile (or load from Numba's cache) every kernel a step of ``rules``
    can call; with ``clipping``, also those of steps with ``max_grad_norm``
    or ``clip_value`` (the norm's pass and the kernels reading clipped
    gradients: a cold first clipped step compiles them, about 8 s).

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
        like = np.zeros(0, dtype)           # a bucket's dtype carrier (Bucket.like)
        table = np.zeros((1, NCOLS), np.int64)
        table[0, SIZE] = 16
        for name, call in (("address", lambda: address(like)),
                           ("nonfinite_task", lambda: nonfinite_task(table, like, 0, 16, None))):
            start = time.perf_counter()
            call()
            timings.append((f"{name}[{dtype}]", time.perf_counter() - start))
        clip = None
        if clipping:
            from numadam.cpu.norm import NBINS, _square_bins_span
            one = np.dtype(dtype).type(1)
            clip = (-one, one, one)
            bins = np.zeros(NBINS, np.int64)
            for name, call in (
                    ("nonfinite_task", lambda: nonfinite_task(table, like, 0, 16, clip)),
                    ("square_bins", lambda: _square_bins_span(table, like, 0, 16, bins, clip,
                                                              True))):
                start = time.perf_counter()
                call()
                timings.append((f"{name}[{dtype}, clipped]", time.perf_counter() - start))
        for rule in rules:
            k = kernels(rule)
            values, args = rule.validate(rule.defaults())
            state = np.zeros((len(args.rows), 16), dtype)
            scal = np.zeros((1, rule.nscalars), dtype)
            for name, call in (
                    ("step_serial",
                     lambda: k.step_serial(table, state, args.hyp, args.flags, None)),
                    ("prepare_step", lambda: k.prepare_step(table, state, args.hyp)),
                    ("step_task",
                     lambda: k.step_task(table, state, scal, 0, 16, args.flags, None))):
                start = time.perf_counter()
                call()
                timings.append((f"{rule.name}.{name}[{dtype}]", time.perf_counter() - start))
            if clip is not None:
                for name, call in (
                        ("step_serial",
                         lambda: k.step_serial(table, state, args.hyp, args.flags, clip)),
                        ("step_task",
                         lambda: k.step_task(table, state, scal, 0, 16, args.flags, clip))):
                    start = time.perf_counter()
                    call()
                    timings.append((f"{rule.name}.{name}[{dtype}, clipped]",
                                    time.perf_counter() - start))
    return timings
