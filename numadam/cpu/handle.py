"""An optimizer handle for ``@njit`` code: :meth:`numadam.Optimizer.jit`.

``h = opt.jit()`` is passed into your own ``@njit`` functions, where
``h.step()`` is one ``opt.step()`` reading the owned gradients ``opt.grads``:
the same compiled kernels (:func:`numadam.cpu.kernels.kernels`) on the same
bucket tables (step counts, live flags) and state arrays, run serially on the
calling thread. An update is elementwise, so the bits are those of
``opt.step()``, which may cut a big bucket into tasks on several threads.

What the handle shares with the optimizer
-----------------------------------------
- The tables and state arrays themselves: steps taken either way continue
  each other exactly, and ``opt.state_dict()``, ``opt.save()`` and
  ``opt.state`` see compiled steps at once.
- The hyperparameters, through one float64 array per optimizer (a row per
  group, the kernels' ``hyp`` order) and a bool array of its flags. A value
  set inside ``@njit`` (``h.set_lr``, ``h.set_hyper``) is written to
  ``opt.param_groups[g]`` the next time Python reads ``opt.param_groups``
  (every method of the optimizer reads it) and wins over a Python edit of
  the same entry made in between. A Python edit of ``param_groups`` reaches
  the handle each time the handle is passed from Python into an ``@njit``
  function: the call validates the groups as ``opt.step()`` does (a bad edit
  raises there) and pushes them. A compiled call already running does not
  see edits made meanwhile.
- A control array: an epoch, which ``load_state_dict`` (it replaces the
  state arrays) and ``add_param_group`` advance, so that an older handle
  raises instead of stepping memory the optimizer no longer uses; and a busy
  word, claimed with an atomic compare-and-swap by ``h.step()`` and, once a
  handle exists, by every method of the optimizer that takes its lock.
  Python methods wait for a compiled step to finish, and a compiled step
  waits for a Python one; one that holds the GIL (plain ``@njit``) lets it
  go while it waits, since the Python holder may need it. One inside a
  Python step on its own thread (its closure) raises at once.

Gradient clipping: with ``max_grad_norm`` or ``clip_value`` set, ``h.step()``
clips as ``opt.step()`` does (the clamp, the exact global norm of every
clamped gradient, the scale), bit for bit, and writes the norm where
``opt.last_grad_norm`` reads it. The compiled step is specialised on whether
the optimizer clips: values changed in Python are followed, switching
clipping on or off makes older handles raise.

Memory: the handle holds the optimizer, and the arrays a compiled function
receives keep the tables, state, owned gradients and parameters alive, so
no step writes to freed memory even after ``del opt``.
"""

import math
import os
import threading
import time
import zlib

import numpy as np
from numba import njit, types
from llvmlite import ir
from numba.core import cgutils
from numba.core.typing.typeof import Purpose
from numba.extending import (NativeValue, intrinsic, make_attribute_wrapper, models,
                             overload_method, register_model, typeof_impl, unbox)
from numba.np.unsafe.ndarray import to_fixed_tuple  # noqa: F401 (the generated steps use it)

from numadam.core.jitcache import CACHE
from numadam.cpu.kernels import PTR_G, _instantiate, kernels, nonfinite_task
from numadam.cpu.norm import NBINS, NONFINITE as _BIN_NONFINITE, _square_bins_span, bins_to_sum

__all__ = ["Handle", "make_handle"]

# Words of the control array: the epoch, the busy word, why the epoch last
# moved (one of the reasons below), the steps compiled code skipped
# (check_finite="skip"; opt.skipped_steps adds them), and the thread
# identifier of a Python thread holding the busy word (0 otherwise).
EPOCH, BUSY, REASON, SKIPPED, OWNER = range(5)
LOADED, ADDED = 1, 2

# How a float of ``hyp`` is validated (as numadam.functional does).
_NONNEG, _REAL, _UNIT = range(3)
_KIND_WORDS = {_NONNEG: "a finite number >= 0", _REAL: "a finite number",
               _UNIT: "in [0, 1)"}

_JIT = dict(error_model="numpy")


# ------------------------------------------------------------- exceptions

class _Formatted:
    """An exception raised inside ``@njit`` with run-time values: Numba
    passes them as arguments; the message joins the strings and the
    ``repr`` of the values."""

    def __str__(self):
        return "".join(a if isinstance(a, str) else repr(a) for a in self.args)


class HandleValueError(_Formatted, ValueError):
    """A ``ValueError`` raised by a handle inside ``@njit`` code."""


class HandleIndexError(_Formatted, IndexError):
    """An ``IndexError`` raised by a handle inside ``@njit`` code."""


class HandleFloatingPointError(_Formatted, FloatingPointError):
    """``check_finite="raise"`` inside ``@njit`` code."""


_NONFINITE = ("the gradient of parameter ", " holds NaN or Inf; no parameter or state was "
              "changed (check_finite='raise')")
STALE_LOADED = ("numadam: this handle was made before opt.load_state_dict(...), which "
                "replaced the state it points at; call opt.jit() again")
STALE_ADDED = ("numadam: this handle was made before opt.add_param_group(...); it would "
               "not step the new group; call opt.jit() again")
STALE_CLIPPING = ("numadam: this handle was made before clipping was switched on or off "
                  "(opt.max_grad_norm / opt.clip_value set to or from None); call opt.jit() "
                  "again")
REENTERED = (
    "numadam: h.step() was called inside a step (or state_dict(), save() ...) of the same "
    "optimizer on this thread, from the closure of opt.step() say; the closure only "
    "computes the loss and gradients of the step that called it")


# ---------------------------------------------------------- atomic claim

def _word_pointer(context, builder, signature, args):
    """The address of ``array[index]``, the first two arguments of an intrinsic."""
    arraytype = signature.args[0]
    ary = context.make_array(arraytype)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, arraytype, ary, [args[1]])


@intrinsic
def _cas(typingctx, array, index, expected, new):
    """Atomically: if ``array[index] == expected``, store ``new``; return
    whether it did (sequentially consistent: a full barrier either way)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        pointer = _word_pointer(context, builder, signature, args)
        pair = builder.cmpxchg(pointer, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(array, types.intp, types.int64, types.int64), codegen


@njit(cache=CACHE, nogil=True, **_JIT)
def try_claim(control):
    """Claim the busy word; whether it was free (called from Python too)."""
    return _cas(control, BUSY, 0, 1)


@intrinsic
def _store_release(typingctx, array, index, value):
    """``array[index] = value`` as an atomic store with release ordering:
    every write before it is visible to the thread that next claims the
    word. A plain store on x86; a compare-and-swap there would wait for the
    step's writes to drain (measured: 60 ns of a 10-element step)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        pointer = _word_pointer(context, builder, signature, args)
        builder.store_atomic(args[2], pointer, "release", 8)
        return context.get_dummy_value()

    return types.none(array, types.intp, types.int64), codegen


@njit(cache=CACHE, nogil=True, inline="always", **_JIT)
def _release_inline(control):
    """:func:`release`, inlined into the compiled step."""
    _store_release(control, BUSY, 0)


@njit(cache=CACHE, nogil=True, **_JIT)
def release(control):
    """Free the busy word (claimed by this thread)."""
    _store_release(control, BUSY, 0)


@intrinsic
def _holds_gil(typingctx):
    """Whether the calling thread holds the GIL (``PyGILState_Check``)."""
    def codegen(context, builder, signature, args):
        check = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "PyGILState_Check")
        return builder.icmp_signed("!=", builder.call(check, []), ir.Constant(ir.IntType(32), 0))

    return types.boolean(), codegen


@intrinsic
def _thread_ident(typingctx):
    """``threading.get_ident()`` of the calling thread, as int64 bits
    (``PyThread_get_thread_ident``; needs no GIL)."""
    def codegen(context, builder, signature, args):
        ident = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "PyThread_get_thread_ident")
        return builder.call(ident, [])

    return types.int64(), codegen


def owner_word(ident):
    """``threading.get_ident()`` as the int64 that :func:`_thread_ident` gives."""
    return ident - (1 << 64) if ident >= 1 << 63 else ident


@intrinsic
def _save_thread(typingctx):
    """``PyEval_SaveThread()``: let the GIL go; returns the thread state."""
    def codegen(context, builder, signature, args):
        save = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(cgutils.voidptr_t, []), "PyEval_SaveThread")
        return builder.call(save, [])

    return types.voidptr(), codegen


@intrinsic
def _restore_thread(typingctx, state):
    """``PyEval_RestoreThread(state)``: take the GIL back."""
    if state != types.voidptr:
        return None

    def codegen(context, builder, signature, args):
        restore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t]),
            "PyEval_RestoreThread")
        builder.call(restore, [args[0]])
        return context.get_dummy_value()

    return types.none(types.voidptr), codegen


@njit(cache=CACHE, nogil=True, **_JIT)
def _wait_for(control):
    """Claim a busy word that another thread holds: wait for it, except on
    the thread that holds it (a closure of its step). Compiled code that
    holds the GIL (plain ``@njit``) lets it go while it waits, as a C
    extension's blocking call does: the holder may be a Python method that
    needs the GIL to finish (a checkpoint thread's ``state_dict()`` while the
    loop is in an ``objmode`` block, say). The step reads no Python object,
    and its arrays are held by the references its caller took."""
    if control[OWNER] == _thread_ident():
        raise RuntimeError(REENTERED)
    if _holds_gil():
        saved = _save_thread()
        while not _cas(control, BUSY, 0, 1):
            pass
        _restore_thread(saved)
    else:
        while not _cas(control, BUSY, 0, 1):
            pass


@njit(cache=CACHE, nogil=True, inline="always", **_JIT)
def _enter_step(control, epoch):
    """Claim the busy word, then check the epoch under the claim (a
    ``load_state_dict`` in another thread holds the claim while it works)."""
    if not _cas(control, BUSY, 0, 1):
        _wait_for(control)
    if control[EPOCH] != epoch:
        reason = control[REASON]
        _store_release(control, BUSY, 0)
        if reason == LOADED:
            raise RuntimeError(STALE_LOADED)
        raise RuntimeError(STALE_ADDED)


@intrinsic
def _borrowed(typingctx, array):
    """``array`` without its reference: the same data, shape and strides,
    no meminfo. The compiled step reads every array of the handle this way,
    valid while the handle (its argument, which holds them) lives: the
    atomic reference counts of nine arrays cost a 10-element step more than
    its update (0.9 against 0.2 us)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, value=args[0])
        ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
        ary.parent = cgutils.get_null_value(ary.parent.type)
        return ary._getvalue()

    return array(array), codegen


@njit(cache=CACHE, nogil=True, **_JIT)
def _point_at_owned(table, owned):
    """Point ``table`` at the owned gradients (``opt.step()`` does the same
    when the previous step took ``step(grads)``)."""
    for k in range(table.shape[0]):
        table[k, PTR_G] = owned[k]


@njit(cache=CACHE, nogil=True, **_JIT)
def _first_nonfinite(first, table, state, like, indices, clip):
    """``first`` if it is a parameter's index, else the global index of the
    bucket's first parameter whose gradient, read under ``clip``, holds NaN
    or Inf, or -1."""
    if first >= 0:
        return first
    row = nonfinite_task(table, like, 0, state.shape[1], clip)
    return indices[row] if row < table.shape[0] else -1


# Words of the clipping array: max_grad_norm (NaN: none), clip_value (inf:
# none), the norm of the last clipped step, and whether there is one.
CLIP_NORM, CLIP_VALUE, LAST_NORM, HAS_LAST = range(4)
CLIP_EPS = 1e-6     # as numadam.core.optimizer: torch.nn.utils.clip_grad_norm_'s


@njit(cache=CACHE, nogil=True, inline="always", **_JIT)
def _clip_of(like, lo, hi, scale):
    """``(lo, hi, scale)`` rounded to ``like``'s dtype, as the Python step's
    ``dtype.type(x)`` rounds them (beyond the float32 range: inf)."""
    a = np.empty(3, like.dtype)
    a[0] = lo
    a[1] = hi
    a[2] = scale
    return (a[0], a[1], a[2])


@njit(cache=CACHE, nogil=True, **_JIT)
def _add_square_bins(bins, table, state, like, clip):
    """Add the exact bins of the squares of a bucket's gradients read under
    ``clip`` (the Python step's norm pass, on the calling thread)."""
    _square_bins_span(table, like, 0, state.shape[1], bins, clip, True)


@njit(cache=CACHE, nogil=True, **_JIT)
def _clip_scale(cfg, bins):
    """The norm of ``bins`` recorded in ``cfg`` (``opt.last_grad_norm``),
    and the scale of the gradients: ``c / (norm + 1e-6)`` where that is
    below 1, else 1 (a NaN norm too), as ``opt.step()`` computes it."""
    norm = math.sqrt(bins_to_sum(bins))
    cfg[LAST_NORM] = norm
    cfg[HAS_LAST] = 1.0
    coef = cfg[CLIP_NORM] / (norm + CLIP_EPS)
    return coef if coef < 1.0 else 1.0


# ------------------------------------------------------ the bucket step
#
# Compiled per rule from a template, as numadam.cpu.kernels builds its
# kernels (the rule's cache stamp in the closure, its kernels as globals).
# Every step of every bucket a handle takes goes through this one function.

def _templates(stamp):
    def _bucket_step(table, state, hyp, flags, clip):
        """One step of one bucket on the calling thread: the kernel
        ``opt.step()`` calls for a bucket below ``config.serial_below``
        (``clip``: None, or the gradients' ``(lo, hi, scale)``)."""
        stamp  # noqa: B018 (the cache key)
        step_serial(table, state, hyp, flags, clip)

    return dict(bucket_step=_bucket_step)


class _RuleParts:
    """What the overloads of one rule need: its compiled bucket step and the
    hyperparameters by name."""

    def __init__(self, rule):
        self.rule = rule
        namespace = dict(step_serial=kernels(rule).step_serial)
        self.bucket_step = _instantiate(_templates(rule.stamp())["bucket_step"],
                                        namespace, rule)
        values, args = rule.validate(rule.defaults())
        self.nhyp, self.nflags = len(args.hyp), len(args.flags)
        # name -> ("real", index into hyp, kind) | ("flag", index into flags) | ("init",)
        # ``hyp_names``: (group key, component or None) of each float of hyp
        self._steps = {}
        self.names, self.hyp_names, self.flag_names = {}, [], []
        for h in rule.hyper:
            if h.kind == "flag":
                self.names[h.name] = ("flag", len(self.flag_names), None)
                self.flag_names.append(h.name)
            elif h.kind == "betas":
                for i, name in enumerate(("beta1", "beta2")):
                    self.names[name] = ("real", len(self.hyp_names), _UNIT)
                    self.hyp_names.append((h.name, i))
            elif h.kind == "init":
                self.names[h.name] = ("init", None, None)
            else:
                self.names[h.name] = ("real", len(self.hyp_names),
                                      _REAL if h.kind == "real" else _NONNEG)
                self.hyp_names.append((h.name, None))
        # the floats of hyp whose being zero decides whether a state row exists
        self.when = {self.names[s.when][1] for s in rule.state
                     if s.when is not None and self.names[s.when][0] == "real"}
        self.code = _code_stamp(rule)


    def step(self, check, nbuckets, clipping):
        """The compiled ``h.step()`` of this rule for handles of ``nbuckets``
        buckets, ``check_finite=check`` and gradient clipping or not.

        Written out per bucket count: every array is read with
        :func:`_borrowed` straight from ``h``, so the step takes no
        reference (a loop over the buckets with ``literal_unroll`` takes one
        per array and bucket). With clipping it does what ``opt.step()``
        does (:meth:`numadam.Optimizer._clips`): the clamp of each bucket,
        the exact norm of every clamped gradient (also the NaN/Inf check),
        the guard, then the update reading the clamped, scaled gradients.
        """
        key = (check, nbuckets, clipping)
        if key not in self._steps:
            lines = ["def step(h):",
                     "    control = _borrowed(h.data[0])",
                     "    _enter_step(control, h.data[1])"]
            for k in range(nbuckets):
                lines += [f"    t{k} = _borrowed(h.data[5][{k}][0])",
                          f"    s{k} = _borrowed(h.data[5][{k}][1])",
                          f"    like{k} = _borrowed(h.data[5][{k}][4])",
                          f"    _point_at_owned(t{k}, _borrowed(h.data[5][{k}][2]))"]
            if clipping:
                lines += ["    cfg = _borrowed(h.data[6])",
                          "    v = cfg[CLIP_VALUE]"]
                lines += [f"    clip{k} = _clip_of(like{k}, -v, v, 1.0)"
                          for k in range(nbuckets)]
                lines += ["    guard = True",
                          "    scale = 1.0",
                          "    if cfg[CLIP_NORM] == cfg[CLIP_NORM]:",
                          "        bins = np.zeros(NBINS, np.int64)"]
                lines += [f"        _add_square_bins(bins, t{k}, s{k}, like{k}, clip{k})"
                          for k in range(nbuckets)]
                lines += ["        scale = _clip_scale(cfg, bins)",
                          # the norm's pass was the NaN/Inf check
                          "        guard = bins[BIN_NONFINITE] > 0"]
            else:
                lines += [f"    clip{k} = None" for k in range(nbuckets)]
            if check is not None:
                lines.append("    bad = -1")
                if clipping:
                    lines.append("    if guard:")
                indent = "        " if clipping else "    "
                lines += [f"{indent}bad = _first_nonfinite(bad, t{k}, s{k}, like{k}, "
                          f"_borrowed(h.data[5][{k}][5]), clip{k})"
                          for k in range(nbuckets)]
                lines += ["    if bad >= 0:"]
                if check == "skip":
                    lines += ["        control[SKIPPED] += 1",
                              "        _release_inline(control)",
                              "        return"]
                else:
                    lines += ["        _release_inline(control)",
                              "        raise HandleFloatingPointError(NONFINITE[0], bad, "
                              "NONFINITE[1])"]
            if clipping:
                lines += [f"    clip{k} = _clip_of(like{k}, -v, v, scale)"
                          for k in range(nbuckets)]
            lines += ["    hyper = _borrowed(h.data[2])",
                      "    flags = _borrowed(h.data[3])"]
            lines += [f"    bucket_step(t{k}, s{k}, to_fixed_tuple(hyper[h.data[5][{k}][3]], "
                      f"NHYP), to_fixed_tuple(flags[h.data[5][{k}][3]], NFLAGS), clip{k})"
                      for k in range(nbuckets)]
            lines.append("    _release_inline(control)")
            namespace = dict(globals(), bucket_step=self.bucket_step, NHYP=self.nhyp,
                             NFLAGS=self.nflags, NONFINITE=_NONFINITE,
                             BIN_NONFINITE=_BIN_NONFINITE)
            exec("\n".join(lines), namespace)  # noqa: S102 (source built above)
            self._steps[key] = njit(nogil=True, **_JIT)(namespace["step"])
        return self._steps[key]


_PARTS = {}


def _code_stamp(rule):
    """A digest of the rule's cache stamp and the size and modification time
    of every module of numadam.core and numadam.cpu, for the name of the
    handle's Numba type. A user's ``@njit(cache=True)`` function has the
    compiled step inlined and is keyed by its own source and its argument
    types only: with this in the type, an upgraded or edited numadam (a
    changed table layout, say) makes it compile afresh instead of running
    the old step on the new layout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stats = [rule.stamp()]
    for folder in ("core", "cpu"):
        directory = os.path.join(package, folder)
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                info = os.stat(os.path.join(directory, name))
                stats.append((folder, name, info.st_size, info.st_mtime_ns))
    return f"{zlib.crc32(repr(stats).encode()):08x}"


def _parts(rule):
    try:
        return _PARTS[rule.name]
    except KeyError:
        parts = _PARTS[rule.name] = _RuleParts(rule)
        return parts


# ------------------------------------------------- the Python-side handle

class Handle:
    """An optimizer as ``@njit`` code takes it; made by :meth:`Optimizer.jit`.

    Inside ``@njit`` functions:

    ``h.step()``
        One ``opt.step()`` reading ``opt.grads``.
    ``h.get_lr(group)``, ``h.set_lr(group, value)``
        The learning rate of group ``group``.
    ``h.get_hyper(group, "name")``, ``h.set_hyper(group, "name", value)``
        Any real hyperparameter of the rule by its literal name (Adam's
        betas as ``"beta1"`` and ``"beta2"``); ``get_hyper`` also reads the
        flags (``"amsgrad"``...), which only Python can change.

    The handle cannot be copied or pickled (it points at the optimizer's
    memory) and is not usable from Python itself: call ``opt.step()`` there.
    See :mod:`numadam.cpu.handle` for what is shared and when.
    """

    __slots__ = ("_opt", "_shared", "_data", "_numba_type")

    def __init__(self, opt, shared, data, numba_type):
        self._opt = opt
        self._shared = shared
        self._data = data
        self._numba_type = numba_type

    def _enter(self):
        """What each ``@njit`` call receives: called by the unboxing, before
        the call. Refuses a stale handle (or ``check_finite`` changed since),
        read-only parameters; syncs Python's edits."""
        shared = self._shared
        if shared.control[EPOCH] != self._data[1]:
            raise RuntimeError(STALE_LOADED if shared.control[REASON] == LOADED
                               else STALE_ADDED)
        opt = self._opt
        if opt._clipping != self._numba_type.clipping:
            # The compiled step is specialised on clipping or not.
            raise RuntimeError(STALE_CLIPPING)
        made = self._numba_type.check_finite
        if opt.check_finite != made:
            # compiled into the step as part of the handle's type
            raise RuntimeError(
                f"numadam: opt.check_finite is {opt.check_finite!r}, but this handle was "
                f"made with {made!r}; call opt.jit() again")
        shared.push(opt)
        # As opt.step() refuses (the compiled step would write regardless).
        for param in opt._host_params:
            if not param.flags.writeable:
                raise ValueError(f"parameter {opt._index_of[id(param)]} has become "
                                 "read-only; parameters are updated in place")
        return self._data

    def __repr__(self):
        return f"<numadam handle of {type(self._opt).__name__}, {len(self._data[5])} buckets>"

    def __reduce_ex__(self, protocol):
        raise TypeError("a numadam handle points at its optimizer's memory and cannot be "
                        "copied or pickled; copy or pickle the optimizer and call jit() "
                        "on the copy")

    def __copy__(self):
        self.__reduce_ex__(0)

    def __deepcopy__(self, memo):
        self.__reduce_ex__(0)


class _ClaimingLock:
    """The optimizer's reentrant lock, plus the busy word that compiled
    steps claim: once a handle exists, whatever holds the lock (a step,
    ``state_dict``, ``load_state_dict``, ``save`` ...) holds the word too,
    taken at the outermost acquisition."""

    def __init__(self, lock, control):
        self._lock = lock
        self._control = control
        self._depth = 0

    def acquire(self, blocking=True, timeout=-1):
        self._lock.acquire()
        if self._depth == 0:
            control = self._control
            while not try_claim(control):
                time.sleep(0)   # a compiled step holds it: let its thread finish
            control[OWNER] = owner_word(threading.get_ident())
        self._depth += 1
        return True

    def release(self):
        self._depth -= 1
        if self._depth == 0:
            self._control[OWNER] = 0
            release(self._control)
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class Shared:
    """``opt._jit``: what an optimizer shares with its handles."""

    def __init__(self, opt):
        self.control = np.zeros(5, np.int64)
        self.parts = _parts(opt.rule)
        self.hyper = None       # float64 (groups, len(hyp)); None until made
        self.flags = None       # bool (groups, len(flags))
        self.layout = None      # int8 (groups, len(hyp), 2): may the float become 0 / non-zero
        self.pushed = None      # hyper.tobytes() when last pushed or pulled
        # max_grad_norm, clip_value, the last norm and whether there is one
        # (CLIP_NORM ...): opt.last_grad_norm reads it once a handle exists.
        last = opt._last_grad_norm
        self.clip = np.array([math.nan, math.inf, math.nan if last is None else last,
                              0.0 if last is None else 1.0])

    def last_grad_norm(self):
        """The norm of the last clipped step, compiled or not (None: none yet)."""
        return float(self.clip[LAST_NORM]) if self.clip[HAS_LAST] else None

    def set_last_grad_norm(self, value):
        self.clip[LAST_NORM] = math.nan if value is None else value
        self.clip[HAS_LAST] = 0.0 if value is None else 1.0

    def skipped(self):
        """Steps skipped inside compiled code so far."""
        return int(self.control[SKIPPED])

    def invalidate_loaded(self):
        """Make every handle so far stale: ``load_state_dict`` replaces the
        state arrays (called under the optimizer's lock)."""
        self.control[REASON] = LOADED
        self.control[EPOCH] += 1

    def invalidate_added(self):
        """Make every handle so far stale: ``add_param_group`` added a group,
        which the next handle's arrays get a row for."""
        self.control[REASON] = ADDED
        self.control[EPOCH] += 1
        self.hyper = None

    def pull(self, groups):
        """Write values set inside ``@njit`` into ``groups`` (the
        optimizer's ``param_groups``); validated at its next use of them."""
        if self.hyper is None:
            return
        now = self.hyper.tobytes()      # one snapshot: compiled code may be setting more
        if now == self.pushed:
            return
        shape = self.hyper.shape
        hyper = np.frombuffer(now, np.float64).reshape(shape)
        # Bits, not values: -0.0 set inside @njit must reach the group too.
        changed = (np.frombuffer(now, np.int64).reshape(shape)
                   != np.frombuffer(self.pushed, np.int64).reshape(shape))
        names = self.parts.hyp_names
        for g, group in enumerate(groups):
            for j in np.flatnonzero(changed[g]):
                key, component = names[j]
                value = float(hyper[g, j])
                if component is None:
                    group[key] = value
                else:
                    pair = list(group[key])
                    pair[component] = value
                    group[key] = tuple(pair)
        self.pushed = now

    def push(self, opt):
        """Validate ``opt``'s groups (Python's edits) and write them into the
        arrays the handles read."""
        with opt._lock:
            args = opt._kernel_args()     # reads param_groups: pulls first
            groups = opt._param_groups
            parts = self.parts
            if self.hyper is None:
                self.hyper = np.zeros((len(groups), parts.nhyp))
                self.flags = np.zeros((len(groups), parts.nflags), np.bool_)
                self.layout = np.ones((len(groups), parts.nhyp, 2), np.int8)
            for g, a in enumerate(args):
                self.hyper[g] = a.hyp
                self.flags[g] = a.flags
                for j in parts.when:
                    self.layout[g, j] = [self._layout_ok(opt, g, a, j, x) for x in (0.0, 1.0)]
            self.pushed = self.hyper.tobytes()
            c, v = opt._max_grad_norm, opt._clip_value
            self.clip[CLIP_NORM] = math.nan if c is None else c
            self.clip[CLIP_VALUE] = math.inf if v is None else v

    def _layout_ok(self, opt, g, args, j, x):
        """Whether group ``g``'s state rows allow float ``j`` of hyp at
        ``x`` (zero or not), as :meth:`BucketBase.check_rows` decides."""
        key, _ = self.parts.hyp_names[j]
        rows = opt.rule.state_names({**args.values, key: x})
        return all(b.state is None or rows == b.rows[:len(rows)]
                   for b in opt._buckets if b.group_index == g)


def make_handle(opt):
    """:meth:`Optimizer.jit`: a handle of ``opt`` (see :class:`Handle`)."""
    rule = opt.rule
    if rule.check is not None and rule.name not in _CROSS_CHECKS:
        raise NotImplementedError(
            f"opt.jit(): rule {rule.name!r} has a cross-field check with no compiled twin "
            "in numadam.cpu.handle")
    with opt._lock:
        if any(bucket.on_device for bucket in opt._buckets):
            raise TypeError("opt.jit() steps NumPy parameters on the host; this optimizer "
                            "has device (CUDA) parameters: call opt.step() instead")
        if not opt._buckets:
            raise ValueError("opt.jit() needs an optimizer with parameters")
        if not opt._storage.plain or any(b.store_dtype != b.dtype for b in opt._buckets):
            raise NotImplementedError(
                "opt.jit() steps full-precision state of float32 or float64 parameters; "
                f"this optimizer has state_format={opt.state_format!r} or bfloat16 "
                "parameters: call opt.step() instead")
        opt.grads                                   # noqa: B018 (makes the owned buffers)
        args = opt._kernel_args()
        # The state exists from here on (zeros, not live: the first step
        # still starts it as torch does), so that the handle can point at it.
        opt._make_ready(opt._buckets, args)
        shared = opt._jit
        if shared is None:
            shared = opt._jit = Shared(opt)
            lock = _ClaimingLock(opt._lock, shared.control)
            # Swapped while this thread holds the lock, so no other thread is
            # inside; this thread's `with` leaves through the bare lock, so the
            # wrapper starts unclaimed at depth 0.
            opt._lock = lock
            opt._acquire, opt._release = lock.acquire, lock.release
        shared.push(opt)
        buckets = tuple(
            (np.asarray(_Owner(bucket)), bucket.state, bucket.owned_grad_addresses,
             bucket.group_index, bucket.like, np.array(bucket.indices, np.int64))
            for bucket in opt._buckets)
        data = (shared.control, int(shared.control[EPOCH]), shared.hyper, shared.flags,
                shared.layout, buckets, shared.clip)
        from numba import typeof
        numba_type = HandleType(rule.name, opt.check_finite, opt._clipping, shared.parts.code,
                                typeof(data))
        return Handle(opt, shared, data, numba_type)


class _Owner:
    """A bucket's table as an array whose base is this object, which holds
    the bucket (its parameters and owned gradient buffer): the table the
    kernels read keeps alive every array it holds addresses of."""

    def __init__(self, bucket):
        self.bucket = bucket
        self.__array_interface__ = bucket.table.__array_interface__


# ------------------------------------------------------------ Numba type

class HandleType(types.Type):
    """The Numba type of a :class:`Handle`: its rule, its ``check_finite``,
    whether it clips,
    the digest of numadam's code (:func:`_code_stamp`) and the type of its
    data tuple."""

    def __init__(self, rule_name, check_finite, clipping, code, data_type):
        self.rule_name = rule_name
        self.check_finite = check_finite
        self.clipping = clipping
        self.data_type = data_type
        super().__init__(name=f"numadam.Handle({rule_name}, check_finite={check_finite}, "
                              f"clipping={clipping}, code={code}, {data_type})")


GLOBAL_HANDLE = (
    "numadam: a handle cannot be a global or closure variable of @njit code, which "
    "Numba would freeze into the compiled function (it would outlive the optimizer "
    "and miss its edits); pass it as an argument: f(h)")


@typeof_impl.register(Handle)
def _typeof_handle(value, context):
    # Numba types a global or closure variable as a constant: refused here,
    # with numadam's message first (a TypeError passes through Numba's
    # typing unchanged; its own lowering error names no handle).
    if context.purpose == Purpose.constant:
        raise TypeError(GLOBAL_HANDLE)
    return value._numba_type


@register_model(HandleType)
class _HandleModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("data", fe_type.data_type)])


make_attribute_wrapper(HandleType, "data", "data")


@unbox(HandleType)
def _unbox_handle(typ, obj, c):
    """Call ``obj._enter()`` (stale check, sync), unbox the tuple it returns."""
    handle = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    failed = cgutils.alloca_once_value(c.builder, cgutils.true_bit)
    data = c.pyapi.call_method(obj, "_enter", ())
    with c.builder.if_then(cgutils.is_not_null(c.builder, data)):
        native = c.unbox(typ.data_type, data)
        c.pyapi.decref(data)
        handle.data = native.value
        c.builder.store(native.is_error, failed)
    return NativeValue(handle._getvalue(), is_error=c.builder.load(failed))


# ---------------------------------------------------------- the methods

def _where(method):
    return f"numadam: h.{method}"


@overload_method(HandleType, "step", inline="always", jit_options=_JIT)
def _handle_step(h):
    step = _PARTS[h.rule_name].step(h.check_finite, len(h.data_type[5]), h.clipping)

    def impl(h):
        step(h)

    return impl


def _check_group(group, method):
    if not isinstance(group, types.Integer):
        raise TypeError(f"{_where(method)}: group must be an integer, got {group}")


def _check_name(parts, name, method):
    """The entry of ``parts.names`` for literal ``name``, or a TypeError."""
    if not isinstance(name, types.StringLiteral):
        raise TypeError(f"{_where(method)}: the hyperparameter name must be a literal "
                        f"string (h.{method}(0, \"lr\", ...)), got {name}")
    entry = parts.names.get(name.literal_value)
    if entry is None:
        raise TypeError(f"{_where(method)}: {parts.rule.name} has no hyperparameter "
                        f"{name.literal_value!r}; it has {', '.join(parts.names)}")
    if entry[0] == "init":
        raise TypeError(f"{_where(method)}: {name.literal_value} only initialises the "
                        "state when it is created; it has no value to read or set in a step")
    return entry


_GETTERS = {}


def _getter(where, j):
    """A compiled ``(array, group) -> array[group, j]`` that names ``where``
    in its ``IndexError``. The message is a constant of each function: one
    passed as an argument loses its value on Numba 0.60."""
    key = (where, j)
    if key not in _GETTERS:
        def get(array, group):
            if group < 0 or group >= array.shape[0]:
                raise HandleIndexError(where, ": group ", group, " does not exist; the "
                                       "optimizer has ", array.shape[0], " groups")
            return array[group, j]

        _GETTERS[key] = njit(nogil=True, **_JIT)(get)
    return _GETTERS[key]


# The methods below are inlined into the caller and read the handle's arrays
# with _borrowed, as h.step() does: a call taking ``h`` would take and drop a
# reference to each of its arrays (a set_lr cost 0.3 us that way).

@overload_method(HandleType, "get_lr", inline="always", jit_options=_JIT)
def _handle_get_lr(h, group):
    _check_group(group, "get_lr")
    get = _getter(_where("get_lr"), _PARTS[h.rule_name].names["lr"][1])

    def impl(h, group):
        return get(_borrowed(h.data[2]), group)

    return impl


@overload_method(HandleType, "get_hyper", prefer_literal=True, inline="always",
                 jit_options=_JIT)
def _handle_get_hyper(h, group, name):
    _check_group(group, "get_hyper")
    parts = _PARTS[h.rule_name]
    kind, j, _ = _check_name(parts, name, "get_hyper")
    get = _getter(_where("get_hyper"), j)
    if kind == "flag":
        def impl(h, group, name):
            return get(_borrowed(h.data[3]), group)
    else:
        def impl(h, group, name):
            return get(_borrowed(h.data[2]), group)
    return impl


def _setter(parts, name, j, kind, method):
    """The compiled body of a set: validate ``value`` (its bounds, the state
    layout, the rule's cross-field check), then store it."""
    group_where = _where(method)
    where = f"{group_where}: {name}"
    low, high = {_NONNEG: (0.0, math.inf), _REAL: (-math.inf, math.inf),
                 _UNIT: (0.0, 1.0)}[kind]
    bound = f"{where} must be {_KIND_WORDS[kind]}, got "
    unit = kind == _UNIT
    layout_message = (
        f"{where} cannot switch between zero and non-zero inside @njit: that would change "
        "which state arrays the group has (set it from Python, where the optimizer "
        "checks the layout); got ")
    when = j in parts.when
    cross = _CROSS_CHECKS.get(parts.rule.name, _no_cross_check)

    def set_value(hyper, flags, layout, group, value):
        if group < 0 or group >= hyper.shape[0]:
            raise HandleIndexError(group_where, ": group ", group, " does not exist; the "
                                   "optimizer has ", hyper.shape[0], " groups")
        g = group
        x = np.float64(value)
        if not (x >= low and (x < high if unit else x <= high) and x - x == 0.0):
            raise HandleValueError(bound, x)
        if when and layout[g, j, 1 if x != 0.0 else 0] == 0:
            raise HandleValueError(layout_message, x)
        cross(hyper[g], flags[g], j, x)
        hyper[g, j] = x

    return njit(nogil=True, **_JIT)(set_value)


@overload_method(HandleType, "set_lr", inline="always", jit_options=_JIT)
def _handle_set_lr(h, group, value):
    _check_group(group, "set_lr")
    if not isinstance(value, (types.Integer, types.Float)) or isinstance(value, types.Boolean):
        raise TypeError(f"{_where('set_lr')}: the learning rate must be a real number, "
                        f"got {value}")
    parts = _PARTS[h.rule_name]
    set_value = _setter(parts, "lr", parts.names["lr"][1], parts.names["lr"][2], "set_lr")

    def impl(h, group, value):
        set_value(_borrowed(h.data[2]), _borrowed(h.data[3]), _borrowed(h.data[4]), group,
                  value)

    return impl


@overload_method(HandleType, "set_hyper", prefer_literal=True, inline="always",
                 jit_options=_JIT)
def _handle_set_hyper(h, group, name, value):
    _check_group(group, "set_hyper")
    parts = _PARTS[h.rule_name]
    kind, j, bounds = _check_name(parts, name, "set_hyper")
    if kind == "flag":
        raise TypeError(f"{_where('set_hyper')}: {name.literal_value} is a flag; flags "
                        "cannot change inside @njit (they select compiled code paths "
                        "and state arrays): set it in opt.param_groups from Python")
    if not isinstance(value, (types.Integer, types.Float)) or isinstance(value, types.Boolean):
        raise TypeError(f"{_where('set_hyper')}: {name.literal_value} must be a real "
                        f"number, got {value}")
    set_value = _setter(parts, name.literal_value, j, bounds, "set_hyper")

    def impl(h, group, name, value):
        set_value(_borrowed(h.data[2]), _borrowed(h.data[3]), _borrowed(h.data[4]), group,
                  value)

    return impl


# ------------------------------------------- compiled cross-field checks
#
# A rule's ``check`` reads a dict in Python; a value set inside @njit is
# checked by its compiled twin here: ``(hyp row, flags row, index being set,
# new value)``.

@njit(**_JIT)
def _no_cross_check(hyp, flags, j, x):
    pass


@njit(**_JIT)
def _sgd_cross_check(hyp, flags, j, x):
    # numadam.rules.sgd._check: hyp is (lr, momentum, dampening,
    # weight_decay), flags (nesterov, maximize).
    momentum = x if j == 1 else hyp[1]
    dampening = x if j == 2 else hyp[2]
    if flags[0] and (momentum <= 0 or dampening != 0):
        raise HandleValueError(
            "numadam: nesterov=True requires a momentum > 0 and zero dampening (as in "
            "torch), got momentum=", momentum, ", dampening=", dampening)


_CROSS_CHECKS = {"sgd": _sgd_cross_check}
