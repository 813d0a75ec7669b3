"""numadam's worker threads: they sleep between steps, they are the only
threads a step starts, and they never change a bit of the result."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import numadam
from helpers import assert_bits_equal, patch_kernel
from internals import cpu_kernels as _cpu
from internals import cpu_pool as _pool
from internals import ordered_mean_parallel, ordered_mean_serial


@pytest.fixture
def config():
    """``numadam.config``, restored after the test."""
    saved = dict(vars(numadam.config))
    yield numadam.config
    for key, value in saved.items():
        setattr(numadam.config, key, value)


# A fit loop whose gradient runs on NumPy's threaded BLAS, in a fresh process
# with 4 threads for everyone. It prints the OS threads the steps started
# that are not numadam's own Python threads, and the CPU time (clock ticks)
# those threads and numadam's used while the loop only ran BLAS (no step).
_LOOP = textwrap.dedent("""
    import os, threading, time
    import numpy as np, numadam

    def threads():
        return set(int(t) for t in os.listdir("/proc/self/task"))

    def ticks(tids):
        total = 0
        for tid in tids:
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total

    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    g = np.empty_like(x)
    c = np.eye(8, dtype=np.float32) * 0.5
    gradient = lambda: np.matmul(x.reshape(-1, 8), c, out=g.reshape(-1, 8))
    gradient()
    opt = numadam.Adam([x], lr=1e-3)
    before = threads()      # the main thread, BLAS's and Numba's compiler's
    for _ in range(20):
        gradient()
        opt.step([g])
    ours = set(t.native_id for t in threading.enumerate()) - {threading.get_native_id()}
    others = threads() - before - ours
    used = ticks(ours | others)
    for _ in range(400):
        gradient()
    print(len(ours), len(others), ticks(ours | others) - used)
""")


def test_steps_start_only_numadam_threads_and_they_sleep_between_steps():
    env = dict(os.environ, NUMBA_NUM_THREADS="4", OMP_NUM_THREADS="4",
               OPENBLAS_NUM_THREADS="4")
    env.pop("OMP_WAIT_POLICY", None)
    proc = subprocess.run([sys.executable, "-c", _LOOP], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours, others, idle_ticks = map(int, proc.stdout.split())
    assert ours == 3             # the caller is the fourth thread
    assert others == 0           # no OpenMP (or other) pool behind numadam's back
    assert idle_ticks == 0       # asleep while the user's code runs


def _problem(sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(3)]
    return params, grads


def _fit(sizes, seed=0):
    params, grads = _problem(sizes, seed)
    opt = numadam.Adam(params, lr=1e-2, amsgrad=True)
    for g in grads:
        opt.step(g)
    return params


def test_two_optimizers_stepping_at_once_match_sequential_steps(config):
    """The second thread finds the pool busy and runs its tasks itself."""
    config.serial_below, config.min_task, config.threads = 0, 1000, 3
    sizes = [30_000, 7, 5_000]
    expected = [_fit(sizes, seed) for seed in range(4)]
    results = [None] * 4
    start = threading.Barrier(4)

    def work(seed):
        start.wait()
        results[seed] = _fit(sizes, seed)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, want in zip(results, expected):
        for p, q in zip(got, want):
            assert_bits_equal(p, q, "concurrent step")


def test_a_task_error_is_raised_after_every_task_finished():
    ran = []

    def task(index):
        if index == 2:
            raise KeyError("task 2")
        ran.append(index)

    with pytest.raises(KeyError, match="task 2"):
        _pool.run_tasks(task, 6, 3)
    assert sorted(ran) == [0, 1, 3, 4, 5]     # the others still ran, each once
    ran.clear()
    _pool.run_tasks(ran.append, 6, 3)     # the pool still works
    assert sorted(ran) == list(range(6))


def test_first_nonfinite_finds_the_first_bad_row_whatever_the_split(config):
    params, grads = _problem([5, 4000, 3, 9000, 100, 2000])
    grads = grads[0]
    grads[3][8000] = np.nan
    grads[1][10] = np.inf
    grads[5][0] = np.nan
    for threads in (1, 2, 5):
        config.serial_below, config.min_task, config.threads = 0, 1, threads
        opt = numadam.Adam([p.copy() for p in params], check_finite="raise")
        with pytest.raises(FloatingPointError, match="parameter 1 holds"):
            opt.step(grads)


def test_ordered_mean_splits_into_whole_blocks(config):
    rng = np.random.default_rng(3)
    received = rng.standard_normal((3, 5000)).astype(np.float32)
    expected = np.empty(5000, np.float32)
    ordered_mean_serial(received, expected, np.float32(3))
    for threads in (2, 3):
        out = np.empty(5000, np.float32)
        ordered_mean_parallel(received, out, np.float32(3), min_task=1, threads=threads)
        assert_bits_equal(out, expected, f"{threads} threads")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_steps_with_a_pool_of_its_own(config):
    config.serial_below, config.min_task, config.threads = 0, 1000, 2
    x = np.ones(10_000, np.float32)
    numadam.Adam([x]).step([np.ones_like(x)])      # the parent's pool exists
    pid = os.fork()
    if pid == 0:    # pragma: no cover (runs in the child)
        code = 1
        try:
            y = np.ones(10_000, np.float32)
            numadam.Adam([y], lr=0.5).step([np.ones_like(y)])     # on the child's pool
            numadam.config.threads = 1
            z = np.ones(10_000, np.float32)
            numadam.Adam([z], lr=0.5).step([np.ones_like(z)])
            code = 0 if (y == z).all() and (y < 1).all() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("name, value, error", [
    ("threads", 2.5, TypeError), ("threads", "2", TypeError), ("threads", True, TypeError),
    ("threads", 0, ValueError), ("threads", -1, ValueError),
    ("min_task", 0, ValueError), ("min_task", 1.5, TypeError),
    ("serial_below", -1, ValueError), ("serial_below", None, TypeError),
])
def test_a_bad_knob_is_refused_when_set_and_no_step_sees_it(config, name, value, error):
    # Met by a step instead, threads=2.5 failed after the step count had
    # advanced, with the parameters unchanged.
    x = np.ones(300_000, np.float32)
    opt = numadam.Adam([x], lr=0.1)
    before = getattr(config, name)
    with pytest.raises(error, match=f"numadam.config.{name} must be"):
        setattr(config, name, value)
    assert getattr(config, name) == before
    config.serial_below = 0
    opt.step([np.ones_like(x)])
    assert opt.state_dict()["state"][0]["step"] == 1 and (x < 1).all()


def test_knobs_take_any_integer_and_threads_none(config):
    config.threads, config.min_task, config.serial_below = np.int64(3), np.int32(7), 0
    assert (config.threads, config.min_task) == (3, 7) and type(config.threads) is int
    config.threads = None
    assert _pool.thread_count() >= 1


def _interrupt_main():
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ctrl_c_during_a_threaded_step_is_raised_after_the_whole_step(config, monkeypatch,
                                                                      threads):
    config.serial_below, config.min_task, config.threads = 0, 1000, threads
    params, grads = _problem([20_000, 3_000])
    expected = [p.copy() for p in params]
    reference = numadam.Adam(expected, lr=1e-2)
    reference.step(grads[0])
    sent = []

    def interrupting(step_task):
        def task(*args):
            # Ctrl-C while the main thread is between two tasks: the handler
            # raises at the next bytecode, before this task's kernel would run.
            if threading.current_thread() is threading.main_thread() and not sent:
                sent.append(1)
                _interrupt_main()
            step_task(*args)
        return task

    patch_kernel(monkeypatch, "step_task", interrupting)
    opt = numadam.Adam(params, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        opt.step(grads[0])
    assert sent
    for p, q in zip(params, expected):
        assert_bits_equal(p, q, "interrupted step")
    assert opt.state_dict()["state"][0]["step"] == 1
    opt.step(grads[1])                  # and the next step is an ordinary one (sent once)
    reference.step(grads[1])
    for p, q in zip(params, expected):
        assert_bits_equal(p, q, "step after the interrupted one")


def test_ctrl_c_while_the_caller_waits_returns_only_after_the_workers_finish():
    started, ended = threading.Event(), []

    def task(index):
        if threading.current_thread() is threading.main_thread():
            started.wait(10)           # hold the caller until a worker has a task
            return
        started.set()
        time.sleep(0.1)                # the caller is in its wait by now
        _interrupt_main()
        time.sleep(0.2)
        ended.append(index)

    with pytest.raises(KeyboardInterrupt):
        _pool.run_tasks(task, 2, 2)
    assert ended                       # no worker still running its task
    ran = []
    _pool.run_tasks(ran.append, 6, 3)     # the pool still works
    assert sorted(ran) == list(range(6))


def test_a_refused_worker_thread_fails_the_step_before_it_touches_an_array(config,
                                                                          monkeypatch):
    # 64 threads: more workers than any earlier test started.
    config.serial_below, config.min_task, config.threads = 0, 1000, 64
    start = threading.Thread.start

    def refuse(thread):
        if thread.name == "numadam-worker":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    x = np.ones(100_000, np.float32)
    opt = numadam.Adam([x], lr=0.1)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        opt.step([np.ones_like(x)])
    assert (x == 1).all() and opt.state_dict()["state"] == {}
    monkeypatch.setattr(threading.Thread, "start", start)
    config.threads = 2
    opt.step([np.ones_like(x)])
    assert opt.state_dict()["state"][0]["step"] == 1 and (x < 1).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_steps_has_a_free_pool(config):
    """The fork copies the pool's lock held and a worker busy; the child's
    step gets a fresh pool (a worker of its own), not a wait on them."""
    config.serial_below, config.min_task, config.threads = 0, 1000, 2
    busy, release = threading.Event(), threading.Event()

    def task(index):
        busy.set()
        release.wait(10)

    stepping = threading.Thread(target=_pool.run_tasks, args=(task, 2, 2))
    stepping.start()
    try:
        assert busy.wait(10) and _pool._pool.lock.locked()
        pid = os.fork()
        if pid == 0:    # pragma: no cover (runs in the child)
            code = 1
            try:
                y = np.ones(10_000, np.float32)
                numadam.Adam([y], lr=0.5).step([np.ones_like(y)])
                workers = [t for t in threading.enumerate() if t.name == "numadam-worker"]
                code = 0 if (y < 1).all() and len(workers) == 1 else 2
            finally:
                os._exit(code)
    finally:
        release.set()
        stepping.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_caller_takes_the_tasks_of_a_stalled_worker():
    """A worker stuck in its first task (not scheduled, say) delays nothing:
    the caller runs every other task, the worker's own block included."""
    ran_here, others_done = [], threading.Event()

    def task(index):
        if threading.current_thread() is threading.main_thread():
            ran_here.append(index)
            if len(ran_here) == 7:
                others_done.set()
        else:
            others_done.wait(10)       # stalled until the caller has done the rest

    begin = time.perf_counter()
    _pool.run_tasks(task, 8, 2)
    assert time.perf_counter() - begin < 5
    assert len(ran_here) >= 7 and set(range(4)) <= set(ran_here)


def test_steps_keep_the_worker_count_bounded(config):
    config.serial_below, config.min_task = 0, 16
    x = np.ones(4096, np.float32)
    g = [np.ones_like(x)]
    opt = numadam.Adam([x], lr=1e-3)
    counts = set()
    for i in range(400):
        config.threads = 1 + i % 4
        opt.step(g)
        counts.add(threading.active_count())
    workers = [t for t in threading.enumerate() if t.name == "numadam-worker"]
    assert len(workers) == len(_pool._pool.queues) >= 3
    assert max(counts) - min(counts) <= 3     # started once, for the largest count


def test_numba_set_num_threads_applies_in_the_thread_that_called_it(config):
    import numba
    config.threads = None
    seen = []
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        seen.append(_pool.thread_count())
        other = threading.Thread(target=lambda: seen.append(_pool.thread_count()))
        other.start()
        other.join()
    finally:
        numba.set_num_threads(before)
    assert seen == [1, numba.config.NUMBA_NUM_THREADS]


def test_one_thread_makes_one_kernel_call_per_bucket(config, monkeypatch):
    """Each nogil call ends in a GIL handoff (up to 5 ms beside a busy Python
    thread), so one thread does not cut a big bucket into tasks."""
    config.serial_below, config.min_task, config.threads = 0, 1000, 1
    calls = []
    nonfinite_task = _cpu.nonfinite_task
    patch_kernel(monkeypatch, "step_task",
                 lambda step_task: lambda *a: calls.append("step") or step_task(*a))
    monkeypatch.setattr(_cpu, "nonfinite_task",
                        lambda *a: calls.append("check") or nonfinite_task(*a))
    x = np.ones(50_000, np.float32)
    opt = numadam.Adam([x], lr=0.5, check_finite="raise")
    opt.step([np.ones_like(x)])
    assert calls == ["check", "step"] and (x < 1).all()
