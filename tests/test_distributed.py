"""numadam.distributed: the shard arithmetic in one process, then the real
thing under ``mpiexec -n 2`` and ``-n 3`` (``tests/mpi/check_sharded.py``).

The single-process tests need neither mpi4py nor MPI: shards whose tables
point into the middle of the parameters, driven by the kernels of their rule,
must reproduce the single-process optimizer bit for bit for every registry
configuration of every rule and any number of (simulated) ranks.
"""

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import numadam
import optim_configs as oc
from helpers import assert_bits_equal, build, step_grads
from internals import NCOLS, OFFSET, PTR_G, SIZE, address
from internals import describe, raise_agreed
from internals import (NBINS, NONFINITE, OVERFLOW, bins_to_sum, ordered_mean,
                       ordered_mean_parallel, ordered_mean_serial, square_bins,
                       square_bins_parallel, square_bins_serial)
from internals import (LocalShard, bytes_per_step, first_difference, layout_signature,
                       shard_bounds, shard_pieces)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------ shards
@pytest.mark.parametrize("nranks", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("total", [0, 1, 2, 5, 17, 1000])
def test_shards_are_balanced_contiguous_and_cover_everything(total, nranks):
    bounds = shard_bounds(total, nranks)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == total
    assert (sizes >= 0).all() and sizes.max() - sizes.min() <= 1
    assert sizes.sum() == total


def test_pieces_cut_parameters_at_shard_edges():
    offsets, sizes = [0, 5, 5, 9], [5, 0, 4, 3]         # an empty array in the middle
    assert shard_pieces(offsets, sizes, 3, 10) == [(0, 3, 5), (2, 5, 9), (3, 9, 10)]
    assert shard_pieces(offsets, sizes, 6, 6) == []


def _assert_shards_hold_the_state_of(ref, shards, what):
    """The simulated ranks' shards together hold ``ref``'s state, bit for bit."""
    sd = ref.state_dict()["state"]
    seen = set()
    for bucket, ranks in shards:
        for k, index in enumerate(bucket.indices):
            if not ranks[0].has_state(k):
                continue
            seen.add(index)
            entry = sd[index]
            state = np.concatenate([s.state for s in ranks], axis=1)
            if ref.rule.keeps_step:
                assert set(entry) == {"step", *ranks[0].rows}, (what, index, entry)
                assert all(s.steps[k] == entry["step"] for s in ranks), (what, index)
            else:
                assert set(entry) == set(ranks[0].rows), (what, index, entry)
            offset, size = ranks[0].offsets[k], bucket.params[k].size
            for row, key in enumerate(ranks[0].rows):
                assert_bits_equal(state[row, offset:offset + size], entry[key].ravel(),
                                  f"{what}: {key} of {index}")
    assert seen == set(sd), (what, seen, set(sd))


@pytest.mark.parametrize("nranks", [2, 3, 64])
@pytest.mark.parametrize("name,dtype", [(n, d) for n in oc.CONFIGS for d in oc.DTYPES])
def test_shards_reproduce_the_plain_optimizer_bit_for_bit(name, dtype, nranks):
    """Every rank's shard updated through its own table: the union is the
    plain optimizer, parameters and state, from construction on (Adagrad's
    state exists before the first step). With 64 ranks most shards hold a
    few elements of one parameter, some cut two."""
    ref, ref_params = build(name, dtype)
    frame, params = build(name, dtype)          # never stepped: holds the buckets
    initial = frame._kernel_args()
    shards = [(bucket, [LocalShard(bucket, frame.rule, r, nranks,
                                   initial[bucket.group_index]) for r in range(nranks)])
              for bucket in frame._buckets]
    what = f"{name} {dtype} P={nranks}"
    _assert_shards_hold_the_state_of(ref, shards, f"{what} at construction")
    schedule = oc.CONFIGS[name].get("schedule", {})
    for step in range(1, 41):
        for opt in (ref, frame):
            for group, lr in zip(opt.param_groups, schedule.get(step, ())):
                group["lr"] = lr
        grads = step_grads(name, dtype, step)
        ref.step(grads)
        args = frame._kernel_args()
        for bucket, ranks in shards:
            has = np.array([grads[i] is not None for i in bucket.indices], np.int64)
            flat = np.concatenate([np.zeros(p.size, p.dtype) if grads[i] is None
                                   else grads[i].ravel()
                                   for i, p in zip(bucket.indices, bucket.params)])
            for shard in ranks:
                shard.grad[...] = flat[shard.lo:shard.hi]
                shard.use_gradients(has)
                shard.update(args[bucket.group_index], has)
    for k, (p, r) in enumerate(zip(params, ref_params)):
        assert_bits_equal(p, r, f"{what} param {k}")
    _assert_shards_hold_the_state_of(ref, shards, what)


def test_layout_signatures_name_the_first_difference():
    a = numadam.Adam([np.zeros(3, np.float32), np.zeros((2, 2))], lr=0.1)
    b = numadam.Adam([np.zeros(3, np.float32), np.zeros((2, 3))], lr=0.1)
    c = numadam.Adam([np.zeros(3, np.float32), np.zeros((2, 2))], lr=0.2)
    d = numadam.RMSprop([np.zeros(3, np.float32), np.zeros((2, 2))], momentum=0.5)
    e = numadam.RMSprop([np.zeros(3, np.float32), np.zeros((2, 2))], momentum=0.5,
                        centered=True)
    settings = (("reduction", "ordered"),)
    sig = [layout_signature(o, settings) for o in (a, b, c, d, e)]
    assert first_difference(sig[0], sig[0]) is None
    assert "params'][1] has shape (2, 2)" in first_difference(sig[0], sig[1])
    assert "'lr'] is 0.1 against 0.2" in first_difference(sig[0], sig[2])
    assert "'centered'] is False against True" in first_difference(sig[3], sig[4])
    other = layout_signature(a, (("reduction", "mpi"),))
    assert "reduction is 'ordered' against 'mpi'" == first_difference(sig[0], other)
    # another class's hyperparameters are other names: the class is told first
    adam = layout_signature(a, (("optimizer", "Adam"),))
    rmsprop = layout_signature(d, (("optimizer", "RMSprop"),))
    assert first_difference(adam, rmsprop) == "optimizer is 'Adam' against 'RMSprop'"


@pytest.mark.parametrize("nranks", [1, 3, 4])
def test_bytes_per_step_adds_up_over_ranks(nranks):
    totals, itemsizes = [10, 7], [4, 8]
    per_rank = [bytes_per_step(totals, itemsizes, nranks, r) for r in range(nranks)]
    full = sum(t * s for t, s in zip(totals, itemsizes))
    for key in ("reduce_recv", "reduce_send", "gather_recv", "gather_send"):
        assert sum(b[key] for b in per_rank) == (nranks - 1) * full


def test_the_lowest_failing_rank_decides_the_error_everywhere():
    infos = [None, ("KeyError", "no data"), ("ValueError", "bad shape")]
    with pytest.raises(KeyError, match=r"no data \[on rank 1 \(and ranks \[2\]\) of 3"):
        raise_agreed(infos, None, 3)
    with pytest.raises(RuntimeError, match="WeirdError: odd"):
        raise_agreed([("WeirdError", "odd")], None, 1)
    raise_agreed([None, None], None, 2)
    assert describe(numadam.CheckpointError("x")) == ("CheckpointError", "x")
    assert describe(UnboundLocalError("y")) == ("RuntimeError", "UnboundLocalError: y")
    # (numpy's LinAlgError would do, but its base class is Exception before numpy 2.)
    SolverError = type("SolverError", (ValueError,), {})
    assert describe(SolverError("z")) == ("ValueError", "SolverError: z")
    assert describe(None) is None


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nranks", [1, 2, 3, 5])
def test_ordered_mean_is_numpy_summing_in_rank_order(dtype, nranks):
    rng = np.random.default_rng(nranks)
    received = (rng.standard_normal((nranks, 3001)) * 10.0 ** rng.uniform(
        -8, 8, (nranks, 3001))).astype(dtype)
    expected = received[0].copy()
    for q in range(1, nranks):
        expected = expected + received[q]
    expected = expected / dtype(nranks)
    for kernel in (ordered_mean_serial, ordered_mean_parallel):
        out = np.empty(3001, dtype)
        kernel(received, out, dtype(nranks))
        assert_bits_equal(out, expected, kernel.__name__)
    out = np.empty(3001, dtype)
    ordered_mean(received, out)
    assert_bits_equal(out, expected, "ordered_mean")


def _table_over(g, cuts):
    """A kernel table whose gradient rows cover all of ``g``, cut at ``cuts``."""
    edges = [0, *cuts, g.size]
    table = np.zeros((len(edges) - 1, NCOLS), np.int64)
    for row, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        table[row, PTR_G] = address(g[a:b])
        table[row, OFFSET] = a
        table[row, SIZE] = b - a
    return table


def _fsum_of_squares(g):
    return math.fsum(np.square(g.astype(np.float64)).tolist())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_square_bins_give_the_correctly_rounded_sum_whatever_the_split(dtype):
    rng = np.random.default_rng(7)
    n = 50_000
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-20, 20, n)).astype(dtype)
    g[:3] = [0.0, np.finfo(dtype).tiny / 8, -np.finfo(dtype).tiny]   # zero and subnormals
    like = np.empty(0, dtype)
    expected = _fsum_of_squares(g)
    whole = square_bins_serial(_table_over(g, []), like)
    assert bins_to_sum(whole) == expected
    for cuts in ([1], [17, 18, 4000], sorted(rng.choice(n, 40, replace=False).tolist())):
        table = _table_over(g, cuts)
        assert (square_bins_serial(table, like) == whole).all()
        assert (square_bins_parallel(table, like, 100, 3) == whole).all()
        # one shard per piece, as ranks would hold them
        edges = [0, *cuts, n]
        pieces = [g[a:b].copy() for a, b in zip(edges[:-1], edges[1:])]  # kept alive
        parts = sum(square_bins_serial(_table_over(piece, []), like) for piece in pieces)
        assert (parts == whole).all()
    assert (square_bins(_table_over(g, [5]), like, n) == whole).all()


def test_square_bins_flag_nonfinite_values_and_overflow():
    like = np.empty(0, np.float64)
    g = np.array([1.0, np.nan, 2.0])
    bins = square_bins_serial(_table_over(g, []), like)
    assert bins[NONFINITE] == 1 and math.isnan(bins_to_sum(bins))
    g = np.array([1e200, 3.0])
    bins = square_bins_serial(_table_over(g, []), like)
    assert bins[OVERFLOW] == 1 and bins_to_sum(bins) == math.inf
    g = np.full(4, 1e154)                     # every square finite, the sum not
    assert bins_to_sum(square_bins_serial(_table_over(g, []), like)) == math.inf
    assert bins_to_sum(np.zeros(NBINS, np.int64)) == 0.0


# -------------------------------------------------------------- with mpi4py
def test_import_numadam_does_not_import_mpi4py():
    code = "import sys, numadam; assert 'mpi4py' not in sys.modules, 'imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name,dtype", [(n, d) for n in oc.CONFIGS for d in oc.DTYPES])
def test_one_rank_is_the_plain_optimizer_and_its_checkpoints_are_the_plain_ones(
        name, dtype, tmp_path):
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    import numadam.distributed

    config = oc.CONFIGS[name]
    index = oc.index(name)
    params = oc.initial_params(index, dtype)
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    cls = getattr(numadam.distributed, "Sharded" + config["cls"])
    opt = cls(groups, **config["kwargs"], comm=MPI.COMM_SELF)
    ref, ref_params = build(name, dtype)
    assert opt.state_dict().keys() == ref.state_dict().keys()
    assert opt.state_dict()["state"].keys() == ref.state_dict()["state"].keys()
    schedule = config.get("schedule", {})
    for step in range(1, 31):
        for o in (opt, ref):
            for group, lr in zip(o.param_groups, schedule.get(step, ())):
                group["lr"] = lr
        opt.step(step_grads(name, dtype, step))
        ref.step(step_grads(name, dtype, step))
    for k, (p, r) in enumerate(zip(params, ref_params)):
        assert_bits_equal(p, r, f"param {k}")
    opt.save(tmp_path / "c.npz")
    other, _ = build(name, dtype, params=[p.copy() for p in params])
    other.load(tmp_path / "c.npz")
    sd, rsd = other.state_dict(), ref.state_dict()
    assert sd["param_groups"] == rsd["param_groups"]
    assert sd["state"].keys() == rsd["state"].keys()
    for pid, entry in rsd["state"].items():
        assert sd["state"][pid].keys() == entry.keys()
        for key, value in entry.items():
            if key == "step":
                assert sd["state"][pid][key] == value
            else:
                assert_bits_equal(sd["state"][pid][key], value, f"{pid} {key}")
    expected = opt.bytes_per_step()
    assert expected == {"reduce_recv": 0, "reduce_send": 0, "gather_recv": 0, "gather_send": 0}
    assert opt.state_nbytes == sum(b.state.nbytes for b in ref._buckets)
    # The plain optimizer inside only validates: the shards hold all the state
    # (Adagrad's included, which its own constructor would create).
    assert all(b.state is None for b in opt._inner._buckets)


def _mpiexec():
    """The mpiexec of the mpich wheel next to this Python, else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _readme_mpi_command():
    """The README's mpiexec line (distributed section) as an argument list, its
    ``.venv/bin/`` programs mapped to this interpreter's (the same files under
    ``.ci/run``, whose venv is ``.venv``)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Beyond one machine"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    line = next(x for x in block.splitlines() if "mpiexec" in x).split("#")[0]
    words = shlex.split(line)
    programs = {".venv/bin/mpiexec": _mpiexec(), ".venv/bin/python": sys.executable}
    return [programs.get(w, w) for w in words]


def _run_mpi(command, timeout):
    """Run an mpiexec command line in a session of its own. Past ``timeout``
    seconds every process of that session is killed and the test fails, so a
    deadlock fails the test instead of hanging it (or leaving ranks behind)."""
    pytest.importorskip("mpi4py")
    if command[0] is None:
        pytest.skip("no mpiexec (pip install mpich)")
    version = subprocess.run([command[0], "--version"], capture_output=True, text=True)
    if "Open MPI" in version.stdout + version.stderr:
        command = command[:1] + ["--oversubscribe"] + command[1:]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")   # the ranks share the cores
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not end within {timeout} s (a deadlock?)\n"
                    + out[-3000:] + err[-3000:])
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _checks(nranks, *names):
    return [_mpiexec(), "-n", str(nranks), sys.executable, "-m", "mpi4py",
            os.path.join(HERE, "mpi", "check_sharded.py"), *names]


@pytest.mark.parametrize("nranks", [2, 3])
def test_mpi_checks_pass_under_mpiexec(nranks):
    done = _run_mpi(_checks(nranks), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"ALL CHECKS PASSED (15 checks on {nranks} ranks)" in done.stdout, done.stdout


@pytest.mark.parametrize("nranks", [2, 3])
def test_sharded_checkpoints_carry_a_schedule_under_mpiexec(nranks):
    """``tests/mpi/check_schedules.py``: a schedule saved and loaded with the
    sharded optimizer resumes bit for bit on P and P - 1 ranks and in the plain
    class (and back); refusals raise on every rank and change nothing."""
    command = [_mpiexec(), "-n", str(nranks), sys.executable, "-m", "mpi4py",
               os.path.join(HERE, "mpi", "check_schedules.py")]
    done = _run_mpi(command, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"ALL CHECKS PASSED (3 checks on {nranks} ranks)" in done.stdout, done.stdout


def test_ranks_passing_different_roots_get_an_error_not_a_deadlock():
    """Without the agreement on the root, rank 0's Gatherv to itself and rank
    1's to itself wait for each other forever: the short timeout turns that
    into a failure."""
    check = "ranks_passing_different_roots_are_refused_everywhere"
    done = _run_mpi(_checks(2, check), timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"OK {check}" in done.stdout and "ALL CHECKS PASSED (1 checks on 2 ranks)" \
        in done.stdout, done.stdout


def test_the_readme_mpi_command_works_as_written(tmp_path):
    command = _readme_mpi_command()
    assert command[-1] == "examples/mpi_fit.py" and command[-3:-1] == ["-m", "mpi4py"], command
    checkpoint = str(tmp_path / "fit.npz")
    done = _run_mpi(command + ["--steps", "100", "--checkpoint", checkpoint], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "rank 0: elements [0, 5025) of 10050" in out, out
    assert "rank 1: elements [5025, 10050) of 10050; optimizer state 39.3 KiB" in out, out
    mse = float(out.split("step  100  mse ")[1].split()[0])
    assert mse < 0.05, out
    assert len(numadam.load(checkpoint)["state"]) == 2


def test_an_exception_on_one_rank_ends_the_job_under_the_readme_command():
    """The README's form (``python -m mpi4py``) turns an uncaught exception on
    one rank into MPI_Abort: the job ends in seconds (plain ``python`` leaves
    the other rank waiting in its next collective until the timeout)."""
    command = _readme_mpi_command()
    command[-1] = os.path.join(HERE, "mpi", "raise_on_one_rank.py")
    done = _run_mpi(command, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "RuntimeError: a user error on rank 1" in done.stderr, done.stderr
    assert "not reached" not in done.stdout


def test_a_rule_without_a_hand_written_sharded_class_gets_one():
    """A new rule's class (here a subclass standing in for one) is sharded with
    its own arguments, positional ones included, and steps as the plain class."""
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    import numadam.distributed
    from internals import distributed_sharded as sharded

    assert sharded.sharded_class(numadam.SGD) is numadam.distributed.ShardedSGD

    class NewRule(numadam.SGD):
        pass

    cls = sharded.sharded_class(NewRule)
    assert cls.__name__ == "ShardedNewRule" and cls.plain is NewRule
    x, y = np.ones(40), np.ones(40)
    opt = cls([x], 0.1, 0.9, nesterov=False, comm=MPI.COMM_SELF, max_grad_norm=1.0)
    ref = numadam.SGD([y], 0.1, 0.9)
    for k in range(4):
        g = np.linspace(-1, 1, 40) * 0.01 * (k + 1)       # norms below 1: no clipping
        opt.step([g])
        ref.step([g])
    assert_bits_equal(x, y, "sharded twin")
    assert opt.state_dict()["state"][0].keys() == {"momentum_buffer"}
    with pytest.raises(TypeError):
        cls([x], 0.1, bogus=1, comm=MPI.COMM_SELF)
