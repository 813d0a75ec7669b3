"""The sharded optimizers (see :mod:`numadam.distributed`): one engine,
:class:`ShardedOptimizer`, driven by the update rule of the single-process
class it shards, and one thin class per rule."""

import dataclasses
import functools
import hashlib
import inspect
import math
import threading

import numpy as np
from mpi4py import MPI

from numadam.core.optimizer import CLIP_EPS, STEP_IN_CLOSURE, _clip_setting, positional_closure
from numadam.distributed import state as _distributed_state
from numadam.distributed.agree import agree, describe, raise_agreed
from numadam.cpu.norm import NBINS, NONFINITE, bins_to_sum, square_sum_bins
from numadam.distributed.layout import bytes_per_step, first_difference, layout_signature
from numadam.distributed.shard import Shard
from numadam.rules.adagrad import Adagrad
from numadam.rules.adam import Adam, AdamW
from numadam.rules.rmsprop import RMSprop
from numadam.rules.sgd import SGD

__all__ = ["ShardedOptimizer", "ShardedAdam", "ShardedAdamW", "ShardedSGD", "ShardedAdagrad",
           "ShardedRMSprop", "REDUCTIONS", "CLIP_EPS"]

REDUCTIONS = ("ordered", "mpi")
_NO_PARAM = np.iinfo(np.int64).max


class ShardedOptimizer:
    r"""A numadam optimizer with its state split over the ranks of ``comm``.

    Each rule's class (:class:`ShardedAdam`, :class:`ShardedSGD`, ...) sets
    ``plain``, the single-process class whose update it shards, and takes
    that class's arguments plus the ones below. Every rank must pass
    parameters of the same shapes, dtypes and groups, and the same
    hyperparameters.

    Parameters
    ----------
    max_grad_norm : float, optional
        Clip the averaged gradient ``g`` (all parameters together) to this
        Euclidean norm before the update; see Notes.
    clip_value : float, optional
        Clamp each element of the averaged gradient to
        ``[-clip_value, clip_value]`` first (before the norm); see Notes.
    reduction : {"ordered", "mpi"}, default "ordered"
        How gradients are summed. ``"ordered"``: each rank receives every
        rank's slice of its shard (``Alltoallv``) and adds them in rank
        order, so results do not depend on the MPI library or the network.
        ``"mpi"``: ``MPI_Reduce_scatter``, whose summation order is the
        library's business (results may differ in the last bits).
    comm : mpi4py.MPI.Intracomm, default MPI.COMM_WORLD
        Every rank of ``comm`` must call the constructor, ``step``,
        ``state_dict``, ``load_state_dict``, ``save`` and ``load`` together.
        Those calls, and ``zero_grad``, hold the optimizer's (reentrant)
        lock: threads of one rank sharing the optimizer take turns, so their
        collectives never interleave on ``comm``.

    Notes
    -----
    With ``P`` ranks passing gradients ``g_0 ... g_{P-1}``, a step applies
    the update of the plain class to ``g = (((g_0 + g_1) + ...) + g_{P-1}) / P``,
    summed and divided in the parameters' dtype. In ``"ordered"`` mode the
    result is bit-identical to one process running the plain class on that
    ``g``: each rank updates its shard with the rule's own CPU kernels, and
    the state keeps torch's names and layout (``state_dict`` gathers it).

    Clipping (``clip_value = v``, ``max_grad_norm = c``), as the plain
    classes clip (see :class:`numadam.core.optimizer.Optimizer`)::

        g    = np.clip(g, -v, v)                v rounded to the dtype
        norm = sqrt(S),  S = sum over every element of g of float64(g_i)**2,
                             summed exactly and rounded once to float64
        g    = g * dtype(c / (norm + 1e-6))     only where c / (norm + 1e-6) < 1

    applied by the update kernel as it reads ``g``.

    ``S`` equals ``math.fsum(np.square(g.astype(np.float64)))`` over the
    concatenation of all gradients: each rank adds its shard's squares into
    exact integer bins, and the bins are summed with an integer
    ``Allreduce``, so the norm depends neither on ``P`` nor on threads. The
    norm of the last step is ``last_grad_norm`` (``nan`` for a step that
    ``check_finite`` skipped or refused). A NaN norm (non-finite gradient)
    leaves ``g`` unscaled; ``check_finite`` catches it.

    Examples
    --------
    Run under ``mpiexec -n 4 python -m mpi4py fit.py`` (``-m mpi4py``: an exception
    on one rank aborts the job instead of leaving the others in a collective)::

        from numadam.distributed import ShardedAdam
        opt = ShardedAdam([w], lr=1e-2)          # w: the same array on every rank
        for _ in range(100):
            opt.step([local_gradient(w)])        # this rank's data only
        opt.save("fit.npz")                      # loads into numadam.Adam too
    """

    plain = None        # the single-process class whose update is sharded

    def _init(self, params, kwargs, check_finite, max_grad_norm, reduction, comm,
              clip_value=None):
        """The constructor. ``kwargs`` are the plain class's keyword arguments
        (hyperparameters and torch's flags); the plain class checks them, and
        an error on any rank is raised on every rank."""
        comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py intracommunicator, got {comm!r}")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.rule = rule = self.plain.rule
        error = signature = None
        try:
            if reduction not in REDUCTIONS:
                raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
            max_grad_norm = _clip_setting("max_grad_norm", max_grad_norm)
            clip_value = _clip_setting("clip_value", clip_value)
            # The plain optimizer holds the groups and validates; its buckets
            # never step and must not hold state: for a rule whose state exists
            # from construction (Adagrad) it would allocate the whole state, which
            # the shards are there to split. So it runs on the rule without
            # eager_state; the shards create the state of their slices below.
            inner = self.plain.__new__(self.plain)
            inner.rule = _stateless(rule)
            inner.__init__(params, check_finite=check_finite, **kwargs)
            signature = layout_signature(inner, (("optimizer", type(inner).__name__),
                                                 ("check_finite", check_finite),
                                                 ("max_grad_norm", max_grad_norm),
                                                 ("clip_value", clip_value),
                                                 ("reduction", reduction)))
            shards = [Shard(bucket, rule, self.rank, self.size,
                            inner._group_args[bucket.group_index].args, reduction == "ordered")
                      for bucket in inner._buckets]
        except Exception as exc:  # shared with every rank below, then raised
            error = exc
        signatures = agree(comm, error, signature)
        for rank, other in enumerate(signatures):
            difference = first_difference(signatures[0], other)
            if difference:
                raise ValueError(
                    f"the ranks were given different parameters or settings: {difference} "
                    f"(rank 0 against rank {rank}); every rank must build the optimizer "
                    "with the same layout [raised on every rank]")
        self._inner = inner
        self.check_finite = check_finite
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        self.reduction = reduction
        self.skipped_steps = 0
        self.last_grad_norm = None
        self._shards = shards
        self._nparams = len(inner._slots)
        self._where = {int(i): (shard, k) for shard in shards
                       for k, i in enumerate(shard.indices)}
        self._grads = None
        self._lock = threading.RLock()
        self._in_closure = False

    # ----------------------------------------------------------- properties
    @property
    def param_groups(self):
        """The parameter groups, as in the plain class (edit them on every rank alike)."""
        return self._inner.param_groups

    @property
    def defaults(self):
        return self._inner.defaults

    @property
    def grads(self):
        """Gradient buffers owned by the optimizer, one per parameter.

        Views into one flat buffer per bucket, which a step sends as it is:
        ``step()`` without arguments copies nothing.
        """
        with self._lock:
            if self._grads is None:
                views = [None] * self._nparams
                for shard in self._shards:
                    for i, view in zip(shard.indices, shard.owned_views()):
                        views[i] = view
                self._grads = tuple(views)
        return self._grads

    def zero_grad(self, set_to_none=True):
        """Fill the owned gradient buffers with zeros (local; no communication).

        ``set_to_none`` is accepted for torch compatibility; the buffers are
        zero-filled either way, as by the plain class's ``zero_grad``.
        """
        with self._lock:
            if self._grads is not None:
                for g in self._grads:
                    g.fill(0)

    @property
    def shard_ranges(self):
        """Per bucket (group x dtype): ``(lo, hi, total)``, this rank's elements."""
        return [(s.lo, s.hi, s.full) for s in self._shards]

    @property
    def state_nbytes(self):
        """Bytes of optimizer state this rank holds: about 1/P of the plain class's."""
        return sum(s.nbytes()[0] for s in self._shards)

    @property
    def buffer_nbytes(self):
        """Bytes of this rank's communication buffers (averaged shard gradient;
        ``ordered``: P slices of the shard; a flat copy of buckets of several
        arrays; the owned gradients once ``grads`` was used)."""
        return sum(s.nbytes()[1] for s in self._shards)

    def bytes_per_step(self):
        """Payload bytes this rank sends and receives in one full step:
        ``{"reduce_recv", "reduce_send", "gather_recv", "gather_send"}``."""
        return bytes_per_step([s.full for s in self._shards],
                              [s.dtype.itemsize for s in self._shards], self.size, self.rank)

    def add_param_group(self, param_group):
        raise NotImplementedError(
            f"{type(self).__name__} shards its parameters at construction; pass every "
            "group to the constructor")

    # ----------------------------------------------------------------- step
    def step(self, grads=None, *, closure=None):
        """One update of every parameter, on every rank (collective).

        ``grads`` are this rank's gradients (as for the plain class's ``step``); ``None``
        for a parameter must be ``None`` on every rank (the parameter and its
        state are left as they are). Without ``grads``, ``opt.grads`` is used.
        A callable ``grads`` is the closure (torch's ``step(closure)``).

        Raises
        ------
        TypeError, ValueError, RuntimeError
            On every rank, before any data moves, when any rank's gradients or
            closure fail, or the ranks' hyperparameters differ.
        FloatingPointError
            On every rank, with ``check_finite="raise"``, when the averaged
            gradient holds NaN or Inf; nothing is updated on any rank.
        """
        with self._lock:
            if self._in_closure:
                # Raised on this rank only: the step whose closure this is
                # agrees on the closure's error with the other ranks.
                raise RuntimeError(STEP_IN_CLOSURE)
            return self._step(grads, closure)

    def _step(self, grads, closure):
        loss = error = plan = None
        try:
            grads, closure = positional_closure(grads, closure)
            if closure is not None:
                self._in_closure = True
                try:
                    loss = closure()
                finally:
                    self._in_closure = False
            plan = self._local_plan(grads)
        except Exception as exc:  # shared with every rank below, then raised
            error = exc
        self._agree_step(error, plan)
        args, per_bucket, has, _ = plan
        active = []
        for shard, bucket_grads in zip(self._shards, per_bucket):
            bucket_has = has[shard.indices]
            if bucket_has.any():
                send = shard.send_buffer(bucket_grads)
                shard.reduce(self.comm, send)
                shard.use_gradients(bucket_has)
                active.append((shard, bucket_has, send))
        clips = [None] * len(active)
        if (self.check_finite is not None or self.max_grad_norm is not None
                or self.clip_value is not None):
            clips = self._guard_and_clip(active)
            if clips is None:
                return loss
        for (shard, bucket_has, _), clip in zip(active, clips):
            shard.update(args[shard.bucket.group_index], bucket_has, clip)
        for shard, bucket_has, _ in active:
            shard.allgather(self.comm, bucket_has)
        return loss

    def _local_plan(self, grads):
        """Validate this rank's step; return ``(kernel args, grads per bucket,
        has-gradient flags, hash of the settings)``."""
        has = np.ones(self._nparams, np.int64)
        if grads is None:
            if self._grads is None:
                raise RuntimeError("step() got no gradients: pass step(grads) or write "
                                   "them into the buffers of opt.grads")
            per_bucket = [None] * len(self._shards)
        else:
            addresses = self._inner._gradient_addresses(grads)
            per_bucket = []
            for shard, bucket_addresses in zip(self._shards, addresses):
                has[shard.indices] = np.array(bucket_addresses) != 0
                per_bucket.append([grads[i] for i in shard.indices])
        args = self._inner._kernel_args()
        for shard in self._shards:
            gi = shard.bucket.group_index
            shard.part.check_rows(args[gi].rows, f"param_groups[{gi}]")
            for k, param in enumerate(shard.params):
                if not param.flags.writeable:
                    raise ValueError(f"parameter {shard.indices[k]} has become read-only; "
                                     "parameters are updated in place")
        digest = hashlib.blake2b(repr(self._settings(args)).encode(), digest_size=7).digest()
        return args, per_bucket, has, int.from_bytes(digest, "little")

    def _settings(self, args):
        """What every rank must step with: the validated hyperparameters of
        each group (plain floats and bools, so equal values print alike) and
        the options."""
        return ([a.values for a in args], self.max_grad_norm, self.clip_value,
                self.check_finite)

    def _agree_step(self, error, plan):
        """One ``Allreduce(MAX)``: errors, settings hash, who has which gradient."""
        n = self._nparams
        local = np.zeros(3 + 2 * n, np.int64)
        if error is not None:
            local[0] = 1
        else:
            digest = plan[3]
            local[1], local[2] = digest, -digest
            local[3:3 + n] = plan[2]
            local[3 + n:] = 1 - plan[2]
        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=MPI.MAX)
        if total[0]:
            raise_agreed(self.comm.allgather(describe(error)), error, self.size)
        if total[1] != -total[2]:
            settings = self.comm.allgather(self._settings(plan[0]))
            rank = next(r for r, s in enumerate(settings) if repr(s) != repr(settings[0]))
            difference = _settings_difference(settings[0], settings[rank])
            raise ValueError(
                f"the ranks' hyperparameters differ: {difference} (rank 0 against rank "
                f"{rank}); edit param_groups, max_grad_norm, clip_value and check_finite "
                "alike on "
                "every rank [raised on every rank]")
        mixed = np.flatnonzero(total[3:3 + n] & total[3 + n:])
        if mixed.size:
            raise ValueError(
                f"parameter {mixed[0]} has a gradient on some ranks and None on others; "
                "pass zeros where a rank has no contribution [raised on every rank]")

    # ---------------------------------------------------- guard and clipping
    def _first_bad(self, active, clamps):
        bad = _NO_PARAM
        for (shard, _, _), clamp in zip(active, clamps):
            row = shard.part.first_nonfinite(clamp) if shard.total else -1
            if row >= 0:
                bad = min(bad, shard.row_param_index(row))
        return bad

    def _guard_and_clip(self, active):
        """The agreed NaN/Inf guard and the global norm: the ``clip`` of each
        active shard for its update (see :func:`numadam.cpu.kernels.gradient`;
        ``None``: read as it is), or None to skip the step."""
        comm = self.comm
        clip = self.max_grad_norm is not None
        clamps = None
        if clip or self.clip_value is not None:
            v = math.inf if self.clip_value is None else self.clip_value
            with np.errstate(over="ignore"):    # v beyond float32: inf, as np.clip has it
                clamps = [(t(-v), t(v), t(1)) for t in (s.dtype.type for s, _, _ in active)]
        reads = clamps or [None] * len(active)
        if clip:
            bins = np.zeros(NBINS, np.int64)
            for (shard, _, _), clamp in zip(active, clamps):
                bins += square_sum_bins(shard.part.table, shard.part.like, shard.total, clamp)
            total = np.empty_like(bins)
            comm.Allreduce(bins, total, op=MPI.SUM)
            norm = math.sqrt(bins_to_sum(total))
            self.last_grad_norm = norm
        if self.check_finite is not None:
            if clip:
                nonfinite = total[NONFINITE] > 0
            else:
                nonfinite = comm.allreduce(self._first_bad(active, reads),
                                           op=MPI.MIN) != _NO_PARAM
            if nonfinite:
                if self.check_finite == "skip":
                    self.skipped_steps += 1
                    return None
                self._raise_nonfinite(active, reads)
        if clamps is None:
            return reads
        if clip:
            coef = self.max_grad_norm / (norm + CLIP_EPS)
            if coef < 1.0:
                return [(lo, hi, shard.dtype.type(coef))
                        for (lo, hi, _), (shard, _, _) in zip(clamps, active)]
        return clamps

    def _raise_nonfinite(self, active, clamps):
        bad = self.comm.allreduce(self._first_bad(active, clamps), op=MPI.MIN)
        shard, k = self._where[bad]
        send = next(s for sh, _, s in active if sh is shard)
        flags = self.comm.allgather(shard.local_nonfinite(send, k))
        ranks = [r for r, flag in enumerate(flags) if flag]
        cause = (f"rank(s) {ranks} passed NaN or Inf" if ranks else
                 "every rank's own gradient is finite: their sum overflowed")
        raise FloatingPointError(
            f"the averaged gradient of parameter {bad} holds NaN or Inf ({cause}); no "
            "parameter or state was changed on any rank (check_finite='raise') "
            "[raised on every rank]")

    # ---------------------------------------------------------- checkpoints
    def state_dict(self, root=0):
        """The whole optimizer state in torch's layout, gathered (collective).

        Returns the dict the plain class's ``state_dict()`` would (loadable by
        the plain class, by this class on any number of ranks, and by
        ``numadam.save``) on rank ``root``, ``None`` elsewhere; ``root=None``
        returns it on every rank.
        """
        with self._lock:
            return _distributed_state.gather(self, root)

    def load_state_dict(self, state_dict, root=0):
        """Load a state dict (collective); only rank ``root``'s argument is read.

        It is validated on ``root`` against the (agreed) layout and scattered;
        an invalid one raises the same ``ValueError`` on every rank and
        changes nothing anywhere. Other ranks may pass ``None``.
        """
        with self._lock:
            _distributed_state.scatter(self, lambda: state_dict, root)

    def save(self, path, root=0, schedule=None):
        """Write a checkpoint that is complete or absent (collective).

        Every rank checks its arguments and they agree; the state is gathered
        to ``root``, which writes it with :func:`numadam.save` (temporary file,
        fsync, atomic rename); the outcome is broadcast. Any failure raises on
        every rank and leaves the previous file at ``path`` intact. Only
        ``root`` touches the file system. The file is an ordinary numadam
        checkpoint: the plain class and this class on any number of ranks
        load it.

        Parameters
        ----------
        path : str or os.PathLike
            The same on every rank.
        root : int
            The rank that writes the file, the same on every rank.
        schedule : numadam.schedules.LRScheduler, optional
            Each rank's schedule over this rank's optimizer (all driven
            alike); root's state is stored with the optimizer's, as
            ``Adam.save(path, schedule=...)`` stores it. Every rank checks
            that its schedule drives this optimizer and that its state would
            load back; ranks passing a schedule and ranks passing none, or
            schedules of different classes, raise ``ValueError`` on every
            rank before anything is written.
        """
        with self._lock:
            _distributed_state.save(self, path, root, schedule)

    def load(self, path, root=0, schedule=None):
        """Load a checkpoint (collective): ``root`` reads it, every rank gets its shard.

        Parameters
        ----------
        path : str or os.PathLike
            Read on ``root`` only.
        root : int
            The rank that reads the file, the same on every rank.
        schedule : numadam.schedules.LRScheduler, optional
            Each rank's schedule over this rank's optimizer: the file's
            schedule state is checked against root's schedule, then loaded
            into every rank's after the optimizer's state, setting the groups'
            rates. A file saved without a schedule raises
            :class:`numadam.CheckpointError`, as does a schedule state that
            does not fit (another class, another number of groups); a file
            saved with one loads without ``schedule=`` as well (the optimizer
            only).

        Raises
        ------
        CheckpointError, ValueError, OSError
            On every rank alike; the optimizer and the schedule stay as they
            were on every rank.
        """
        with self._lock:
            _distributed_state.load(self, path, root, schedule)

    def __reduce_ex__(self, protocol):
        # Covers copy.copy, copy.deepcopy and pickle: a copy would share the
        # communicator and the shards' buffers, and ranks copy independently.
        raise TypeError(
            f"{type(self).__name__} holds an MPI communicator and buffer addresses and "
            "cannot be copied or pickled; save(path) on every rank and load it into a "
            "new optimizer")

    def __repr__(self):
        return (f"{type(self).__name__}(rank {self.rank} of {self.size}, "
                f"reduction={self.reduction!r}, shards={self.shard_ranges})\n"
                + repr(self._inner))


class ShardedAdam(ShardedOptimizer):
    """:class:`numadam.Adam` with its state split over the ranks of ``comm``.

    Parameters
    ----------
    params, lr, betas, eps, weight_decay, amsgrad, maximize, check_finite
        As for :class:`numadam.Adam`.
    foreach, fused, capturable, differentiable, decoupled_weight_decay
        torch's flags, as for :class:`numadam.Adam`.
    max_grad_norm, clip_value, reduction, comm
        The sharding options (see :class:`ShardedOptimizer`).
    """

    plain = Adam

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, reduction="ordered", comm=None, foreach=None, fused=None,
                 capturable=False, differentiable=False, decoupled_weight_decay=False):
        self._init(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                                fused=fused, capturable=capturable,
                                differentiable=differentiable,
                                decoupled_weight_decay=decoupled_weight_decay),
                   check_finite, max_grad_norm, reduction, comm, clip_value)


class ShardedAdamW(ShardedOptimizer):
    """:class:`numadam.AdamW` with its state split over the ranks of ``comm``;
    ``weight_decay`` defaults to 1e-2.

    Parameters
    ----------
    params, lr, betas, eps, weight_decay, amsgrad, maximize, check_finite
        As for :class:`numadam.AdamW`.
    foreach, fused, capturable, differentiable
        torch's flags, as for :class:`numadam.AdamW`.
    max_grad_norm, clip_value, reduction, comm
        The sharding options (see :class:`ShardedOptimizer`).
    """

    plain = AdamW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, reduction="ordered", comm=None, foreach=None, fused=None,
                 capturable=False, differentiable=False):
        self._init(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                                fused=fused, capturable=capturable,
                                differentiable=differentiable),
                   check_finite, max_grad_norm, reduction, comm, clip_value)


class ShardedSGD(ShardedOptimizer):
    """:class:`numadam.SGD` with its state (``momentum_buffer``) split over
    the ranks of ``comm``; without momentum there is no state to split, and
    a step is the exchange of gradients and parameters only.

    Parameters
    ----------
    params, lr, momentum, dampening, weight_decay, nesterov, maximize, check_finite
        As for :class:`numadam.SGD`.
    foreach, fused, capturable, differentiable
        torch's flags, as for :class:`numadam.SGD`.
    max_grad_norm, clip_value, reduction, comm
        The sharding options (see :class:`ShardedOptimizer`).
    """

    plain = SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, check_finite=None, max_grad_norm=None,
                 clip_value=None, reduction="ordered", comm=None, foreach=None, fused=None,
                 capturable=False, differentiable=False):
        self._init(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                weight_decay=weight_decay, nesterov=nesterov,
                                maximize=maximize, foreach=foreach, fused=fused,
                                capturable=capturable, differentiable=differentiable),
                   check_finite, max_grad_norm, reduction, comm, clip_value)


class ShardedAdagrad(ShardedOptimizer):
    """:class:`numadam.Adagrad` with its state (``sum``) split over the ranks
    of ``comm``; each rank creates its slice of ``sum``, filled with
    ``initial_accumulator_value``, at construction, as ``Adagrad`` does.

    Parameters
    ----------
    params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize, check_finite
        As for :class:`numadam.Adagrad`.
    foreach, fused, capturable, differentiable
        torch's flags, as for :class:`numadam.Adagrad`.
    max_grad_norm, clip_value, reduction, comm
        The sharding options (see :class:`ShardedOptimizer`).
    """

    plain = Adagrad

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False,
                 check_finite=None, max_grad_norm=None, clip_value=None, reduction="ordered",
                 comm=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        self._init(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                initial_accumulator_value=initial_accumulator_value, eps=eps,
                                maximize=maximize, foreach=foreach, fused=fused,
                                capturable=capturable, differentiable=differentiable),
                   check_finite, max_grad_norm, reduction, comm, clip_value)


class ShardedRMSprop(ShardedOptimizer):
    """:class:`numadam.RMSprop` with its state (``square_avg`` and, with their
    options, ``momentum_buffer`` and ``grad_avg``) split over the ranks of ``comm``.

    Parameters
    ----------
    params, lr, alpha, eps, weight_decay, momentum, centered, maximize, check_finite
        As for :class:`numadam.RMSprop`.
    foreach, fused, capturable, differentiable
        torch's flags, as for :class:`numadam.RMSprop`.
    max_grad_norm, clip_value, reduction, comm
        The sharding options (see :class:`ShardedOptimizer`).
    """

    plain = RMSprop

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, *, maximize=False, check_finite=None,
                 max_grad_norm=None, clip_value=None, reduction="ordered", comm=None,
                 foreach=None,
                 fused=None, capturable=False, differentiable=False):
        self._init(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                momentum=momentum, centered=centered, maximize=maximize,
                                foreach=foreach, fused=fused, capturable=capturable,
                                differentiable=differentiable),
                   check_finite, max_grad_norm, reduction, comm, clip_value)


@functools.lru_cache(maxsize=None)
def sharded_class(plain):
    """The sharded twin of the rule class ``plain``: the classes above for
    the rules they name, else one made here, taking ``plain``'s arguments plus
    ``max_grad_norm``, ``clip_value``, ``reduction`` and ``comm`` (keyword-only). A new rule
    therefore has its sharded optimizer (``numadam.distributed.Sharded<Name>``)
    without code of its own here."""
    for cls in (ShardedAdam, ShardedAdamW, ShardedSGD, ShardedAdagrad, ShardedRMSprop):
        if cls.plain is plain:
            return cls
    signature = inspect.signature(plain.__init__)

    def __init__(self, params, *args, max_grad_norm=None, clip_value=None, reduction="ordered",
                 comm=None, **kwargs):
        bound = signature.bind(self, params, *args, **kwargs)
        given = {k: v for k, v in bound.arguments.items() if k not in ("self", "params")}
        check_finite = given.pop("check_finite", None)
        self._init(params, given, check_finite, max_grad_norm, reduction, comm, clip_value)

    doc = (f":class:`numadam.{plain.__name__}` with its state split over the ranks of "
           "``comm``: its arguments, plus the keyword-only sharding options "
           "``max_grad_norm``, ``clip_value``, ``reduction`` and ``comm`` (see "
           ":class:`ShardedOptimizer`).")
    return type(f"Sharded{plain.__name__}", (ShardedOptimizer,),
                {"plain": plain, "__init__": __init__, "__doc__": doc,
                 "__module__": __name__})


@functools.lru_cache(maxsize=None)
def _stateless(rule):
    """``rule`` as the plain optimizer inside a sharded one runs it: without
    state created at construction (see :meth:`ShardedOptimizer._init`)."""
    return dataclasses.replace(rule, eager_state=False) if rule.eager_state else rule


def _settings_difference(mine, other):
    """The first entry in which two ranks' step settings differ, in words."""
    (groups_a, norm_a, value_a, finite_a), (groups_b, norm_b, value_b, finite_b) = mine, other
    for gi, (a, b) in enumerate(zip(groups_a, groups_b)):
        for key, value in a.items():
            if repr(value) != repr(b[key]):
                return f"param_groups[{gi}][{key!r}] is {value!r} against {b[key]!r}"
    if repr(norm_a) != repr(norm_b):
        return f"max_grad_norm is {norm_a!r} against {norm_b!r}"
    if repr(value_a) != repr(value_b):
        return f"clip_value is {value_a!r} against {value_b!r}"
    return f"check_finite is {finite_a!r} against {finite_b!r}"
