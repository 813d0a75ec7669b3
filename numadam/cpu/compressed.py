"""CPU kernels for compressed state and bfloat16 parameters.

The same rule functions as :mod:`numadam.cpu.kernels` (``scalars_into``,
``loop_scalars``, ``element``) around load and store functions chosen by the
types of the arrays, so every rule gets every format without a kernel
written for it:

- a parameter or gradient of bfloat16 (passed as a ``uint16`` view) is
  widened to float32 (exact) and narrowed back by round-to-nearest-even or
  stochastic rounding (:mod:`numadam.formats.bf16`);
- state of ``uint16`` is bfloat16, narrowed with round-to-nearest-even;
- state of ``uint8`` is 8-bit block-quantised (:mod:`numadam.formats.dynamic8`).

The element math runs in float32 whatever the storage. Host scalars are the
rule's own float64 ones rounded once to float32 (the rule's ``prepare``),
never bfloat16.

8-bit state, row layout: the ``total`` codes of the bucket (every parameter
starts at a multiple of :data:`~numadam.formats.BLOCK`), then the float32
absmax of each block as ``4 * total / BLOCK`` bytes, so one uint8 array
holds the whole state and copies, pickles and loads move it as one. A block
is updated in two vectorised passes over at most 256 elements held in a
scratch buffer: decode and update (writing the parameter, and keeping each
row's block maximum as it goes), then encode. The update reads the new state
values in float32 before they are quantised, as bitsandbytes' blockwise
kernels do. Tasks start at multiples of the block, so no block is split
between threads and the bits do not depend on the thread count.
"""

import functools
from collections import namedtuple

import numpy as np
from numba import carray, njit, types
from numba.extending import overload

from numadam.core.jitcache import CACHE
from numadam.core.math import bits_float, float_bits
from numadam.cpu import kernels as _cpu
from numadam.cpu.kernels import (OFFSET, PTR_G, PTR_P, SIZE, STEP, _first_param,
                                 address_as_pointer, gradient)
from numadam.formats import BLOCK
from numadam.formats.stochastic import encode_signed_sr, encode_unsigned_sr, state_key
from numadam.formats.bf16 import (noise16, round_nearest, round_stochastic, stream_key,
                                  to_float32)
from numadam.formats.dynamic8 import (SIGNED_MAP, UNSIGNED_MAP, encode_signed,
                                      encode_unsigned)

__all__ = ["kernels", "Kernels", "widen", "narrow_state", "narrow_param", "PARAM_SR",
           "STATE_SR"]

# Bits of a bucket's ``sr`` (``stochastic_rounding=True``): round bfloat16
# parameters (the kernels' ``sr`` argument), and bfloat16 or 8-bit state (the
# kernels built with ``stochastic_state``), stochastically.
PARAM_SR = 1
STATE_SR = 2
STOCHASTIC_STATE = False    # a template's global: see kernels()


def widen(x):
    """A stored value as float32: bfloat16 bits (uint16) widened, a float as it is."""
    raise NotImplementedError("widen is only callable from compiled code")


@overload(widen)
def _widen(x):
    if x == types.uint16:
        return lambda x: to_float32(x)
    return lambda x: x


def narrow_state(v, like):
    """The float32 ``v`` stored as ``like``'s type: bfloat16 bits by
    round-to-nearest-even for uint16, else ``v``."""
    raise NotImplementedError("narrow_state is only callable from compiled code")


@overload(narrow_state)
def _narrow_state(v, like):
    if like == types.uint16:
        return lambda v, like: round_nearest(v)
    return lambda v, like: v


def narrow_state_sr(v, like, rkey, index):
    """:func:`narrow_state` with stochastic rounding: the draw of element
    ``index`` under the row key ``rkey``."""
    raise NotImplementedError("narrow_state_sr is only callable from compiled code")


@overload(narrow_state_sr)
def _narrow_state_sr(v, like, rkey, index):
    if like == types.uint16:
        return lambda v, like, rkey, index: round_stochastic(v, noise16(rkey, index))
    return lambda v, like, rkey, index: v


def narrow_param(v, like, sr, skey, index):
    """The float32 ``v`` stored as ``like``'s type: for bfloat16 bits,
    stochastic rounding with the draw of element ``index`` under ``skey``
    when ``sr & PARAM_SR``, else round-to-nearest-even."""
    raise NotImplementedError("narrow_param is only callable from compiled code")


@overload(narrow_param)
def _narrow_param(v, like, sr, skey, index):
    if like == types.uint16:
        def impl(v, like, sr, skey, index):
            if sr & PARAM_SR:
                return round_stochastic(v, noise16(skey, index))
            return round_nearest(v)
        return impl
    return lambda v, like, sr, skey, index: v


# Both maps in one array, indexed by ``signed``: a row's map is picked once
# per task, and the decode is one table read. Read as this global in the loops
# (not through an array argument) it is a constant LLVM knows no store can
# touch; through an argument the loops needed overlap checks it cannot bound
# for an indirect read, and stayed scalar.
_MAPS = np.stack([UNSIGNED_MAP, SIGNED_MAP])


@njit(cache=CACHE, error_model="numpy", inline="always")
def _abs_bits(v):
    """The bits of ``|v|`` as a uint32: ordered as the magnitudes, with every
    NaN and infinity at or above ``0x7F800000``. A maximum of these is an
    integer reduction LLVM keeps in vector registers across the update loop."""
    return np.uint32(float_bits(v) & np.uint32(0x7FFFFFFF))


@njit(cache=CACHE, error_model="numpy", inline="always")
def _block_scale(top):
    """The absmax of a block whose largest :func:`_abs_bits` is ``top`` (NaN
    if any value is NaN or infinite), and the factor its values are encoded
    with."""
    m = bits_float(top)
    if top >= np.uint32(0x7F800000):
        m = np.float32(np.nan)
    inv = np.float32(1) / m if m > 0 else np.float32(0)
    if m != m:
        inv = m     # every code then decodes to NaN times the map: NaN
    return m, inv


@njit(cache=CACHE, error_model="numpy", inline="always")
def _quantise_sr(x, off, n, codes, signed, top, rkey, first):
    """:func:`_quantise` rounding stochastically, element ``first + i``
    drawing under the row key ``rkey``."""
    m, inv = _block_scale(top)
    if signed:
        for i in range(n):
            codes[i] = encode_signed_sr(x[off + i] * inv, noise16(rkey, first + i))
    else:
        for i in range(n):
            codes[i] = encode_unsigned_sr(x[off + i] * inv, noise16(rkey, first + i))
    return m


@njit(cache=CACHE, error_model="numpy", inline="always")
def _quantise(x, off, n, codes, signed, top):
    """Encode ``x[off:off + n]`` into ``codes[:n]`` given ``top``, the largest
    :func:`_abs_bits` of those values; returns the block's absmax: the largest
    magnitude, or NaN if any value is NaN or infinite."""
    m, inv = _block_scale(top)
    if signed:
        for i in range(n):
            codes[i] = encode_signed(x[off + i] * inv)
    else:
        for i in range(n):
            codes[i] = encode_unsigned(x[off + i] * inv)
    return m


# ------------------------------------------------------------------ templates
# As in :mod:`numadam.cpu.kernels`: compiled once per rule with the rule's
# functions as globals; the closure holds only the rule's cache stamp.

def _templates(stamp):
    def _span(p, g, st, nrows, lo, hi, base, s, flags, clip, sr, skey, signed, total, buf):
        """Elements ``lo:hi`` of one parameter, elementwise state (float32 or
        bfloat16 rows of ``st`` from column ``base``); ``signed``, ``total``
        and ``buf`` are :func:`_span8`'s, unused."""
        stamp  # noqa: B018
        sc = loop_scalars(s, flags)
        p = p[lo:hi]
        g = g[lo:hi]
        ka = state_key(skey, 0)
        kb = state_key(skey, 1)
        kc = state_key(skey, 2)
        if nrows == 0:
            for i in range(p.size):
                x = gradient(widen(g[i]), clip)
                q, _, _, _ = element(widen(p[i]), x, x, x, x, sc, flags)
                p[i] = narrow_param(q, p[i], sr, skey, lo + i)
        elif nrows == 1:
            # A row taken whole, then sliced, keeps a contiguous layout that
            # LLVM vectorises; st[0, lo:hi] in one index does not.
            a = st[0]
            a = a[base + lo:base + hi]
            for i in range(p.size):
                x = widen(a[i])
                q, na, _, _ = element(widen(p[i]), gradient(widen(g[i]), clip), x, x, x, sc,
                                      flags)
                p[i] = narrow_param(q, p[i], sr, skey, lo + i)
                a[i] = (narrow_state_sr(na, a[i], ka, lo + i) if STOCHASTIC_STATE
                        else narrow_state(na, a[i]))
        elif nrows == 2:
            a = st[0]
            b = st[1]
            a = a[base + lo:base + hi]
            b = b[base + lo:base + hi]
            for i in range(p.size):
                x = widen(a[i])
                q, na, nb, _ = element(widen(p[i]), gradient(widen(g[i]), clip), x,
                                       widen(b[i]), x, sc, flags)
                p[i] = narrow_param(q, p[i], sr, skey, lo + i)
                a[i] = (narrow_state_sr(na, a[i], ka, lo + i) if STOCHASTIC_STATE
                        else narrow_state(na, a[i]))
                b[i] = (narrow_state_sr(nb, b[i], kb, lo + i) if STOCHASTIC_STATE
                        else narrow_state(nb, b[i]))
        else:
            a = st[0]
            b = st[1]
            c = st[2]
            a = a[base + lo:base + hi]
            b = b[base + lo:base + hi]
            c = c[base + lo:base + hi]
            for i in range(p.size):
                q, na, nb, nc = element(widen(p[i]), gradient(widen(g[i]), clip),
                                        widen(a[i]), widen(b[i]), widen(c[i]), sc, flags)
                p[i] = narrow_param(q, p[i], sr, skey, lo + i)
                a[i] = (narrow_state_sr(na, a[i], ka, lo + i) if STOCHASTIC_STATE
                        else narrow_state(na, a[i]))
                b[i] = (narrow_state_sr(nb, b[i], kb, lo + i) if STOCHASTIC_STATE
                        else narrow_state(nb, b[i]))
                c[i] = (narrow_state_sr(nc, c[i], kc, lo + i) if STOCHASTIC_STATE
                        else narrow_state(nc, c[i]))

    def _block8(pp, gg, ca, cb, cc, sa, sb, sc_, ma, mb, mc, buf, nrows, sc, flags, clip, sr,
                skey, first):
        """Decode and update one block: parameter elements ``pp`` (``first``:
        the index of ``pp[0]``), codes ``ca, cb, cc`` (the first ``nrows``
        exist) with maps ``_MAPS[sa]``... (1 signed, 0 unsigned) and absmax
        ``ma, mb, mc``; the new state values go to ``buf`` (row ``r`` at
        ``r * BLOCK``). Returns the largest :func:`_abs_bits` of each row's."""
        # A function of its own: inlined in the block loop of :func:`_span8`,
        # the same loops were left scalar (LLVM: "value that could not be
        # identified as reduction is used outside the loop").
        stamp  # noqa: B018
        # The block maxima of the new values ride along as integer maxima of
        # their |bits| (:func:`_abs_bits`), vector registers across the loop.
        ua = np.uint32(0)
        ub = np.uint32(0)
        uc = np.uint32(0)
        if nrows == 1:
            for i in range(pp.size):
                x = _MAPS[sa, ca[i]] * ma
                q, na, _, _ = element(widen(pp[i]), gradient(widen(gg[i]), clip), x, x, x, sc,
                                      flags)
                pp[i] = narrow_param(q, pp[i], sr, skey, first + i)
                buf[i] = na
                ua = max(ua, _abs_bits(na))
        elif nrows == 2:
            for i in range(pp.size):
                x = _MAPS[sa, ca[i]] * ma
                q, na, nb, _ = element(widen(pp[i]), gradient(widen(gg[i]), clip), x,
                                       _MAPS[sb, cb[i]] * mb, x, sc, flags)
                pp[i] = narrow_param(q, pp[i], sr, skey, first + i)
                buf[i] = na
                buf[BLOCK + i] = nb
                ua = max(ua, _abs_bits(na))
                ub = max(ub, _abs_bits(nb))
        else:
            # Three code rows read in the update loop exceed LLVM's budget of
            # run-time overlap checks: they are decoded first.
            for i in range(pp.size):
                buf[i] = _MAPS[sa, ca[i]] * ma
                buf[BLOCK + i] = _MAPS[sb, cb[i]] * mb
                buf[2 * BLOCK + i] = _MAPS[sc_, cc[i]] * mc
            for i in range(pp.size):
                q, na, nb, nc = element(widen(pp[i]), gradient(widen(gg[i]), clip), buf[i],
                                        buf[BLOCK + i], buf[2 * BLOCK + i], sc, flags)
                pp[i] = narrow_param(q, pp[i], sr, skey, first + i)
                buf[i] = na
                buf[BLOCK + i] = nb
                buf[2 * BLOCK + i] = nc
                ua = max(ua, _abs_bits(na))
                ub = max(ub, _abs_bits(nb))
                uc = max(uc, _abs_bits(nc))
        return ua, ub, uc

    def _span8(p, g, st, nrows, lo, hi, base, s, flags, clip, sr, skey, signed, total, buf):
        """Elements ``lo:hi`` (``lo`` a multiple of the block) of one
        parameter whose 8-bit state starts at column ``base`` of ``st``."""
        stamp  # noqa: B018
        sc = loop_scalars(s, flags)
        p = p[lo:hi]
        g = g[lo:hi]
        if nrows == 0:
            for i in range(p.size):
                x = gradient(widen(g[i]), clip)
                q, _, _, _ = element(widen(p[i]), x, x, x, x, sc, flags)
                p[i] = narrow_param(q, p[i], sr, skey, lo + i)
            return
        # Rows taken whole, then sliced: contiguous layouts LLVM vectorises.
        # Each row's map is chosen once here, not per element.
        ra = st[0]
        rb = st[1] if nrows > 1 else ra
        rc = st[2] if nrows > 2 else ra
        sa = np.int64(signed[0])
        sb = np.int64(signed[1] if nrows > 1 else False)
        sc_ = np.int64(signed[2] if nrows > 2 else False)
        # One scratch buffer, the rows at fixed distances: to LLVM one object,
        # so the loops need few run-time overlap checks (it vectorises a loop
        # only under a small budget of them, and a buffer per row exceeded it).
        ka = state_key(skey, 0)
        kb = state_key(skey, 1)
        kc = state_key(skey, 2)
        aa = ra[total:].view(np.float32)
        ab = rb[total:].view(np.float32)
        ac = rc[total:].view(np.float32)
        for start in range(0, hi - lo, BLOCK):
            n = min(BLOCK, hi - lo - start)
            col = base + lo + start
            block = col // BLOCK
            pp = p[start:start + n]
            gg = g[start:start + n]
            ca = ra[col:col + n]
            cb = rb[col:col + n]
            cc = rc[col:col + n]
            ua, ub, uc = block8(pp, gg, ca, cb, cc, sa, sb, sc_, aa[block], ab[block], ac[block],
                                buf, nrows, sc, flags, clip, sr, skey, lo + start)
            first = lo + start
            if STOCHASTIC_STATE:
                aa[block] = _quantise_sr(buf, 0, n, ca, signed[0], ua, ka, first)
                if nrows > 1:
                    ab[block] = _quantise_sr(buf, BLOCK, n, cb, signed[1], ub, kb, first)
                if nrows > 2:
                    ac[block] = _quantise_sr(buf, 2 * BLOCK, n, cc, signed[2], uc, kc, first)
            else:
                aa[block] = _quantise(buf, 0, n, ca, signed[0], ua)
                if nrows > 1:
                    ab[block] = _quantise(buf, BLOCK, n, cb, signed[1], ub)
                if nrows > 2:
                    ac[block] = _quantise(buf, 2 * BLOCK, n, cc, signed[2], uc)

    def _run_task(table, keys, st, scal, lo, hi, flags, clip, sr, signed, total, like):
        """Update elements ``lo:hi`` of the bucket (``like``: an array of the
        parameters' stored type, float32 or uint16). ``span`` is :func:`_span`
        or, for 8-bit state, :func:`_span8`: this template is built once with
        each."""
        stamp  # noqa: B018
        k = _first_param(table, lo)
        n = table.shape[0]
        nrows = st.shape[0]
        buf = np.empty(3 * BLOCK, np.float32)
        while lo < hi and k < n:
            offset = table[k, OFFSET]
            size = table[k, SIZE]
            # 8-bit state pads each parameter to whole blocks: the previous
            # parameter's end can lie before this one's offset.
            lo = max(lo, offset)
            end = min(hi, offset + size)
            if end > lo and table[k, PTR_G] != 0:
                p = carray(address_as_pointer(table[k, PTR_P], like), size)
                g = carray(address_as_pointer(table[k, PTR_G], like), size)
                skey = stream_key(keys[k], table[k, STEP])
                span(p, g, st, nrows, lo - offset, end - offset, offset, scal[k], flags, clip,
                     sr, skey, signed, total, buf)
            if end > lo:
                lo = max(lo, end)
            k += 1

    def _step_serial(table, keys, st, carrier, hyp, flags, clip, sr, signed, total, like):
        """One step of a bucket on the calling thread (``carrier``: an empty
        2-D float32 array, the dtype of the scalars)."""
        stamp  # noqa: B018
        scal = prepare(table, carrier, hyp)
        run_task(table, keys, st, scal, 0, total, flags, clip, sr, signed, total, like)

    def _step_task(table, keys, st, scal, lo, hi, flags, clip, sr, signed, total, like):
        """:func:`run_task` releasing the GIL: the tasks of one step run at once."""
        stamp  # noqa: B018
        run_task(table, keys, st, scal, lo, hi, flags, clip, sr, signed, total, like)

    return dict(span=_span, block8=_block8, span8=_span8, run_task=_run_task,
                step_serial=_step_serial, step_task=_step_task)


# (name, options, which span the template calls): the run_task, step_serial
# and step_task templates are built twice, for elementwise and 8-bit state.
# Those without a span are globals of the ones built after them (span8 calls
# block8).
_BUILD = (("span", {}, None), ("block8", {}, None), ("span8", {}, None),
          ("run_task", {}, "span"), ("step_serial", {}, "span"),
          ("step_task", dict(nogil=True), "span"),
          ("run_task8", {}, "span8"), ("step_serial8", {}, "span8"),
          ("step_task8", dict(nogil=True), "span8"))

Kernels = namedtuple("Kernels", [name for name, _, _ in _BUILD] + ["prepare_step"])
Kernels.__doc__ = "The compiled compressed-format CPU kernels of one rule."


def _build(function, namespace, name, rule, options, variant):
    # The build in the name ("8": the 8-bit span; ".sr": stochastic state):
    # Numba's cache keys a function by its name and signature, not by the
    # globals (span, STOCHASTIC_STATE) it was compiled with.
    suffix = ("8" if name.endswith("8") else "") + variant
    return _cpu._instantiate(function, namespace, rule, suffix, **options)


@functools.lru_cache(maxsize=None)
def kernels(rule, stochastic_state=False):
    """The compressed-format CPU kernels of ``rule``, built on first use;
    with ``stochastic_state``, those that round the state stochastically.

    The choice is a constant of the build, not an argument: a run-time
    branch on it inside the loops (even one LLVM could hoist) cost the
    bfloat16-state step 4x at 1e6 (0.24x of full state instead of 1.0x)."""
    base = _cpu.kernels(rule)
    common = dict(globals(), scalars_into=rule.scalars_into,
                  loop_scalars=rule.loop_scalars, element=rule.element,
                  prepare=base.prepare, STOCHASTIC_STATE=bool(stochastic_state))
    variant = ".sr" if stochastic_state else ""
    templates = _templates(rule.stamp() + (variant,))
    built = {}
    spaces = {}
    for name, options, span in _BUILD:
        if span is None:
            built[name] = common[name] = _build(templates[name], common, name, rule, options,
                                                variant)
            continue
        if span not in spaces:
            spaces[span] = dict(common, span=built[span])
        namespace = spaces[span]
        plain = name.rstrip("8")
        built[name] = namespace[plain] = _build(templates[plain], namespace, name, rule,
                                                options, variant)
    return Kernels(**built, prepare_step=base.prepare_step)
