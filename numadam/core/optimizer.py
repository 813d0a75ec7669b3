"""The generic optimizer every rule's class is: groups, buckets, owned
gradients, state, state dicts, checkpoints, copies and the error contract.

A rule's class (``numadam.Adam``, ``numadam.SGD``, ...) sets ``rule`` to its
:class:`~numadam.core.rule.UpdateRule` and writes its torch-like constructor;
everything else is here and is the same for every rule.
"""

import copy
import dataclasses
import math
import numbers
import threading
from collections.abc import Mapping

import numpy as np

from numadam.core import copying as _copying
from numadam.core import state_dict as _state_dict
from numadam.core import validation as _validation
from numadam.core.groups import ParamList, Slot, Validated
from numadam.core.rule import KernelArgs
from numadam.core.state_view import StateView
from numadam import formats as _formats
from numadam.cpu.bucket import Bucket
from numadam.cpu.kernels import NCOLS, PTR_G, address, host_address
from numadam.cpu.norm import NBINS, NONFINITE, bins_to_sum

__all__ = ["Optimizer"]

_CHECK_FINITE = (None, "raise", "skip")
CLIP_EPS = 1e-6     # torch.nn.utils.clip_grad_norm_'s: max_norm / (total_norm + 1e-6)


class Optimizer:
    r"""The engine's optimizer; a rule's class sets ``rule`` and a constructor.

    Common keyword arguments of every rule's class:

    check_finite : {None, "raise", "skip"}, default None
        Guard against gradients holding NaN or Inf. ``"raise"`` raises
        ``FloatingPointError`` and ``"skip"`` skips the step (counted in
        ``skipped_steps``); either way no parameter or state changes. The
        guard reads every gradient once more: about 4 extra bytes per float32
        element on top of what an update moves.
    foreach, fused : bool or None, default None
        Accepted for torch compatibility and ignored: every step runs the one
        kernel, whose bits are those of torch's fused kernel (or, for rules
        torch has no fused kernel for, its single-tensor path).
        ``fused=True`` with ``foreach=True`` is a ``ValueError``, as in torch.
    capturable, differentiable : bool, default False
        Accepted for torch compatibility; ``True`` is a ``ValueError``:
        numadam has no CUDA-graph capture of its step and no autograd.
    max_grad_norm : float, optional
        Scale the gradients, all parameters together, to at most this
        Euclidean norm before the update (see Gradient clipping below).
        Also an attribute: ``opt.max_grad_norm = 2.0`` (or ``None``).
    clip_value : float, optional
        Clamp every gradient element to ``[-clip_value, clip_value]``
        before the update (and before the norm). Also an attribute.

    Gradient clipping. A step with ``clip_value = v`` and
    ``max_grad_norm = c`` updates with the gradients ``g`` transformed as::

        g    = np.clip(g, -v, v)        v rounded to the dtype; NaN stays NaN
        norm = sqrt(S),   S = sum over every element of every gradient (all
                              groups and dtypes) of float64(g_i)**2, each
                              square rounded to float64, the sum exact and
                              rounded once
        g    = g * dtype(c / (norm + 1e-6))    only where c / (norm + 1e-6) < 1

    bit for bit, as one pass of ``math.fsum`` over the float64 squares
    would give; parameters without a gradient this step do not count. The
    transform is fused into the update kernel (the gradient arrays are
    never written), and the norm costs one more read of the gradients,
    whose exact integer binning makes it independent of the thread count.
    ``opt.last_grad_norm`` is the norm of the last step's gradients (a
    float; ``None`` before a step with ``max_grad_norm``). A NaN or Inf
    element (after the clamp, which turns an Inf into ``+-v``) makes the
    norm NaN and leaves the gradients unscaled; with ``check_finite`` the
    norm's pass is also the NaN/Inf check (one read), and a step it skips
    or refuses records ``last_grad_norm = nan``. Both settings are
    carried by ``copy.deepcopy`` and pickles, with ``last_grad_norm``.
    Optimizers over CUDA arrays do not clip (``NotImplementedError``).

    ``copy.deepcopy(opt)`` is an independent optimizer over copies of the
    parameters and state; a pickle carries values (parameters, state, step
    counts, owned gradients) and continues bit for bit in any process.
    ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``, ``save``
    and ``add_param_group`` hold the optimizer's (reentrant) lock, so threads
    sharing one optimizer take turns.
    """

    rule = None         # the UpdateRule; set by each rule's class
    _forced = {}        # hyperparameters a loaded state dict cannot change (AdamW)
    _keys = ()          # the group entries compared at each step: hyperparameters, params

    _unchanged = None   # (group, raw) -> whether every entry is the validated object
    _jit = None         # see _empty; read by the skipped_steps setter before _empty sets it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.rule is not None:
            cls._keys = cls.rule.names + ("params",)
            cls._unchanged = staticmethod(_identity_test(cls._keys))
            # The entries a schedule's new float may replace without a full
            # validation (see _reals_changed), and an identity test of the rest.
            # Betas (OneCycleLR cycles beta1) count as one entry of two floats.
            simple, index = [], 0
            for i, (h, slot) in enumerate(zip(cls.rule.hyper, cls.rule.hyp_slots)):
                if slot >= 0 or h.kind == "betas":
                    simple.append((i, index, h.kind, h.name))
                index += {"betas": 2, "flag": 0, "init": 0}.get(h.kind, 1)
            cls._simple = tuple(simple)
            loose = {i for i, _, _, _ in simple}
            fixed = tuple((i, key) for i, key in enumerate(cls._keys) if i not in loose)
            cls._fixed_unchanged = staticmethod(_identity_test(
                [key for _, key in fixed], [i for i, _ in fixed]))

    def _init(self, params, given, check_finite, max_grad_norm=None, clip_value=None,
              state_format="full", stochastic_rounding=False, seed=0):
        """The constructor's work: ``given`` holds the constructor's
        hyperparameters by name."""
        defaults = self.rule.defaults(**given)
        self.rule.validate(defaults)
        storage = _formats.storage(state_format, stochastic_rounding, seed)
        if check_finite not in _CHECK_FINITE:
            raise ValueError(
                f"check_finite must be one of {_CHECK_FINITE}, got {check_finite!r}")
        max_grad_norm = _clip_setting("max_grad_norm", max_grad_norm)
        clip_value = _clip_setting("clip_value", clip_value)
        self._empty(defaults, check_finite, 0)
        self._storage = storage
        self._max_grad_norm, self._clip_value = max_grad_norm, clip_value
        self._clipping = max_grad_norm is not None or clip_value is not None
        for group in _validation.param_groups(params):
            self.add_param_group(group)

    def _empty(self, defaults, check_finite, skipped_steps):
        """The attributes of an optimizer without parameters."""
        # Reentrant: a closure that step() calls may call zero_grad(). The hot
        # paths call the bound methods: a `with` block costs about twice as
        # much (2,000 against 1,000 instructions on CPython 3.11, callgrind).
        self._lock = threading.RLock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._in_closure = False    # step() refuses to run inside its own closure
        self.defaults = defaults
        self.check_finite = check_finite
        self.skipped_steps = skipped_steps
        self._max_grad_norm = None  # see the max_grad_norm and clip_value properties
        self._clip_value = None
        self._clipping = False      # either is set: step() takes the clipping path
        self._last_grad_norm = None
        self.param_groups = []
        self._buckets = []          # every bucket of every group, in group order
        self._slots = []            # global parameter index -> Slot(bucket, row)
        self._index_of = {}         # id(array) -> global parameter index
        self._param_lists = []      # per group: the list its buckets were built from
        self._group_args = []       # per group: (raw hyperparameters, kernel args)
        self._last_group = -1       # index of the last group
        self._extents = []          # (memory, first byte, end byte, where) of every parameter
        self._host_params = []      # the parameters in host memory, for the read-only check
        # Per parameter, while every bucket is a host bucket: (global index,
        # shape, dtype, the table words of its bucket, the word of its
        # gradient's address); None once a device bucket exists.
        self._host_grads = []
        self._grads = None
        self._jit = None            # what opt.jit()'s handles share (numadam.cpu.handle)
        self._storage = _formats.Storage()  # state_format, stochastic rounding, seed

    # ---------------------------------------------------------- clipping
    @property
    def last_grad_norm(self):
        """The global norm of the last step's gradients with ``max_grad_norm``
        (``opt.step()`` or a compiled ``h.step()`` of :meth:`jit`), or None."""
        if self._jit is not None:
            return self._jit.last_grad_norm()
        return self._last_grad_norm

    @last_grad_norm.setter
    def last_grad_norm(self, value):
        self._last_grad_norm = value
        if self._jit is not None:
            self._jit.set_last_grad_norm(value)

    @property
    def max_grad_norm(self):
        """Clip the gradients to this global Euclidean norm (``None``: no
        clipping); see the class docstring. Setting it validates it: a
        finite real number > 0, or ``None``."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._set_clipping("max_grad_norm", value)

    @property
    def clip_value(self):
        """Clamp each gradient element to ``[-clip_value, clip_value]``
        (``None``: no clamp); see the class docstring. Setting it validates
        it: a finite real number > 0, or ``None``."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value):
        self._set_clipping("clip_value", value)

    def _set_clipping(self, name, value):
        value = _clip_setting(name, value)
        with self._lock:
            if value is not None and self._host_grads is None:
                raise NotImplementedError(_DEVICE_CLIPPING)
            if value is not None and any(_formats.is_bfloat16(b.dtype) for b in self._buckets):
                raise NotImplementedError(_BF16_CLIPPING)
            setattr(self, "_" + name, value)
            self._clipping = self._max_grad_norm is not None or self._clip_value is not None

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        """Add a group of parameters, with optional per-group hyperparameters.

        Raises
        ------
        TypeError
            ``param_group`` is not a dict with ``"params"``, or its params are
            an unordered set or not arrays.
        ValueError
            A parameter is already optimised, shares memory with another
            parameter, or a hyperparameter is invalid.
        """
        with self._lock:
            self._check_groups()
            if not isinstance(param_group, Mapping) or "params" not in param_group:
                raise TypeError("a parameter group must be a dict with a 'params' entry, "
                                f"got {param_group!r}")
            gi = len(self.param_groups)
            params = _validation.param_list(param_group["params"],
                                            f"param_groups[{gi}]['params']")
            infos, extents = self._check_params(params, gi)
            group = {key: param_group.get(key, self.defaults[key]) for key in self.rule.names}
            group.update((k, v) for k, v in param_group.items() if k not in group)
            group["params"] = params = ParamList(params)
            self._install_group(group, params, infos, extents,
                                self._validate_group(group, gi))
            if self._jit is not None:
                self._jit.invalidate_added()

    def _check_params(self, params, gi):
        """Check the arrays of new group ``gi``; return their device infos (None
        for host arrays) and memory extents."""
        infos = None
        if any(_validation.is_device_array(p) for p in params):
            if self._clipping:
                raise NotImplementedError(_DEVICE_CLIPPING)
            if self._storage.stochastic_rounding and self._storage.state_format != "full":
                raise NotImplementedError(
                    f"param_groups[{gi}]: stochastic rounding of compressed state is "
                    "implemented on the CPU only; device parameters take "
                    f"state_format={self._storage.state_format!r} with stochastic_rounding=False")
            for k, param in enumerate(params):
                # Before the adapters, which would call the dtype unsupported.
                if "bfloat16" in str(getattr(param, "dtype", "")):
                    raise NotImplementedError(
                        f"param_groups[{gi}]['params'][{k}] is a bfloat16 device array; "
                        "bfloat16 parameters are implemented for host (NumPy, ml_dtypes) "
                        "arrays only (CuPy has no bfloat16 dtype). Keep float32 device "
                        "parameters and use state_format='bfloat16' or '8bit' for their state")
            from numadam.cuda.adapters import group_infos   # loads numba.cuda on first use
            infos = group_infos(params, f"param_groups[{gi}]")
        seen = set()
        extents = []
        for k, param in enumerate(params):
            where = f"param_groups[{gi}]['params'][{k}]"
            if infos is None:
                _validation.parameter(param, where, bfloat16=True)
                self._check_storage(param, where)
                extent = ("host", host_address(param), param.nbytes)
            else:
                info = infos[k]
                if info.dtype == np.float64 and self._storage.state_format != "full":
                    raise ValueError(_float64_compressed(where, self._storage.state_format))
                extent = (("cuda", info.device), info.address, info.size * info.dtype.itemsize)
            if id(param) in self._index_of or id(param) in seen:
                raise ValueError(f"{where} appears in more than one place; each array "
                                 "can be optimised once")
            seen.add(id(param))
            memory, start, nbytes = extent
            extents.append((memory, start, start + nbytes, where))
        _validation.no_overlap(self._extents, extents)
        return infos, extents

    def _check_storage(self, param, where):
        """Refuse a host parameter the storage settings cannot hold."""
        bf16 = _formats.is_bfloat16(param.dtype)
        if bf16 and self._clipping:
            raise NotImplementedError(f"{where}: {_BF16_CLIPPING}")
        if param.dtype == np.float64 and self._storage.state_format != "full":
            raise ValueError(_float64_compressed(where, self._storage.state_format))

    def _host_buckets(self, params, rows, first, gi):
        """The host buckets of the arrays ``params[k] for k in rows`` (one
        dtype): a plain bucket, or compressed ones as the storage says (8-bit
        state only for arrays of at least ``MIN_8BIT`` elements)."""
        # Full state of float32/float64 parameters: the plain bucket (None).
        plain = not _formats.is_bfloat16(params[rows[0]].dtype)
        out = []
        for part, part_fmt in self._format_parts(rows, [p.size for p in params]):
            arrays, indices = [params[k] for k in part], [first + k for k in part]
            if part_fmt == "full" and plain:
                # The usual case: the compressed buckets' module (and its
                # 9 ms of imports) loads only for optimizers that use it.
                out.append(Bucket(self.rule, arrays, indices, gi))
            else:
                from numadam.cpu.compressed_bucket import CompressedBucket
                out.append(CompressedBucket(self.rule, arrays, indices, gi, part_fmt,
                                            self._storage))
        return out

    def _format_parts(self, rows, sizes):
        """``rows`` (indices into ``sizes``, the arrays' element counts) cut
        into ``(part, state format)`` by the storage: 8-bit state only for
        arrays of at least ``MIN_8BIT`` elements, full state for the others."""
        fmt = self._storage.state_format
        if fmt != "8bit":
            return [(rows, fmt)]
        big = [k for k in rows if sizes[k] >= _formats.MIN_8BIT]
        small = [k for k in rows if sizes[k] < _formats.MIN_8BIT]
        return [(part, f) for part, f in ((big, "8bit"), (small, "full")) if part]

    def _device_buckets(self, params, infos, rows, first, gi):
        """The device buckets of the arrays ``params[k] for k in rows`` (one
        dtype, float32 unless the state is full), split as
        :meth:`_host_buckets` splits host arrays."""
        from numadam.cuda.bucket import DeviceBucket
        from numadam.cuda.compressed_bucket import CompressedDeviceBucket
        out = []
        for part, part_fmt in self._format_parts(rows, [info.size for info in infos]):
            arrays, part_infos = [params[k] for k in part], [infos[k] for k in part]
            indices = [first + k for k in part]
            if part_fmt == "full":
                out.append(DeviceBucket(self.rule, arrays, part_infos, indices, gi))
            else:
                out.append(CompressedDeviceBucket(self.rule, arrays, part_infos, indices, gi,
                                                  part_fmt))
        return out

    def _install_group(self, group, params, infos, extents, validated):
        """Add group ``group`` over the checked arrays ``params``
        (``validated``: its ``_group_args`` entry): its buckets, slots and
        owned gradient buffers."""
        gi = len(self.param_groups)
        first = len(self._slots)
        buckets = []
        dtypes = [p.dtype for p in params] if infos is None else [i.dtype for i in infos]
        for dtype in dict.fromkeys(dtypes):
            rows = [k for k, d in enumerate(dtypes) if d == dtype]
            if infos is None:
                buckets.extend(self._host_buckets(params, rows, first, gi))
            else:
                buckets.extend(self._device_buckets(params, infos, rows, first, gi))
        if self.rule.eager_state and validated.args is not None:
            # torch creates this rule's state at construction (Adagrad's sum).
            for bucket in buckets:
                bucket.allocate(validated.args, live=True)
        slots = [None] * len(params)
        for bucket in buckets:
            for row, index in enumerate(bucket.indices):
                slots[index - first] = Slot(bucket, row)

        self.param_groups.append(group)
        self._last_group = gi
        self._param_lists.append(params)
        self._group_args.append(validated)
        self._extents.extend(extents)
        self._buckets.extend(buckets)
        self._slots.extend(slots)
        for k, param in enumerate(params):
            self._index_of[id(param)] = first + k
        if infos is None:
            self._host_params.extend(params)
        else:
            self._host_grads = None
        if self._host_grads is not None:
            # bfloat16 gradients take the slow path (host_address): None
            # matches no dtype.
            self._host_grads.extend(
                (i, shape, None if _formats.is_bfloat16(dtype) else dtype, bucket.words,
                 row * NCOLS + PTR_G)
                for bucket in buckets for row, (i, shape, dtype) in enumerate(bucket.expected))
        if self._grads is not None:
            self._grads = self._grads + _zeros_like(slots)
            self._point_buckets_at_owned_grads(buckets)

    def _validate_group(self, group, gi):
        """Validate ``group``'s hyperparameters; return ``(raw, kernel args)``
        (``raw``: the validated entries, compared by identity at each step)."""
        try:
            values, args = self.rule.validate(group)
        except ValueError as error:
            raise ValueError(f"param_groups[{gi}]: {error}") from None
        for key, value in values.items():
            if type(value) is tuple:     # betas: in-place edits cannot bypass the check
                group[key] = value
        init = {h.name: h.check(self.defaults[h.name]) for h in self.rule.hyper
                if h.kind == "init"}
        if init:
            # torch initialises state from the constructor's value, whatever a
            # group says (Adagrad: __init__ and _init_group read the argument
            # and self.defaults, never group["initial_accumulator_value"]).
            args = dataclasses.replace(args, values={**args.values, **init})
        return Validated(self._raw(group), args)

    def _raw(self, group):
        """The objects :meth:`_kernel_args` compares by identity."""
        return tuple(map(group.__getitem__, self._keys))

    def _kernel_args(self):
        """The validated kernel arguments of every group, re-validating edits.

        The common case, every entry the very object last validated, costs
        one identity test each. Otherwise an entry equal to the validated one and of the same type is
        kept (a schedule writing the same rate again); anything else is
        validated again: ``group["amsgrad"] = 0`` compares equal to
        ``False`` but is not a bool.
        """
        groups = self.param_groups
        validated = self._group_args
        if len(groups) != len(validated):   # an added or removed group
            self._check_groups()
        unchanged = self._unchanged
        out = []
        # An index, not zip(groups, validated): a zip costs a 10-element step
        # 700 instructions (callgrind), more than one group's loop.
        gi = 0
        try:
            for group in groups:
                raw, args = validated[gi]
                if not unchanged(group, raw):
                    return self._revalidate()
                out.append(args)
                gi += 1
        except KeyError:                # a deleted entry
            self._check_groups()
            raise
        return out

    def _revalidate(self):
        """:meth:`_kernel_args` for groups of which some entry is not the
        object last validated."""
        out = []
        gi = -1
        try:
            for gi, group in enumerate(self.param_groups):
                cached = self._group_args[gi]
                raw = cached.raw
                if not self._unchanged(group, raw):
                    now = self._raw(group)
                    if _same_as_validated(now, raw):
                        cached = Validated(now, cached.args)
                    elif (args := self._reals_changed(group, cached)) is not None:
                        cached = Validated(now, args)
                    else:
                        self._check_params_kept(group, gi)
                        cached = self._validate_group(group, gi)
                        for bucket in self._buckets:
                            if bucket.group_index == gi:
                                bucket.check_rows(cached.args.rows, f"param_groups[{gi}]")
                    self._group_args[gi] = cached
                out.append(cached.args)
        except (KeyError, IndexError):  # a deleted entry, an added group
            self._check_groups()
            raise
        if gi != self._last_group:      # a removed group
            self._check_groups()
        return out

    def _reals_changed(self, group, cached):
        """Kernel args for ``group`` (last validated as ``cached``) when its
        only changed entries are real hyperparameters given as valid floats
        (a schedule's new ``lr``), or None to validate the whole group.

        A new lr each step took a 10-element Adam step from 1.9 to 20 us
        through the full validation; this path checks only what changed.
        Anything it does not handle (another type, an invalid value, betas,
        flags, a real that decides which state exists, a deleted entry)
        takes the full path, which also words the error.
        """
        raw = cached.raw
        try:
            if not self._fixed_unchanged(group, raw):
                return None
            hyp = values = None
            for i, slot, kind, name in self._simple:
                value = group[name]
                if value is raw[i]:
                    continue
                if kind == "betas":
                    if not (type(value) is tuple and len(value) == 2
                            and all(type(b) is float and 0.0 <= b < 1.0 for b in value)):
                        return None
                elif type(value) is not float or value - value != 0 or (
                        kind == "nonneg" and value < 0):
                    return None
                if hyp is None:
                    hyp, values = list(cached.args.hyp), dict(cached.args.values)
                if kind == "betas":
                    hyp[slot], hyp[slot + 1] = value
                else:
                    hyp[slot] = value
                values[name] = value
        except KeyError:
            return None
        args = cached.args
        if hyp is None:
            return args
        if self.rule.check is not None:
            try:
                self.rule.check(values)
            except ValueError:
                return None
        return KernelArgs(tuple(hyp), args.flags, args.rows, values)

    def _check_groups(self):
        """Refuse ``param_groups`` that gained or lost groups, or entries,
        behind the optimizer's back, and replaced ``params`` lists."""
        groups = self.param_groups
        if len(groups) != len(self._param_lists):
            raise ValueError(
                f"opt.param_groups has {len(groups)} groups but the optimizer was "
                f"given {len(self._param_lists)}: groups cannot be added or removed by "
                "editing the list; add them with add_param_group, or build a new "
                "optimizer")
        for gi, group in enumerate(groups):
            for key in self._keys:
                if key not in group:
                    raise ValueError(
                        f"param_groups[{gi}] has no {key!r} entry; every group keeps "
                        "its hyperparameters (edit them, do not delete them)")
            self._check_params_kept(group, gi)

    def _check_params_kept(self, group, gi):
        """Refuse a replaced ``group["params"]``, unless it lists the very same
        arrays in the same order (then the group gets its own list back)."""
        params, kept = group["params"], self._param_lists[gi]
        if params is kept:
            return
        if (not isinstance(params, (list, tuple)) or len(params) != len(kept)
                or any(a is not b for a, b in zip(params, kept))):
            raise ValueError(
                f"param_groups[{gi}]['params'] was replaced by other arrays; the "
                "optimizer keeps the arrays it was given. Add arrays with "
                "add_param_group, or build a new optimizer")
        group["params"] = kept

    # ------------------------------------------------------ @njit handle
    @property
    def param_groups(self):
        """The parameter groups: a list of dicts, one per group, holding
        the group's hyperparameters and its ``"params"``, as in torch.

        Once :meth:`jit` made a handle, values the handle set inside
        ``@njit`` code are written here when it is read.
        """
        if self._jit is not None:
            self._jit.pull(self._param_groups)
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        self._param_groups = groups

    @property
    def skipped_steps(self):
        """Steps skipped for non-finite gradients (``check_finite="skip"``),
        by ``step()`` and by the compiled steps of :meth:`jit` handles."""
        if self._jit is not None:
            return self._skipped_steps + self._jit.skipped()
        return self._skipped_steps

    @skipped_steps.setter
    def skipped_steps(self, count):
        self._skipped_steps = count - (self._jit.skipped() if self._jit is not None else 0)

    def jit(self):
        """A handle to step this optimizer inside ``@njit`` code.

        ``h = opt.jit()`` is passed to your ``@njit`` functions, where
        ``h.step()`` is one ``opt.step()`` reading the owned gradients
        ``opt.grads``, bit for bit, on the same state and step counts;
        ``h.get_lr(g)``, ``h.set_lr(g, value)``, ``h.get_hyper(g, "name")``
        and ``h.set_hyper(g, "name", value)`` read and set hyperparameters.
        What is shared, and when edits cross over, is described in
        :mod:`numadam.cpu.handle`.

        The state arrays are created here if no step has made them (zeros,
        as at the first step), so from now on a change of hyperparameters
        that would add state arrays (momentum switched on) is refused as
        after a first step.

        Raises
        ------
        TypeError
            For parameters in device (CUDA) memory.
        ValueError
            For invalid hyperparameters in ``param_groups``, as ``step()``.
        """
        from numadam.cpu.handle import make_handle
        return make_handle(self)

    # ---------------------------------------------------------- gradients
    @property
    def grads(self):
        """Gradient buffers owned by the optimizer, one per parameter.

        A tuple of zero-initialised arrays shaped like the parameters, created
        on first access. Write gradients into them in place (``g[...] = ...``)
        and call ``step()`` without arguments: the kernels then read them with
        no per-step validation or address lookup.
        """
        if self._grads is None:
            with self._lock:
                if self._grads is None:     # another thread may have made them
                    self._grads = _zeros_like(self._slots)
                    self._point_buckets_at_owned_grads(self._buckets)
        return self._grads

    def _point_buckets_at_owned_grads(self, buckets):
        for bucket in buckets:
            address_of = bucket.address_of if bucket.on_device else host_address
            bucket.owned_grad_addresses = np.array(
                [address_of(self._grads[i]) for i in bucket.indices], np.int64)
            bucket.uses_owned_grads = False

    def zero_grad(self, set_to_none=True):
        """Fill the owned gradient buffers (``opt.grads``) with zeros.

        Parameters
        ----------
        set_to_none : bool, default True
            Accepted for torch compatibility; the buffers are zero-filled
            either way. torch drops ``.grad`` so that a parameter nobody
            writes a gradient for is skipped; the owned buffers belong to the
            optimizer and ``step()`` reads all of them, so they stay arrays
            (a zero gradient still moves a parameter through its momentum).
            To skip a parameter for one step, pass ``step(grads)`` with
            ``None`` in its place.
        """
        self._acquire()
        try:
            if self._grads is not None:
                for bucket in self._buckets:    # every owned buffer is a view of its bucket's
                    bucket.zero_owned_grads()
        finally:
            self._release()

    def _gradient_addresses(self, grads):
        """Validate user gradients; return per-bucket address lists (0: no grad)."""
        if type(grads) is not list and type(grads) is not tuple and (
                isinstance(grads, (np.ndarray, Mapping, set, frozenset, str))
                or not hasattr(grads, "__len__")):
            raise TypeError(
                "grads must be a list of arrays aligned with the parameters "
                f"(group order), got {_validation.describe(grads)}; for one "
                "parameter write step([g])")
        if len(grads) != len(self._slots):
            raise ValueError(f"got {len(grads)} gradients for {len(self._slots)} parameters")
        out = []
        ndarray = np.ndarray
        for bucket in self._buckets:
            if bucket.on_device:
                out.append(bucket.gradient_addresses(grads))
                continue
            addresses = []
            append = addresses.append
            # The common case costs ~0.5 us a gradient; anything unusual takes
            # the slow path, which either explains the problem or accepts it.
            for i, shape, dtype in bucket.expected:
                g = grads[i]
                if (type(g) is ndarray and g.shape == shape and g.dtype is dtype
                        and g.flags.c_contiguous):
                    append(host_address(g))
                elif g is None:
                    append(0)
                else:
                    param = self._slots[i].bucket.params[self._slots[i].row]
                    error = _validation.gradient_error(g, param, f"grads[{i}]")
                    if error is not None:
                        raise error
                    append(host_address(np.asarray(g)))
            out.append(addresses)
        return out

    def _point_at_host_gradients(self, grads):
        """Validate user gradients (a list or tuple, one per parameter, every
        bucket in host memory) and write their addresses (0: no gradient)
        into the bucket tables.

        Writing while checking, rather than collecting per-bucket lists for
        :meth:`Bucket.use_gradients`, saves a 10-element ``step([g])`` 2,900
        of its 23,500 instructions (callgrind). The tables are the
        optimizer's own, and the buckets are marked as pointing at user
        gradients before any word is written, so the next step writes every
        word again (``step()``: the owned buffers) even after a gradient
        refused half-way.
        """
        for bucket in self._buckets:
            bucket.uses_owned_grads = False
        ndarray = np.ndarray
        for i, shape, dtype, words, word in self._host_grads:
            g = grads[i]
            # The common case costs ~0.5 us a gradient; anything unusual takes
            # the slow path, which either explains the problem or accepts it.
            if (type(g) is ndarray and g.shape == shape and g.dtype is dtype
                    and g.flags.c_contiguous):
                words[word] = address(g)
            elif g is None:
                words[word] = 0
            else:
                param = self._slots[i].bucket.params[self._slots[i].row]
                error = _validation.gradient_error(g, param, f"grads[{i}]")
                if error is not None:
                    raise error
                words[word] = host_address(np.asarray(g))

    # --------------------------------------------------------------- step
    def step(self, grads=None, *, closure=None):
        """Apply one update to every parameter.

        Parameters
        ----------
        grads : sequence of (numpy.ndarray or None), or callable, optional
            One gradient per parameter in group order, same shape and dtype,
            C-contiguous. ``None`` for a parameter leaves it and its state
            untouched this step (as a missing ``.grad`` in torch). Without
            ``grads`` the owned buffers ``opt.grads`` are used. A callable is
            the closure (torch's ``step(closure)``).
        closure : callable, optional
            Called first, with no arguments; it recomputes the loss (and
            fills ``opt.grads`` or the arrays in ``grads``). Its result is
            returned.

        Raises
        ------
        TypeError, ValueError
            Before any array is touched, for gradients that do not fit their
            parameters, invalid hyperparameters in ``param_groups``, or a
            ``param_groups[i]["params"]`` that was replaced.
        FloatingPointError
            With ``check_finite="raise"``, if a gradient holds NaN or Inf.
        RuntimeError
            Without gradients (neither ``grads`` nor ``opt.grads``), or when
            called from inside the closure of a ``step`` of this optimizer.

        Notes
        -----
        Steps, ``zero_grad``, ``state_dict``, ``load_state_dict``, ``save``
        and ``add_param_group`` of one optimizer hold its lock, so threads
        sharing an optimizer take turns (the closure runs inside the step).
        The closure may call ``zero_grad`` and the other methods, but not
        ``step`` (``RuntimeError``): that would step twice.
        """
        listed = grads is None or type(grads) is list or type(grads) is tuple
        if not listed:
            grads, closure = positional_closure(grads, closure)
        # The body is inlined rather than a call under the lock: 400 of the
        # 28,000 instructions of a 10-element step (callgrind).
        self._acquire()
        try:
            if self._in_closure:
                raise RuntimeError(STEP_IN_CLOSURE)
            loss = None
            if closure is not None:
                self._in_closure = True
                try:
                    loss = closure()
                finally:
                    self._in_closure = False
            per_bucket = None
            if grads is None:
                if self._grads is None:
                    raise RuntimeError(
                        "step() got no gradients: pass step(grads) or write them into "
                        "the buffers of opt.grads")
            elif listed and self._host_grads is not None and len(grads) == len(self._host_grads):
                self._point_at_host_gradients(grads)
            else:
                per_bucket = self._gradient_addresses(grads)
            groups, validated = self.param_groups, self._group_args
            try:
                # One group whose entries are the very objects last validated:
                # the common case, tested here rather than in _kernel_args (its
                # calls cost a 10-element step 800 instructions, callgrind).
                same = len(groups) == 1 == len(validated) and self._unchanged(
                    groups[0], validated[0].raw)
            except KeyError:            # a deleted entry: _kernel_args says which
                same = False
            if same:
                args = (validated[0].args,)
            elif (len(groups) == 1 == len(validated)
                  and (fast := self._reals_changed(groups[0], validated[0])) is not None):
                # One group whose lr a schedule moved: straight to the checked floats.
                validated[0] = Validated(self._raw(groups[0]), fast)
                args = (fast,)
            else:
                args = self._kernel_args()
            for param in self._host_params:
                if not param.flags.writeable:
                    raise ValueError(
                        f"parameter {self._index_of[id(param)]} has become read-only; "
                        "parameters are updated in place")
            buckets = self._buckets
            if grads is None:
                # With device buckets (no _host_grads) every bucket is called: a
                # device bucket's call also forgets the streams of the gradients
                # that a refused step(grads) checked.
                every = self._host_grads is None
                for bucket in buckets:
                    if every or not bucket.uses_owned_grads:
                        bucket.use_gradients(None)
            elif per_bucket is not None:
                k = 0
                for bucket in buckets:      # an index: see _kernel_args
                    bucket.use_gradients(per_bucket[k])
                    k += 1
            if self._clipping:
                self._clipped_step(buckets, args)
                return loss
            if self.check_finite is not None and not self._gradients_finite():
                return loss
            for bucket in buckets:
                if bucket.state is None or bucket.unready:
                    self._make_ready(buckets, args)
                    break
            for bucket in buckets:
                bucket.step(args[bucket.group_index])
            return loss
        finally:
            self._release()

    @staticmethod
    def _make_ready(buckets, args):
        """Everything that can fail for want of memory or a compiled kernel,
        for every bucket before any steps: a later bucket that runs out of
        memory must not leave an earlier one a step ahead. What this call
        allocated is dropped again on failure."""
        fresh = [bucket for bucket in buckets if bucket.state is None]
        try:
            for bucket in fresh:
                bucket.allocate(args[bucket.group_index])
            for bucket in buckets:
                bucket.ready()
        except BaseException:
            for bucket in fresh:
                bucket.state = None
            raise

    def _gradients_finite(self, clips=None):
        """Whether every gradient, read under ``clips`` (one per bucket, or
        None), is finite; False (a skipped step) or FloatingPointError if
        not, as ``check_finite`` says."""
        for k, bucket in enumerate(self._buckets):
            # Device buckets never clip (refused when set) and take no clip.
            row = bucket.first_nonfinite() if clips is None else bucket.first_nonfinite(clips[k])
            if row >= 0:
                if self.check_finite == "skip":
                    self.skipped_steps += 1
                    return False
                raise FloatingPointError(
                    f"the gradient of parameter {bucket.indices[row]} holds NaN or "
                    "Inf; no parameter or state was changed (check_finite='raise')")
        return True

    def _clipped_step(self, buckets, args):
        """The end of :meth:`step` with ``max_grad_norm`` or ``clip_value``
        set: the norm pass (and guard), then the update reading the
        transformed gradients. Apart from the plain path, which it would
        cost a 10-element step 1% (callgrind)."""
        clips = self._clips()
        if clips is None:               # skipped by check_finite
            return
        for bucket in buckets:
            if bucket.state is None or bucket.unready:
                self._make_ready(buckets, args)
                break
        for bucket, clip in zip(buckets, clips):
            bucket.step_clipped(args[bucket.group_index], clip)

    def _clips(self):
        """The ``(lo, hi, scale)`` of each bucket for this step (see
        :func:`numadam.cpu.kernels.gradient`), after the norm pass and the
        ``check_finite`` guard; None when the guard skips the step."""
        v = self._clip_value
        if v is None:
            v = math.inf
        clamps = []
        # np.clip(g, -v, v) compares in g's dtype (NumPy 2's weak scalars): a v
        # beyond the float32 range is inf there, as it is here.
        with np.errstate(over="ignore"):
            for bucket in self._buckets:
                t = bucket.dtype.type
                clamps.append((t(-v), t(v), t(1)))
        c = self._max_grad_norm
        if c is None:
            if self.check_finite is not None and not self._gradients_finite(clamps):
                return None
            return clamps
        bins = np.zeros(NBINS, np.int64)
        for bucket, clamp in zip(self._buckets, clamps):
            bins += bucket.square_bins(clamp)
        norm = math.sqrt(bins_to_sum(bins))
        self.last_grad_norm = norm
        # The norm's pass was the NaN/Inf check; the second read below only
        # names the parameter (or counts the skip).
        if (self.check_finite is not None and bins[NONFINITE]
                and not self._gradients_finite(clamps)):
            return None
        coef = c / (norm + CLIP_EPS)
        if not coef < 1.0:                      # NaN too: unscaled
            return clamps
        return [(lo, hi, bucket.dtype.type(coef))
                for (lo, hi, _), bucket in zip(clamps, self._buckets)]

    # -------------------------------------------------------------- state
    @property
    def state_format(self):
        """How state is stored: ``"full"``, ``"bfloat16"`` or ``"8bit"``
        (see :mod:`numadam.formats`); set at construction."""
        return self._storage.state_format

    @property
    def state_nbytes(self):
        """Bytes of optimizer state: every state array (8-bit absmax
        included), not the step counts, parameters or gradient buffers; 0
        before the state exists (the first step, for most rules)."""
        with self._lock:
            return sum(int(b.state.nbytes) for b in self._buckets if b.state is not None)

    @property
    def state(self):
        """Per-parameter state, keyed by the parameter array or its index.

        ``opt.state[p]`` holds the rule's state arrays under torch's names
        (Adam: ``exp_avg``, ``exp_avg_sq``, ...) as live views of the
        optimizer's buffers (valid until ``load_state_dict``), and ``step``
        (a Python int) where torch keeps one. A parameter has state once it
        has been stepped with a gradient, or from the start for rules whose
        torch optimizer creates it at construction (Adagrad); as in torch, a
        rule without state arrays or a step (SGD without momentum) has none.
        """
        return StateView(self)

    def state_dict(self):
        """The optimizer state in torch's layout, holding copies.

        ``{"state": {index: {"step": int, "exp_avg": array, ...}},
        "param_groups": [{hyperparameters..., "params": [indices]}]}``.
        Taken under the optimizer's lock: never torn by a step in another thread.
        """
        with self._lock:
            self._check_groups()
            return _state_dict.export(self)

    def load_state_dict(self, state_dict):
        """Load a state dict from ``state_dict()`` or from torch (as NumPy).

        Everything is validated before anything changes: a state dict whose
        groups, parameter counts, shapes or dtypes do not fit raises
        ``ValueError`` and leaves the optimizer as it was.
        """
        with self._lock:
            self._check_groups()
            _state_dict.load(self, state_dict)

    def save(self, path, schedule=None):
        """Write a checkpoint file atomically (see :func:`numadam.save`).

        ``schedule``: a learning-rate schedule of this optimizer
        (:mod:`numadam.schedules`), stored in the same file.
        """
        from numadam.checkpoint import save_with
        save_with(self, path, schedule)

    def load(self, path, schedule=None):
        """Load a checkpoint file into this optimizer (see :func:`numadam.load`).

        ``schedule``: a schedule of this optimizer, built as for a new run,
        into which the file's schedule state is loaded. Everything is checked
        before anything changes; a file without a schedule state, or with one
        that does not fit ``schedule``, raises ``CheckpointError``.
        """
        from numadam.checkpoint import load_into
        load_into(self, path, schedule)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            lines.extend(f"    {key}: {group[key]}" for key in self.rule.names)
            lines.append(f"    params: {len(group['params'])} arrays")
        lines.append(")")
        return "\n".join(lines)

    # ------------------------------------------------------- copy, pickle
    def __getstate__(self):
        """Values only (see :mod:`numadam.core.copying`); never an address."""
        return _copying.values(self)

    def __setstate__(self, state):
        _copying.restore(self, state)

    def __deepcopy__(self, memo):
        """An independent optimizer over deep copies of the parameters and
        state (the copies already in ``memo``, when parameters and optimizer
        are copied together). Taken under the lock: a step in another thread
        cannot tear it."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        with self._lock:
            state = copy.deepcopy(self.__getstate__(), memo)
        new.__setstate__(state)
        return new

    def __copy__(self):
        raise TypeError(
            "a shallow copy of an optimizer would share its state arrays with the "
            "original; use copy.deepcopy(opt) (parameters and state copied) or build "
            "a new optimizer over the same arrays and load_state_dict(opt.state_dict())")


STEP_IN_CLOSURE = ("step() was called from inside its own closure; the closure only "
                   "computes the loss and gradients of the step that called it")

def _float64_compressed(where, fmt):
    return (f"{where} is float64; state_format={fmt!r} stores state computed in float32, "
            "so it needs float32 or bfloat16 parameters (use state_format='full' for float64)")


_BF16_CLIPPING = ("max_grad_norm and clip_value are not supported with bfloat16 parameters; "
                  "clip their gradients before step()")

_DEVICE_CLIPPING = ("max_grad_norm and clip_value are not supported for parameters in CUDA "
                    "device memory; clip the device gradients before step()")


def _clip_setting(name, value):
    """``value`` of ``max_grad_norm`` or ``clip_value`` as a float (or None),
    or the ValueError naming it."""
    if value is None:
        return None
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return float(value)


def positional_closure(grads, closure):
    """``(grads, closure)`` of a ``step(grads, closure=closure)`` call:
    a callable first argument is the closure, as in torch's
    ``step(closure=None)``."""
    if not callable(grads):
        return grads, closure
    if closure is not None:
        raise TypeError("step() got a closure twice: as its first argument and as closure=")
    return None, grads


def _zeros_like(slots):
    """Zero gradient buffers for the parameters of ``slots``, on their device."""
    return tuple(bucket.zeros_like(row) for bucket, row in slots)


def _identity_test(keys, positions=None):
    """A function ``(group, raw)`` telling whether ``group[keys[i]] is raw[i]``
    for every ``i``, compiled for ``keys``.

    An unrolled ``and`` of ``is`` tests: for Adam's eight entries it costs
    2,600 instructions a call where ``all(map(operator.is_, ...))`` costs
    6,100 and a loop over ``zip(keys, raw)`` 6,000 (callgrind, CPython 3.11);
    comparing tuples with ``==`` would be cheaper still but accepts
    ``0 == False``.
    """
    positions = range(len(keys)) if positions is None else positions
    test = " and ".join(f"group[{key!r}] is raw[{i}]" for i, key in zip(positions, keys))
    return eval(f"lambda group, raw: {test}")   # keys are a rule's hyperparameter names


def _same_as_validated(now, validated):
    """Whether the entries ``now`` equal the ``validated`` ones in value and
    type; tuples (``betas``) and ``params`` must be the very objects."""
    for value, old in zip(now, validated):
        if value is not old and (type(value) is not type(old) or type(value) is tuple
                                 or type(value) is ParamList or not value == old):
            return False
    return True
