"""Checkpoints of a sharded optimizer with its learning-rate schedule, run
under ``mpiexec -n P python -m mpi4py`` (P = 2 and 3, from
``tests/test_distributed.py``).

Every rank builds its own schedule over its own ``ShardedAdam``/``ShardedAdamW``
and steps it after each optimizer step, as all ranks of a training job do.
A run saved at step ``STOP`` with its schedule resumes on P ranks, on P - 1
ranks and in the plain class in one process (and a plain checkpoint in the
sharded class) with the parameter bits and the rates of the uninterrupted run.
Refused saves and loads raise on every rank and change nothing anywhere.
Rank 0 prints ``OK <name>`` per check and ``ALL CHECKS PASSED`` at the end.
"""

import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from check_sharded import (COMM, P, RANK, assert_same, assert_same_state, build,  # noqa: E402
                           expect_everywhere, mean_in_rank_order, rank_gradients,
                           shared_tmpdir, snapshot, sub_communicator)

import numadam                                      # noqa: E402
import optim_configs as oc                          # noqa: E402
from numadam import schedules                       # noqa: E402

STOP, END = 9, 21
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def schedule_makers():
    """(label, make(opt)) pairs with random hyperparameters, the same on every
    rank (one seed); both schedules have a rate per group and OneCycleLR
    cycles Adam's first beta too."""
    rng = np.random.default_rng(1234)
    t_max, eta_min = int(rng.integers(5, 15)), float(rng.uniform(1e-5, 1e-3))
    max_lr = [float(x) for x in rng.uniform(5e-3, 5e-2, 2)]
    pct, div = float(rng.uniform(0.2, 0.5)), float(rng.uniform(5, 30))
    total = END + int(rng.integers(1, 5))
    return [("CosineAnnealingLR",
             lambda opt: schedules.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)),
            ("OneCycleLR",
             lambda opt: schedules.OneCycleLR(opt, max_lr=max_lr, total_steps=total,
                                              pct_start=pct, div_factor=div))]


CASES = [("adamw_groups_missing_grads", "float32"), ("groups_schedule", "float64")]


def hyper(opt):
    """What a schedule sets: each group's rate and betas, as bits."""
    return [(np.float64(g["lr"]).view(np.uint64), tuple(g["betas"])) for g in opt.param_groups]


def run(name, dtype, opt, sched, first, last, nranks, rank):
    """Steps ``first..last`` of ``opt`` then ``sched``; the rates each used.

    ``rank`` None: ``opt`` is the plain class, stepped with the rank-ordered
    mean of all ranks' gradients (what the sharded class applies).
    """
    config, index = oc.CONFIGS[name], oc.index(name)
    used = []
    for step in range(first, last + 1):
        per_rank = [rank_gradients(index, step, q, config, dtype) for q in range(nranks)]
        used.append(hyper(opt))
        opt.step(mean_in_rank_order(per_rank, nranks) if rank is None else per_rank[rank])
        sched.step()
    return used


@check
def sharded_checkpoints_with_a_schedule_resume_bit_exactly_anywhere():
    directory = shared_tmpdir()
    path = os.path.join(directory, "sched.npz")
    for name, dtype in CASES:
        for label, make in schedule_makers():
            what = f"{name} {dtype} {label}"
            opt, params = build(name, dtype, True)
            sched = make(opt)
            run(name, dtype, opt, sched, 1, STOP, P, RANK)
            opt.save(path, schedule=sched)
            saved_params, saved_sched = [p.copy() for p in params], sched.state_dict()
            assert numadam.load(path)["schedule"] == saved_sched, what
            # the uninterrupted run
            rates = run(name, dtype, opt, sched, STOP + 1, END, P, RANK)

            # P ranks, fresh optimizer and schedule
            opt2, params2 = build(name, dtype, True, params=[p.copy() for p in saved_params])
            sched2 = make(opt2)
            opt2.load(path, schedule=sched2)
            assert sched2.state_dict() == saved_sched, what
            assert_same(params2, saved_params, what)
            assert run(name, dtype, opt2, sched2, STOP + 1, END, P, RANK) == rates, what
            assert_same(params2, params, f"{what} resumed on {P} ranks")

            # the plain class in one process
            solo, solo_params = build(name, dtype, False,
                                      params=[p.copy() for p in saved_params])
            sched3 = make(solo)
            solo.load(path, schedule=sched3)
            assert sched3.state_dict() == saved_sched, what
            assert run(name, dtype, solo, sched3, STOP + 1, END, P, None) == rates, what
            assert_same(solo_params, params, f"{what} resumed in the plain class")

            # P - 1 ranks (resharded; one process for P = 2)
            sub = sub_communicator(P - 1)
            if sub is not None:
                opt4, params4 = build(name, dtype, True, comm=sub,
                                      params=[p.copy() for p in saved_params])
                sched4 = make(opt4)
                opt4.load(path, schedule=sched4)
                # the ranks' gradients differ with their count: compare with
                # the plain class fed the mean of P - 1 ranks
                twin, twin_params = build(name, dtype, False,
                                          params=[p.copy() for p in saved_params])
                sched5 = make(twin)
                twin.load(path, schedule=sched5)
                got = run(name, dtype, opt4, sched4, STOP + 1, END, P - 1, sub.Get_rank())
                assert got == run(name, dtype, twin, sched5, STOP + 1, END, P - 1, None)
                assert got == rates, what          # the schedule does not see gradients
                assert_same(params4, twin_params, f"{what} resumed on {P - 1} ranks")
                sub.Free()
            COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(directory)


@check
def a_plain_checkpoint_with_a_schedule_resumes_in_the_sharded_class():
    directory = shared_tmpdir()
    path = os.path.join(directory, "plain.npz")
    for name, dtype in CASES:
        for label, make in schedule_makers():
            what = f"{name} {dtype} {label}"
            ref, ref_params = build(name, dtype, False)
            ref_sched = make(ref)
            run(name, dtype, ref, ref_sched, 1, STOP, P, None)
            if RANK == 0:
                ref.save(path, schedule=ref_sched)
            COMM.Barrier()
            opt, params = build(name, dtype, True, params=[p.copy() for p in ref_params])
            sched = make(opt)
            opt.load(path, schedule=sched)
            assert sched.state_dict() == ref_sched.state_dict(), what
            assert_same_state(opt.state_dict(root=None), ref.state_dict(), what)
            rates = run(name, dtype, ref, ref_sched, STOP + 1, END, P, None)
            assert run(name, dtype, opt, sched, STOP + 1, END, P, RANK) == rates, what
            assert_same(params, ref_params, f"{what} plain -> sharded")
            COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(directory)


def unchanged(opt, params, sched, before, what):
    assert_same(params, before[0][0], what)
    assert_same_state(opt.state_dict(root=None), before[0][1], what)
    assert sched.state_dict() == before[1], what
    assert hyper(opt) == before[2], what


@check
def refused_schedule_saves_and_loads_raise_everywhere_and_change_nothing():
    directory = shared_tmpdir()
    path = os.path.join(directory, "refused.npz")
    name, dtype = "adamw_groups_missing_grads", "float32"
    (_, cosine), (_, onecycle) = schedule_makers()
    opt, params = build(name, dtype, True)
    sched = cosine(opt)
    run(name, dtype, opt, sched, 1, STOP, P, RANK)

    # saves: refused on every rank, nothing written
    last = P - 1
    mixed = sched if RANK != last else None
    expect_everywhere(ValueError, lambda: opt.save(path, schedule=mixed),
                      "the ranks passed different schedules", "CosineAnnealingLR")
    other_opt, _ = build(name, dtype, True)
    other = onecycle(other_opt) if RANK == last else None
    expect_everywhere(ValueError, lambda: opt.save(path, schedule=other),
                      "drives another optimizer", f"on rank {last} of {P}")
    foreign = schedules.CosineAnnealingLR(other_opt, T_max=5) if RANK == last else sched
    expect_everywhere(ValueError, lambda: opt.save(path, schedule=foreign),
                      "drives another optimizer", f"on rank {last} of {P}")
    # a hand-set rate the schedule's checks refuse at load: refused at save
    good = list(sched.base_lrs)
    if RANK == last:
        sched.base_lrs[0] = float("nan")
    expect_everywhere(ValueError, lambda: opt.save(path, schedule=sched),
                      "would not load back", f"on rank {last} of {P}")
    sched.base_lrs[:] = good
    assert not os.path.exists(path)
    assert sorted(os.listdir(directory)) == [], os.listdir(directory)

    # loads: refused on every rank, optimizer, schedule and rates unchanged
    opt.save(path)                                  # no schedule in this file
    opt.save(path + ".s", schedule=sched)
    run(name, dtype, opt, sched, STOP + 1, STOP + 3, P, RANK)
    before = (snapshot(opt, params), sched.state_dict(), hyper(opt))
    expect_everywhere(numadam.CheckpointError, lambda: opt.load(path, schedule=sched),
                      "holds no schedule")
    unchanged(opt, params, sched, before, "a file without a schedule")
    mixed = sched if RANK != last else None
    expect_everywhere(ValueError, lambda: opt.load(path + ".s", schedule=mixed),
                      "the ranks passed different schedules")
    unchanged(opt, params, sched, before, "ranks disagreeing at load")
    foreign = schedules.CosineAnnealingLR(other_opt, T_max=5) if RANK == last else sched
    expect_everywhere(ValueError, lambda: opt.load(path + ".s", schedule=foreign),
                      "drives another optimizer", f"on rank {last} of {P}")
    unchanged(opt, params, sched, before, "a schedule of another optimizer")

    # schedule states that do not fit root's schedule, written by rank 0
    saved = numadam.load(path + ".s")
    states = {"another class": onecycle(build(name, dtype, False)[0]).state_dict(),
              "one rate for two groups": dict(saved["schedule"], base_lrs=[0.01]),
              "a negative rate": dict(saved["schedule"], _last_lr=[0.01, -1.0]),
              "T_max a string": dict(saved["schedule"], T_max="ten")}
    for what, state in states.items():
        if RANK == 0:
            numadam.save({k: v for k, v in saved.items() if k != "schedule"},
                         path + ".bad", schedule=state)
        COMM.Barrier()
        expect_everywhere(numadam.CheckpointError,
                          lambda: opt.load(path + ".bad", schedule=sched),
                          "holds a schedule state that does not fit CosineAnnealingLR")
        unchanged(opt, params, sched, before, what)
    # a corrupted file: a byte of the schedule's state in the header (a
    # UTF-32 .npy string) changed in place
    if RANK == 0:
        with open(path + ".s", "rb") as f:
            data = f.read()
        key = '"last_epoch"'.encode("utf-32-le")
        at = data.index(key)
        with open(path + ".bad", "wb") as f:
            f.write(data[:at] + '"last_epocX"'.encode("utf-32-le") + data[at + len(key):])
    COMM.Barrier()
    expect_everywhere(numadam.CheckpointError, lambda: opt.load(path + ".bad", schedule=sched),
                      "corrupted")
    unchanged(opt, params, sched, before, "a corrupted file")

    # a file with a schedule loads without schedule=: the optimizer only
    opt.load(path + ".s")
    assert sched.state_dict() == before[1]
    mirror, _ = build(name, dtype, False)
    mirror.load(path + ".s")
    assert_same_state(opt.state_dict(root=None), mirror.state_dict(), "optimizer only")

    # schedules of different classes over the ranks' optimizers
    fresh, fresh_params = build(name, dtype, True)
    kind = schedules.StepLR(fresh, step_size=3) if RANK == last else cosine(fresh)
    expect_everywhere(ValueError, lambda: fresh.save(path + ".k", schedule=kind),
                      "the ranks passed different schedules", "CosineAnnealingLR",
                      f"StepLR' on rank {last}")
    before = (snapshot(fresh, fresh_params), kind.state_dict(), hyper(fresh))
    expect_everywhere(ValueError, lambda: fresh.load(path + ".s", schedule=kind),
                      "the ranks passed different schedules", f"StepLR' on rank {last}")
    unchanged(fresh, fresh_params, kind, before, "schedules of different classes")
    assert not os.path.exists(path + ".k")
    COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(directory)


def main():
    chosen = [fn for fn in CHECKS if not sys.argv[1:] or fn.__name__ in sys.argv[1:]]
    assert len(chosen) == len(sys.argv[1:]) or not sys.argv[1:], f"unknown: {sys.argv[1:]}"
    for fn in chosen:
        fn()
        COMM.Barrier()
        if RANK == 0:
            print(f"OK {fn.__name__}", flush=True)
    if RANK == 0:
        print(f"ALL CHECKS PASSED ({len(chosen)} checks on {P} ranks)", flush=True)


if __name__ == "__main__":
    main()
