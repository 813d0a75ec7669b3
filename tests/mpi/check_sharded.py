"""Checks of numadam.distributed run under ``mpiexec -n P python -m mpi4py``.

Started by ``tests/test_distributed.py`` with P = 2 and 3 (uneven shards).
``python -m mpi4py`` aborts every rank when one raises, so a failed check
ends the run instead of leaving the other ranks waiting. Rank 0 prints one
``OK <name>`` line per check and ``ALL CHECKS PASSED`` at the end. Names
given as arguments run those checks only.

The reference on every rank is the single-process class (``numadam.Adam``,
``SGD``, ``Adagrad``, ``RMSprop``) stepped with the gradients of all ranks
summed in rank order and divided by P.
"""

import math
import os
import shutil
import sys
import tempfile

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numadam                                      # noqa: E402
import numadam.checkpoint                           # noqa: E402
import numadam.distributed                          # noqa: E402
import optim_configs as oc                          # noqa: E402
from helpers import assert_bits_equal               # noqa: E402
from numadam.distributed import (ShardedAdagrad, ShardedAdam, ShardedAdamW,  # noqa: E402
                                 ShardedRMSprop, ShardedSGD)

COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
STEPS = 30
MOVE = 20          # the step after which state dicts move between sharded and plain
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def rank_gradients(index, step, rank, config, dtype):
    """Rank ``rank``'s gradients (group order), None where the config withholds one."""
    return [oc.gradient(index, step + 1000 * (rank + 1), k, oc.SHAPES[k], dtype)
            if oc.has_gradient(config, step, k) else None
            for k in oc.param_order(config)]


def mean_in_rank_order(per_rank, nranks):
    out = []
    for k, g in enumerate(per_rank[0]):
        if g is None:
            out.append(None)
            continue
        total = g.copy()
        for q in range(1, nranks):
            total = total + per_rank[q][k]
        out.append(total / g.dtype.type(nranks))
    return out


def clipped(grads, max_norm):
    """Single-process clipping as ShardedOptimizer documents it."""
    present = [g for g in grads if g is not None]
    squares = np.concatenate([np.square(g.astype(np.float64)).ravel() for g in present])
    norm = math.sqrt(math.fsum(squares.tolist()))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        grads = [None if g is None else g * g.dtype.type(coef) for g in grads]
    return grads, norm


def build(name, dtype, sharded, comm=COMM, params=None, **extra):
    config = oc.CONFIGS[name]
    index = oc.index(name)
    if params is None:
        params = oc.initial_params(index, dtype)
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    if sharded:
        cls = getattr(numadam.distributed, "Sharded" + config["cls"])
        return cls(groups, **config["kwargs"], comm=comm, **extra), params
    return getattr(numadam, config["cls"])(groups, **config["kwargs"], **extra), params


def run_pair(name, dtype, opt, ref, first, last, nranks, rank, max_norm=None):
    """Steps ``first..last`` of ``opt`` (this rank's gradients) and ``ref``."""
    config = oc.CONFIGS[name]
    index = oc.index(name)
    schedule = config.get("schedule", {})
    for step in range(first, last + 1):
        for o in (opt, ref):
            if o is not None and step in schedule:
                for group, lr in zip(o.param_groups, schedule[step]):
                    group["lr"] = lr
        per_rank = [rank_gradients(index, step, q, config, dtype) for q in range(nranks)]
        if opt is not None:
            opt.step(per_rank[rank])
        if ref is not None:
            mean = mean_in_rank_order(per_rank, nranks)
            if max_norm is not None:
                mean, norm = clipped(mean, max_norm)
                assert opt is None or opt.last_grad_norm == norm, (opt.last_grad_norm, norm)
            ref.step(mean)


def assert_same(actual, expected, what):
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_bits_equal(a, e, f"{what} param {k}")


def assert_same_state(sd, ref_sd, what):
    assert sd["state"].keys() == ref_sd["state"].keys(), what
    for pid, entry in ref_sd["state"].items():
        assert sd["state"][pid].keys() == entry.keys(), (what, pid)
        for key, value in entry.items():
            if key == "step":
                assert sd["state"][pid][key] == value, (what, pid)
            else:
                assert_bits_equal(sd["state"][pid][key], value, f"{what} state {pid} {key}")
    for a, b in zip(sd["param_groups"], ref_sd["param_groups"]):
        assert a == b, (what, a, b)


def expect_everywhere(exc_type, fn, *fragments, comm=COMM):
    """``fn`` raises ``exc_type`` on every rank of ``comm``, with one message."""
    try:
        fn()
        outcome = None
    except Exception as error:                  # noqa: BLE001 - compared below
        outcome = (type(error).__name__, str(error))
    outcomes = comm.allgather(outcome)
    assert all(o is not None for o in outcomes), f"not raised everywhere: {outcomes}"
    assert len(set(outcomes)) == 1, f"ranks disagree: {outcomes}"
    name, message = outcomes[0]
    assert name == exc_type.__name__, outcomes[0]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def snapshot(opt, params):
    return [p.copy() for p in params], opt.state_dict(root=None)


def assert_unchanged(opt, params, before, what):
    assert_same(params, before[0], what)
    assert_same_state(opt.state_dict(root=None), before[1], what)


# ----------------------------------------------------------------- parity
@check
def every_registry_config_is_bit_identical_to_one_process_and_moves_state_both_ways():
    """Every configuration of every rule on the rank-ordered mean; at step
    ``MOVE`` the sharded state dict loads into the plain class, and the plain
    one (passed on the root only) into the sharded class: all four continue
    bit for bit alike."""
    for name in oc.CONFIGS:
        for dtype in oc.DTYPES:
            what = f"{name} {dtype}"
            opt, params = build(name, dtype, True)
            ref, ref_params = build(name, dtype, False)
            # Adagrad's state exists from construction, as its step 0
            assert_same_state(opt.state_dict(root=None), ref.state_dict(), f"{what} at 0")
            run_pair(name, dtype, opt, ref, 1, MOVE, P, RANK)
            assert_same(params, ref_params, what)
            plain, plain_params = build(name, dtype, False, params=[p.copy() for p in params])
            plain.load_state_dict(opt.state_dict(root=None))
            sharded, sharded_params = build(name, dtype, True,
                                            params=[p.copy() for p in ref_params])
            sharded.load_state_dict(ref.state_dict() if RANK == 0 else None)
            run_pair(name, dtype, opt, ref, MOVE + 1, STEPS, P, RANK)
            run_pair(name, dtype, sharded, plain, MOVE + 1, STEPS, P, RANK)
            for how, actual in (("sharded", params), ("plain <- sharded", plain_params),
                                ("sharded <- plain", sharded_params)):
                assert_same(actual, ref_params, f"{what} {how}")
            assert_same_state(plain.state_dict(), ref.state_dict(), f"{what} plain <- sharded")
            for sharded_opt in (opt, sharded):
                sd = sharded_opt.state_dict()
                if RANK == 0:
                    assert_same_state(sd, ref.state_dict(), what)
                else:
                    assert sd is None


@check
def sgd_momentum_starts_per_parameter_across_steps_and_loads():
    """torch's first momentum step (the buffer is the gradient itself) comes
    per parameter from the live flag: a parameter withheld at first starts
    later, also after a state dict without it was loaded."""
    def gradients(step, rank):
        return [None if k == 1 and step <= 3 else
                oc.gradient(7, step + 1000 * (rank + 1), k, shape, np.float32)
                for k, shape in enumerate(oc.SHAPES)]

    def arrays():
        return oc.initial_params(7, np.float32)

    params, ref_params = arrays(), arrays()
    kwargs = dict(lr=0.05, momentum=0.9, dampening=0.25, weight_decay=0.01)
    opt, ref = ShardedSGD(params, **kwargs), numadam.SGD(ref_params, **kwargs)
    for step in range(1, 3):
        opt.step(gradients(step, RANK))
        ref.step(mean_in_rank_order([gradients(step, q) for q in range(P)], P))
    saved = ref.state_dict()
    assert sorted(saved["state"]) == [0, 2], saved["state"].keys()
    loaded_params = [p.copy() for p in ref_params]
    loaded = ShardedSGD(loaded_params, **kwargs)
    loaded.load_state_dict(saved if RANK == 0 else None)
    for step in range(3, 9):
        mean = mean_in_rank_order([gradients(step, q) for q in range(P)], P)
        opt.step(gradients(step, RANK))
        loaded.step(gradients(step, RANK))
        ref.step(mean)
    assert_same(params, ref_params, "sgd first steps")
    assert_same(loaded_params, ref_params, "sgd first steps after a load")
    assert_same_state(loaded.state_dict(root=None), ref.state_dict(), "sgd after a load")


@check
def hyperparameters_of_every_rule_are_checked_and_agreed_at_the_step():
    """A state row that would have to appear after the first step, a rule's
    cross-field check failing on one rank, one rank's edit: each raises the
    same error on every rank and changes nothing."""
    cases = [(ShardedSGD, dict(lr=0.1), "momentum", 0.9, "momentum_buffer"),
             (ShardedRMSprop, dict(lr=0.01), "centered", True, "grad_avg"),
             (ShardedRMSprop, dict(lr=0.01, centered=True), "momentum", 0.5,
              "momentum_buffer"),
             (ShardedRMSprop, dict(lr=0.01, centered=True, momentum=0.5), "momentum", 0.0,
              "layout of the state"),
             (ShardedAdam, dict(lr=0.01), "amsgrad", True, "max_exp_avg_sq")]
    for cls, kwargs, key, value, fragment in cases:
        params = [np.linspace(-1, 1, 7), np.ones((2, 3))]
        opt = cls(params, **kwargs)
        good = [np.cos(p) * (RANK + 1) for p in params]
        opt.step(good)
        before = snapshot(opt, params)
        old = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        expect_everywhere(ValueError, lambda: opt.step(good), "after the first step", fragment,
                          "raised on every rank]")
        opt.param_groups[0][key] = old
        assert_unchanged(opt, params, before, f"{cls.__name__} {key}")
    opt = ShardedSGD([np.ones(5)], lr=0.1, momentum=0.5)
    if RANK == P - 1:
        opt.param_groups[0]["nesterov"] = True
        opt.param_groups[0]["dampening"] = 0.1
    expect_everywhere(ValueError, lambda: opt.step([np.ones(5)]), "nesterov=True requires",
                      f"on rank {P - 1}")
    opt = ShardedAdagrad([np.ones(5)], lr=0.1)
    if RANK == 1:
        opt.param_groups[0]["lr_decay"] = 0.5
    expect_everywhere(ValueError, lambda: opt.step([np.ones(5)]), "hyperparameters differ",
                      "param_groups[0]['lr_decay'] is 0.0 against 0.5 (rank 0 against rank 1)")
    expect_everywhere(ValueError, lambda: (ShardedSGD if RANK == 0 else ShardedRMSprop)(
        [np.ones(5)]), "optimizer is 'SGD' against 'RMSprop'")


@check
def mpi_reduction_keeps_replicas_identical_and_close_to_one_process():
    cases = [("amsgrad", "float32"), ("amsgrad", "float64"),
             ("sgd_nesterov_weight_decay", "float32"), ("adagrad_plain", "float64"),
             ("rmsprop_centered_momentum_wd", "float32")]
    for name, dtype in cases:
        opt, params = build(name, dtype, True, reduction="mpi")
        ref, ref_params = build(name, dtype, False)
        run_pair(name, dtype, opt, ref, 1, STEPS, P, RANK)
        for p, r in zip(params, ref_params):
            everyone = COMM.allgather(p)
            for other in everyone:
                assert_bits_equal(other, p, "replica")
            np.testing.assert_allclose(p, r, rtol=1e-5 if dtype == "float32" else 1e-12)


@check
def clipping_matches_one_process_clipping_the_mean():
    cases = [(name, dtype) for name in ("adam", "adamw_groups_missing_grads", "groups_schedule")
             for dtype in oc.DTYPES]
    cases += [("sgd_groups_schedule_missing_grads", "float64"), ("adagrad_plain", "float32"),
              ("rmsprop_centered", "float64")]
    for name, dtype in cases:
        for max_norm in (0.05, 1e6):      # clipping active, and inactive
            opt, params = build(name, dtype, True, max_grad_norm=max_norm)
            ref, ref_params = build(name, dtype, False)
            run_pair(name, dtype, opt, ref, 1, 15, P, RANK, max_norm=max_norm)
            assert_same(params, ref_params, f"clip {name} {dtype} {max_norm}")


@check
def more_ranks_than_elements_and_mixed_dtypes():
    def grads(step, rank):
        rng = np.random.default_rng(100 * step + rank)
        return [rng.standard_normal(1).astype(np.float32),
                rng.standard_normal(2),
                rng.standard_normal(0).astype(np.float32),
                rng.standard_normal((2, 3)).astype(np.float32)]

    def arrays():
        return [np.ones(1, np.float32), np.full(2, 0.5), np.zeros(0, np.float32),
                np.arange(6, dtype=np.float32).reshape(2, 3)]

    rules = [(ShardedAdamW, numadam.AdamW, dict(lr=0.1, amsgrad=True), 3),
             (ShardedSGD, numadam.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), 1),
             (ShardedSGD, numadam.SGD, dict(lr=0.1), 0),
             (ShardedAdagrad, numadam.Adagrad, dict(lr=0.1, initial_accumulator_value=0.5), 1),
             (ShardedRMSprop, numadam.RMSprop, dict(lr=0.1, momentum=0.5, centered=True), 3)]
    for cls, plain, kwargs, rows in rules:
        params, ref_params = arrays(), arrays()
        opt, ref = cls(params, **kwargs), plain(ref_params, **kwargs)
        assert_same_state(opt.state_dict(root=None), ref.state_dict(), f"{cls.__name__} at 0")
        for step in range(10):
            opt.step(grads(step, RANK))
            ref.step(mean_in_rank_order([grads(step, q) for q in range(P)], P))
        assert_same(params, ref_params, f"tiny {cls.__name__}")
        assert_same_state(opt.state_dict(root=None), ref.state_dict(), f"{cls.__name__}")
        plain_bytes = sum(b.state.nbytes for b in ref._buckets)
        assert COMM.allreduce(opt.state_nbytes) == plain_bytes == rows * (4 * 7 + 8 * 2), \
            (cls.__name__, plain_bytes)


@check
def owned_gradient_buffers_and_closure():
    def arrays():
        return [np.linspace(-1, 1, 11).astype(np.float32), np.ones((2, 2), np.float32)]

    params, ref_params = arrays(), arrays()
    opt = ShardedAdam(params, lr=0.05)
    ref = numadam.Adam(ref_params, lr=0.05)
    for step in range(8):
        per_rank = [[(q + 1) * np.sin(step + p) for p in arrays()] for q in range(P)]
        per_rank = [[g.astype(np.float32) for g in gs] for gs in per_rank]

        def closure():
            for buffer, g in zip(opt.grads, per_rank[RANK]):
                buffer[...] = g
            return float(step)

        assert opt.step(closure=closure) == float(step)
        ref.step(mean_in_rank_order(per_rank, P))
    assert_same(params, ref_params, "owned")


@check
def torch_habits_as_in_the_plain_classes():
    """torch's flags, step(closure) positionally, zero_grad(set_to_none=...),
    and a closure that steps its own optimizer refused on every rank."""
    def arrays():
        return [np.linspace(-1, 1, 7), np.ones((2, 3))]

    params, ref_params = arrays(), arrays()
    opt = ShardedAdam(params, lr=0.05, weight_decay=0.5, foreach=True, fused=None,
                      capturable=False, differentiable=False, decoupled_weight_decay=True)
    ref = numadam.AdamW(ref_params, lr=0.05, weight_decay=0.5)
    per_rank = [[(q + 1) * np.cos(p) for p in arrays()] for q in range(P)]
    for step in range(4):
        def closure():
            opt.zero_grad(set_to_none=True)
            assert not any(g.any() for g in opt.grads)
            for buffer, g in zip(opt.grads, per_rank[RANK]):
                buffer[...] = g
            return float(step)

        assert opt.step(closure) == float(step)
        ref.step(mean_in_rank_order(per_rank, P))
    assert_same(params, ref_params, "decoupled_weight_decay=True")
    opt.zero_grad(set_to_none=False)
    assert not any(g.any() for g in opt.grads)
    for cls in (ShardedAdamW, ShardedSGD, ShardedAdagrad, ShardedRMSprop):
        cls([np.ones(3)], fused=True, foreach=False)
        expect_everywhere(ValueError, lambda: cls([np.ones(3)], capturable=True),
                          "capturable=True is not supported", "raised on every rank]")
        expect_everywhere(ValueError, lambda: cls([np.ones(3)], fused=True, foreach=True),
                          "cannot be used together")
    expect_everywhere(TypeError, lambda: ShardedAdamW([np.ones(3)],
                                                      decoupled_weight_decay=True),
                      "decoupled_weight_decay")

    before = snapshot(opt, params)

    def nested():
        opt.step()
        return 0.0

    expect_everywhere(RuntimeError, lambda: opt.step(nested), "inside its own closure",
                      "raised on every rank]")
    expect_everywhere(TypeError, lambda: opt.step(nested, closure=nested), "closure twice")
    assert_unchanged(opt, params, before, "after the refused steps")


@check
def threads_of_one_rank_take_turns():
    """Two threads of every rank step one optimizer: without the lock their
    collectives interleave on one communicator (wrong sums, or a hang)."""
    import threading

    def arrays():
        return [np.linspace(-1, 1, 1000), np.ones(501, np.float32)]

    params, ref_params = arrays(), arrays()
    opt = ShardedAdam(params, lr=0.01)
    ref = numadam.Adam(ref_params, lr=0.01)
    per_rank = [[(q + 1) * np.sin(p) for p in arrays()] for q in range(P)]
    errors = []

    def work():
        try:
            for _ in range(10):
                opt.step(per_rank[RANK])
        except BaseException as error:          # noqa: BLE001 - reported below
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    for _ in range(20):
        ref.step(mean_in_rank_order(per_rank, P))
    assert_same(params, ref_params, "two threads")


# ------------------------------------------------------------ checkpoints
def sub_communicator(size):
    """The first ``size`` ranks (None on the others)."""
    sub = COMM.Split(0 if RANK < size else MPI.UNDEFINED, RANK)
    return None if sub == MPI.COMM_NULL else sub


def shared_tmpdir():
    path = tempfile.mkdtemp(prefix="numadam-mpi-") if RANK == 0 else None
    return COMM.bcast(path, 0)


@check
def checkpoint_loads_on_fewer_ranks_and_into_the_plain_class_and_continues_bit_exactly():
    directory = shared_tmpdir()
    path = os.path.join(directory, "sharded.npz")
    for name in ("amsgrad_adamw_maximize", "adamw_groups_missing_grads",
                 "sgd_groups_schedule_missing_grads", "adagrad_groups_schedule_missing_grads",
                 "rmsprop_groups_schedule_missing_grads"):
        dtype = "float32"
        opt, params = build(name, dtype, True)
        ref, ref_params = build(name, dtype, False)
        run_pair(name, dtype, opt, ref, 1, 12, P, RANK)
        opt.save(path)
        saved_params = [p.copy() for p in params]
        # The plain class in one process resumes from the file.
        solo, solo_params = build(name, dtype, False, params=[p.copy() for p in saved_params])
        solo.load(path)
        run_pair(name, dtype, None, solo, 13, 24, P, RANK)
        run_pair(name, dtype, None, ref, 13, 24, P, RANK)
        assert_same(solo_params, ref_params, f"{name} resumed in one process")
        # P - 1 ranks (resharded) resume from the same file.
        sub = sub_communicator(P - 1)
        if sub is not None:
            opt2, params2 = build(name, dtype, True, comm=sub,
                                  params=[p.copy() for p in saved_params])
            opt2.load(path)
            twin, twin_params = build(name, dtype, False,
                                      params=[p.copy() for p in saved_params])
            twin.load(path)
            run_pair(name, dtype, opt2, twin, 13, 24, P - 1, sub.Get_rank())
            assert_same(params2, twin_params, f"{name} resumed on {P - 1} ranks")
            sub.Free()
        COMM.Barrier()


@check
def adam_checkpoint_loads_into_sharded_adam():
    directory = shared_tmpdir()
    path = os.path.join(directory, "single.npz")
    name, dtype = "groups_schedule", "float64"
    ref, ref_params = build(name, dtype, False)
    run_pair(name, dtype, None, ref, 1, 110, P, RANK)
    if RANK == 0:
        ref.save(path)
    COMM.Barrier()
    opt, params = build(name, dtype, True, params=[p.copy() for p in ref_params])
    opt.load(path)
    assert_same_state(opt.state_dict(root=None), ref.state_dict(), "loaded")
    run_pair(name, dtype, opt, ref, 111, 130, P, RANK)
    assert_same(params, ref_params, "Adam -> ShardedAdam")
    # and a state dict passed on the root only
    opt3, params3 = build(name, dtype, True, params=[p.copy() for p in ref_params])
    opt3.load_state_dict(ref.state_dict() if RANK == 0 else None)
    assert_same_state(opt3.state_dict(root=None), ref.state_dict(), "load_state_dict")


@check
def a_failed_checkpoint_leaves_the_previous_one_intact_on_every_rank():
    directory = shared_tmpdir()
    path = os.path.join(directory, "ckpt.npz")
    opt, params = build("amsgrad", "float32", True)
    run_pair("amsgrad", "float32", opt, None, 1, 5, P, RANK)
    opt.save(path)
    with open(path, "rb") as f:
        good = f.read() if RANK == 0 else None
    run_pair("amsgrad", "float32", opt, None, 6, 8, P, RANK)

    # a rank passes another path: refused everywhere before anything is written
    other = path if RANK != P - 1 else path + ".other"
    expect_everywhere(ValueError, lambda: opt.save(other), "different (path, root)")
    # a rank's argument is invalid
    bad = path if RANK != 1 else None
    expect_everywhere(TypeError, lambda: opt.save(bad), f"on rank 1 of {P}")

    # the writing rank fails half-way through the file
    real_save = numadam.checkpoint.save

    def failing_save(state_dict, target, schedule=None):
        with open(target + ".partial", "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (injected)")

    numadam.checkpoint.save = failing_save
    try:
        expect_everywhere(OSError, lambda: opt.save(path), "disk full (injected)", "on rank 0")
    finally:
        numadam.checkpoint.save = real_save
    if RANK == 0:
        with open(path, "rb") as f:
            assert f.read() == good
        os.unlink(path + ".partial")
        assert sorted(os.listdir(directory)) == ["ckpt.npz"], os.listdir(directory)

    # a corrupted file or a state dict that does not fit: nothing changes anywhere
    before = snapshot(opt, params)
    if RANK == 0:
        with open(path + ".bad", "wb") as f:
            f.write(good[: len(good) // 2])
    expect_everywhere(numadam.CheckpointError, lambda: opt.load(path + ".bad"), "truncated")
    wrong = None
    if RANK == 0:
        wrong = numadam.load(path)
        wrong["state"][1]["exp_avg"] = wrong["state"][1]["exp_avg"][:2]
    expect_everywhere(ValueError, lambda: opt.load_state_dict(wrong), "shape")
    expect_everywhere(ValueError, lambda: opt.state_dict(root=P), "root must be a rank")
    assert_unchanged(opt, params, before, "after refused loads")


@check
def ranks_passing_different_roots_are_refused_everywhere():
    """A collective whose root differs between ranks would pair a Gatherv on
    one rank with another root's (or an Allgatherv) on the next: a deadlock.
    The roots are agreed first, and the refusal leaves every rank ready for
    the next collective."""
    directory = shared_tmpdir()
    path = os.path.join(directory, "roots.npz")
    opt, params = build("amsgrad", "float32", True)
    run_pair("amsgrad", "float32", opt, None, 1, 3, P, RANK)
    before = snapshot(opt, params)
    full = before[1]
    for roots in ([RANK for _ in range(P)], [None] + [0] * (P - 1), [0] * (P - 1) + [None]):
        expect_everywhere(ValueError, lambda: opt.state_dict(root=roots[RANK]),
                          "the ranks passed different roots")
    expect_everywhere(ValueError, lambda: opt.load_state_dict(full, root=RANK),
                      "the ranks passed different roots")
    expect_everywhere(ValueError, lambda: opt.save(path, root=RANK),
                      "different (path, root)")
    assert not os.path.exists(path)
    opt.save(path, root=P - 1)                       # the same root everywhere: fine
    expect_everywhere(ValueError, lambda: opt.load(path, root=RANK),
                      "the ranks passed different roots")
    assert_unchanged(opt, params, before, "after different roots")
    opt.load(path, root=0)
    assert_unchanged(opt, params, before, "after a save and load")
    COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(directory)


# ------------------------------------------------------------- bad input
@check
def a_bad_gradient_on_one_rank_raises_everywhere_and_changes_nothing():
    opt, params = build("adamw_groups_missing_grads", "float32", True, check_finite="raise")
    run_pair("adamw_groups_missing_grads", "float32", opt, None, 1, 3, P, RANK)
    before = snapshot(opt, params)
    good = [np.ones(p.shape, np.float32) for p in params]

    def with_rank(rank, replace):
        return lambda: opt.step(replace(list(good)) if RANK == rank else good)

    def shape(g):
        g[1] = np.ones(5, np.float32)
        return g

    def dtype(g):
        g[0] = g[0].astype(np.float64)
        return g

    def nan(g):
        g[2] = g[2].copy()
        g[2][1, 3] = np.nan
        return g

    def none(g):
        g[0] = None
        return g

    expect_everywhere(ValueError, with_rank(P - 1, shape), "shape", f"on rank {P - 1}")
    expect_everywhere(ValueError, with_rank(0, dtype), "dtype", "on rank 0")
    expect_everywhere(ValueError, with_rank(1, lambda g: g[:2]), "2 gradients")
    expect_everywhere(ValueError, with_rank(1, none), "None on others")
    expect_everywhere(FloatingPointError, with_rank(P - 1, nan), "parameter 2",
                      f"rank(s) [{P - 1}] passed NaN")
    huge = [np.full(p.shape, 3e38, np.float32) for p in params]
    expect_everywhere(FloatingPointError, lambda: opt.step(huge), "sum overflowed")

    def closure():
        if RANK == 1:
            raise KeyError("no data on this rank")
    expect_everywhere(KeyError, lambda: opt.step(good, closure=closure), "no data")
    if RANK == 0:
        opt.param_groups[1]["lr"] = 0.5
    expect_everywhere(ValueError, lambda: opt.step(good), "hyperparameters differ")
    if RANK == 0:
        opt.param_groups[1]["lr"] = before[1]["param_groups"][1]["lr"]
    assert_unchanged(opt, params, before, "after refused steps")

    opt.check_finite = "skip"
    opt.step(nan(list(good)) if RANK == 0 else good)
    assert opt.skipped_steps == 1
    assert_unchanged(opt, params, before, "after a skipped step")
    opt.step(good)
    assert not np.array_equal(params[0], before[0][0])


@check
def different_layouts_are_refused_at_construction_on_every_rank():
    def make(shapes, **kwargs):
        return lambda: ShardedAdam([np.zeros(s, np.float32) for s in shapes], **kwargs)

    shapes = [(3,), (2, 2)]
    odd = [(3,), (4,)] if RANK == P - 1 else shapes
    expect_everywhere(ValueError, make(odd), "different parameters",
                      "params'][1] has shape (2, 2)")
    expect_everywhere(ValueError, make(shapes, lr=0.1 if RANK == 1 else 0.2), "'lr'")
    expect_everywhere(ValueError, make(shapes[:1] if RANK == 0 else shapes), "1 arrays")
    expect_everywhere(ValueError, make(shapes, max_grad_norm=-1.0 if RANK == 1 else 1.0),
                      "max_grad_norm", "on rank 1")
    bad = np.zeros((4, 4), np.float32)[:, ::2]

    def noncontiguous():
        return ShardedAdam([bad if RANK == P - 1 else np.zeros((4, 2), np.float32)])
    expect_everywhere(ValueError, noncontiguous, "not C-contiguous", f"on rank {P - 1}")


def main():
    import time
    chosen = [fn for fn in CHECKS if not sys.argv[1:] or fn.__name__ in sys.argv[1:]]
    assert len(chosen) == len(sys.argv[1:]) or not sys.argv[1:], f"unknown: {sys.argv[1:]}"
    for fn in chosen:
        start = time.perf_counter()
        fn()
        COMM.Barrier()
        if RANK == 0:
            print(f"OK {fn.__name__} ({time.perf_counter() - start:.2f} s)", flush=True)
    if RANK == 0:
        print(f"ALL CHECKS PASSED ({len(chosen)} checks on {P} ranks)", flush=True)


if __name__ == "__main__":
    main()
