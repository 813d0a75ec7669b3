"""Threads: an optimizer shared between threads behaves as if they took turns.

The switch interval is cut to a microsecond so that the interpreter switches
threads between almost any two bytecodes: without the optimizer's lock, these
tests fail on every run (steps interleave inside one another, snapshots tear).
"""

import copy
import pickle
import sys
import threading
import time

import numpy as np
import pytest

import numadam
from helpers import assert_bits_equal, run_threads

THREADS, STEPS = 4, 40
SHAPES = [(7,), (3, 5), (4,), (2, 2)]


@pytest.fixture(autouse=True)
def _switch_often():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _params():
    return [np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(
        np.float32 if k % 2 else np.float64) for k, s in enumerate(SHAPES)]


def _grads(value, params):
    return [np.full(p.shape, value * (k + 1), p.dtype) for k, p in enumerate(params)]


def _assert_same(a, pa, b, pb):
    for k, (p, q) in enumerate(zip(pa, pb)):
        assert_bits_equal(p, q, f"param {k}")
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    for index, entry in sb.items():
        assert sa[index]["step"] == entry["step"]
        for key in entry.keys() - {"step"}:
            assert_bits_equal(sa[index][key], entry[key], f"{index} {key}")


@pytest.mark.parametrize("owned", [False, True], ids=["step(grads)", "opt.grads"])
def test_one_optimizer_stepped_from_several_threads_equals_the_same_steps_in_turn(owned):
    params = _params()
    opt = numadam.AdamW(params, lr=0.05, amsgrad=True)
    order = []                      # which thread's gradient each step used
    grads = [_grads(0.5 + k, params) for k in range(THREADS)]

    def work(k):
        for _ in range(STEPS):
            if owned:
                def closure():
                    order.append(k)
                    for buffer, g in zip(opt.grads, grads[k]):
                        buffer[...] = g
                opt.step(closure)
            else:
                opt.step(grads[k], closure=lambda: order.append(k))

    if owned:
        opt.grads
    run_threads(work, THREADS)
    assert sorted(order) == sorted(list(range(THREADS)) * STEPS)
    replay_params = _params()
    replay = numadam.AdamW(replay_params, lr=0.05, amsgrad=True)
    for k in order:
        replay.step(grads[k])
    _assert_same(opt, params, replay, replay_params)


@pytest.mark.parametrize("take", [
    lambda opt: opt.state_dict()["state"],
    lambda opt: copy.deepcopy(opt).state_dict()["state"],
    lambda opt: pickle.loads(pickle.dumps(copy.deepcopy(opt))).state_dict()["state"],
], ids=["state_dict", "deepcopy", "pickle-of-deepcopy"])
def test_snapshots_taken_while_another_thread_steps_are_never_torn(take):
    # Many small parameters: a state dict takes long enough for steps to land inside.
    many = [np.linspace(-1, 1, 5 + k % 3) for k in range(60)]
    params = [p.copy() for p in many]
    opt = numadam.Adam(params, lr=0.01)
    g = _grads(1.0, params)
    both = threading.Barrier(2)
    done = threading.Event()
    snapshots = []

    def stepper():
        both.wait()
        for _ in range(3000):
            opt.step(g)
            if len(snapshots) >= 50:
                break
            time.sleep(1e-4)        # the lock is not fair: let the reader in
        done.set()

    def reader():
        both.wait()
        while not done.is_set():
            snapshot = take(opt)
            if snapshot:
                snapshots.append(snapshot)

    run_threads(lambda k: stepper() if k == 0 else reader(), count=2)
    steps_seen = [{entry["step"] for entry in s.values()} for s in snapshots]
    assert len(steps_seen) >= 10
    assert all(len(steps) == 1 for steps in steps_seen), "a snapshot is torn"
    wanted = {steps.pop() for steps in steps_seen}
    reference = {}                  # step -> state dict of a sequential run
    ref = numadam.Adam([p.copy() for p in many], lr=0.01)
    for t in range(1, max(wanted) + 1):
        ref.step(g)
        if t in wanted:
            reference[t] = ref.state_dict()["state"]
    for snapshot in snapshots:
        expected = reference[snapshot[0]["step"]]
        for index, entry in snapshot.items():
            for key in entry.keys() - {"step"}:
                assert_bits_equal(entry[key], expected[index][key], f"{index} {key}")


def test_a_closure_may_call_back_into_the_optimizer():
    x = np.array([3.0])
    opt = numadam.Adam([x], lr=0.1)
    opt.grads

    def closure():
        opt.zero_grad()                 # torch's usual closure; must not deadlock
        opt.grads[0][...] = 2 * x
        return opt.state_dict()

    run_threads(lambda _: opt.step(closure), count=1)
    assert opt.state[x]["step"] == 1 and x[0] < 3.0


def test_two_optimizers_in_two_threads_stay_independent():
    def fit(params, value):
        opt = numadam.Adam(params, lr=0.02, amsgrad=True)
        for _ in range(STEPS):
            opt.step(_grads(value, params))
        return opt

    threaded = [_params() for _ in range(THREADS)]
    opts = [None] * THREADS

    def work(k):
        opts[k] = fit(threaded[k], 0.25 * (k + 1))

    run_threads(work, THREADS)
    for k in range(THREADS):
        alone_params = _params()
        alone = fit(alone_params, 0.25 * (k + 1))
        _assert_same(opts[k], threaded[k], alone, alone_params)


def test_a_closure_that_steps_its_own_optimizer_is_refused():
    # The closure computes the loss of the step about to be taken; stepping
    # from inside it would step twice (or recurse until RecursionError).
    x = np.array([3.0])
    opt = numadam.Adam([x], lr=0.1)

    def closure():
        opt.step([2 * x])
        return 1.0

    with pytest.raises(RuntimeError, match="inside its own closure"):
        opt.step([2 * x], closure=closure)
    assert x[0] == 3.0 and 0 not in opt.state
    assert opt.step([2 * x], closure=lambda: 2.0) == 2.0      # still usable
    assert opt.state[x]["step"] == 1


@pytest.mark.parametrize("error", [KeyError, KeyboardInterrupt])
def test_a_closure_that_raises_releases_the_lock(error):
    x = np.array([3.0])
    opt = numadam.Adam([x], lr=0.1)

    def closure():
        raise error("from the closure")

    with pytest.raises(error):
        opt.step([2 * x], closure=closure)
    assert x[0] == 3.0
    run_threads(lambda _: opt.step([2 * x]), count=1)     # another thread gets the lock
    assert opt.state[x]["step"] == 1


def test_fits_with_a_blas_gradient_in_two_threads_equal_the_same_fits_alone():
    # The gradient's matrix products run in NumPy's BLAS threads while the
    # other thread's optimizer steps.
    n = 200
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n)) / n, rng.standard_normal(n)

    def fit(x):
        opt = numadam.Adam([x], lr=1e-2)
        g = opt.grads[0]

        def closure():
            r = a @ (x * x) - b
            g[...] = 2 * x * (a.T @ r)
            return float(r @ r)

        for _ in range(STEPS):
            opt.step(closure)

    threaded = [np.linspace(0.5, 1.5, n) for _ in range(2)]
    run_threads(lambda k: fit(threaded[k]), count=2)
    alone = np.linspace(0.5, 1.5, n)
    fit(alone)
    for x in threaded:
        assert_bits_equal(x, alone, "a threaded fit")
    assert not np.array_equal(alone, np.linspace(0.5, 1.5, n))
