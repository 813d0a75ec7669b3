"""Copies and pickles of an optimizer: independent, by value, and exact.

A copy owns copies of the parameters and the state; it must never write into
the original's arrays (its address table is rebuilt from its own arrays), and
it must continue exactly as the original does, in this process or another.
"""

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numadam
import optim_configs as oc
from helpers import assert_bits_equal, build, run

HERE = os.path.dirname(os.path.abspath(__file__))
MID, END = 6, 12          # copy after MID steps, then both run to END
CASES = [(name, dtype) for name in oc.CONFIGS for dtype in oc.DTYPES]


def _params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def _assert_same(a, b, what):
    """Same parameters, state and groups, bit for bit."""
    for k, (p, q) in enumerate(zip(_params(a), _params(b), strict=True)):
        assert_bits_equal(q, p, f"{what}: param {k}")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"], what
    assert sa["state"].keys() == sb["state"].keys(), what
    for index, entry in sa["state"].items():
        assert list(entry) == list(sb["state"][index]), what    # torch's keys, in order
        assert entry.get("step") == sb["state"][index].get("step"), what
        for key in entry.keys() - {"step"}:
            assert_bits_equal(sb["state"][index][key], entry[key], f"{what}: {index} {key}")


def _snapshot(opt):
    return [p.copy() for p in _params(opt)], opt.state_dict()


def _assert_unchanged(opt, snapshot, what):
    params, sd = snapshot
    for k, (p, q) in enumerate(zip(_params(opt), params)):
        assert_bits_equal(p, q, f"{what}: param {k}")
    for index, entry in sd["state"].items():
        for key in entry.keys() - {"step"}:
            assert_bits_equal(opt.state[index][key], entry[key], f"{what}: {index} {key}")


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name,dtype", CASES)
def test_a_copy_is_independent_and_continues_exactly(name, dtype, how):
    opt, _ = build(name, dtype)
    run(opt, name, dtype, 1, MID)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert type(twin) is type(opt)
    for p, q in zip(_params(opt), _params(twin)):
        assert q is not p and not np.shares_memory(p, q)
    _assert_same(opt, twin, "right after the copy")

    before = _snapshot(opt)
    run(twin, name, dtype, MID + 1, END)           # the copy steps alone ...
    _assert_unchanged(opt, before, "the original after the copy stepped")
    run(opt, name, dtype, MID + 1, END)           # ... and the original catches up
    _assert_same(opt, twin, "after both stepped")


_CHILD = """
import pickle, sys
sys.path.insert(0, {tests!r})
from helpers import run
with open({path!r}, "rb") as f:
    jobs = pickle.load(f)
out = []
for name, dtype, opt in jobs:
    run(opt, name, dtype, {first}, {last})
    out.append(([p for g in opt.param_groups for p in g["params"]], opt.state_dict()))
with open({path!r}, "wb") as f:
    pickle.dump(out, f)
"""


def test_an_unpickled_optimizer_steps_exactly_in_a_fresh_process(tmp_path):
    jobs, originals = [], []
    for name, dtype in CASES:
        opt, _ = build(name, dtype)
        run(opt, name, dtype, 1, MID)
        jobs.append((name, dtype, opt))
        originals.append(opt)
    path = str(tmp_path / "jobs.pkl")
    with open(path, "wb") as f:
        pickle.dump(jobs, f)
    code = _CHILD.format(tests=HERE, path=path, first=MID + 1, last=END)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(path, "rb") as f:
        out = pickle.load(f)
    for (name, dtype, opt), (params, sd) in zip(jobs, out, strict=True):
        run(opt, name, dtype, MID + 1, END)
        for k, (p, q) in enumerate(zip(_params(opt), params)):
            assert_bits_equal(q, p, f"{name} {dtype} param {k}")
        mine = opt.state_dict()
        assert sd["param_groups"] == mine["param_groups"]
        assert sd["state"].keys() == mine["state"].keys()
        for index, entry in mine["state"].items():
            assert list(sd["state"][index]) == list(entry)
            assert sd["state"][index].get("step") == entry.get("step")
            for key in entry.keys() - {"step"}:
                assert_bits_equal(sd["state"][index][key], entry[key], f"{name} {key}")


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_owned_gradients_and_counters_travel_by_value(how):
    x, y = np.linspace(-1, 1, 6), np.ones((2, 3), np.float32)
    opt = numadam.AdamW([{"params": [x]}, {"params": [y], "amsgrad": True}], lr=0.1,
                        check_finite="skip")
    opt.grads[0][...] = 0.5
    opt.grads[1][...] = -0.25
    opt.step()
    opt.grads[1][0, 0] = np.nan
    opt.step()                                  # skipped
    opt.grads[1][0, 0] = 0.75
    opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin.skipped_steps == 1 and twin.check_finite == "skip"
    assert twin.defaults == opt.defaults
    for g, h in zip(opt.grads, twin.grads, strict=True):
        assert_bits_equal(h, g, "owned gradient")
        assert not np.shares_memory(g, h)
    for g in opt.grads:
        g[...] = 3.0                            # the copy's buffers are its own
    assert not any((h == 3.0).any() for h in twin.grads)
    for g, h in zip(opt.grads, twin.grads):
        h[...] = g
    opt.step()
    twin.step()                                 # reads its own buffers
    _assert_same(opt, twin, "after a step with owned gradients")
    opt.zero_grad()
    assert not any(h.any() for h in opt.grads) and all(h.all() for h in twin.grads)


def test_copying_parameters_and_optimizer_together_keeps_them_linked():
    # As with torch modules and optimizers: one deepcopy call, one memo.
    params = [np.ones(4), np.zeros(3)]
    opt = numadam.Adam(params, lr=0.1)
    opt.step([np.ones(4), np.ones(3)])
    params2, opt2 = copy.deepcopy((params, opt))
    assert _params(opt2)[0] is params2[0] and _params(opt2)[1] is params2[1]
    before = params[0].copy()
    opt2.step([np.ones(4), np.ones(3)])
    assert opt2.state[params2[0]]["step"] == 2
    assert not np.array_equal(params2[0], params[0])
    assert_bits_equal(params[0], before, "the original")
    restored_params, restored = pickle.loads(pickle.dumps((params, opt)))
    assert _params(restored)[1] is restored_params[1]


def test_a_pending_bad_edit_is_copied_and_refused_at_the_copys_step():
    x = np.ones(3)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(3)])
    opt.param_groups[0]["amsgrad"] = 0
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        before = _params(twin)[0].copy()
        with pytest.raises(ValueError, match="amsgrad must be True or False"):
            twin.step([np.ones(3)])
        assert_bits_equal(_params(twin)[0], before, "the copy's parameter")


def test_what_cannot_be_copied_says_so():
    x = np.ones(3)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(3)])
    with pytest.raises(TypeError, match="shallow copy"):
        copy.copy(opt)
    bucket = opt._buckets[0]
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="memory addresses"):
            attempt(bucket)


def test_copies_of_opt_state_are_plain_snapshots():
    x = np.ones(3)
    opt = numadam.Adam([x], lr=0.1, amsgrad=True)
    opt.step([np.ones(3)])
    for copied in (copy.copy(opt.state[x]), copy.deepcopy(opt.state[x]),
                   pickle.loads(pickle.dumps(opt.state[x])),
                   copy.deepcopy(opt.state)[0], pickle.loads(pickle.dumps(opt.state))[0]):
        assert type(copied) is dict and copied["step"] == 1
        assert set(copied) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert not np.shares_memory(copied["exp_avg"], opt.state[x]["exp_avg"])
        assert_bits_equal(copied["exp_avg_sq"], opt.state[x]["exp_avg_sq"], "exp_avg_sq")


def test_sharded_optimizers_refuse_copies():
    MPI = pytest.importorskip("mpi4py.MPI")
    from numadam.distributed import ShardedAdam, ShardedAdamW
    for cls in (ShardedAdam, ShardedAdamW):
        opt = cls([np.ones(4)], comm=MPI.COMM_SELF)
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="MPI communicator"):
                attempt(opt)


_DEVICE_CHILD = textwrap.dedent("""
    import copy, pickle
    import numpy as np
    from numba import cuda
    import numadam
    opt = numadam.Adam([cuda.to_device(np.ones(4, np.float32))], lr=0.1)
    for attempt in (copy.deepcopy, pickle.dumps):
        try:
            attempt(opt)
        except TypeError as error:
            assert "device arrays cannot be copied or pickled" in str(error), error
        else:
            raise AssertionError(f"{attempt} accepted a device optimizer")
    print("refused")
""")


def test_device_optimizers_refuse_copies_under_the_simulator():
    pytest.importorskip("numba_cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", _DEVICE_CHILD], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "refused" in result.stdout, result.stderr[-3000:]


def test_out_of_band_pickle_buffers_never_become_the_optimizers_state():
    # Protocol 5 hands the arrays' memory to the caller. Buffers received as
    # bytes are read-only, and buffers of this process are the original's
    # memory: either way the unpickled optimizer takes its own copy of its
    # state and gradient buffers (the parameters stay what the caller gave).
    x = np.arange(5.0)
    opt = numadam.Adam([x], lr=0.1, amsgrad=True)
    opt.step([np.ones(5)])
    opt.grads[0][...] = 2.0
    buffers = []
    data = pickle.dumps(opt, protocol=5, buffer_callback=buffers.append)
    received = [bytes(b) for b in buffers]
    received[0] = bytearray(received[0])                # the parameter: writeable
    kept = [bytes(b) for b in received[1:]]
    twin = pickle.loads(data, buffers=received)
    twin.step()
    twin.zero_grad()
    assert [bytes(b) for b in received[1:]] == kept      # immutable bytes unchanged
    shared = pickle.loads(data, buffers=buffers)         # the original's memory
    snapshot = _snapshot(opt)
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert not np.shares_memory(shared.state[0][name], opt.state[0][name])
    assert not np.shares_memory(shared.grads[0], opt.grads[0])
    shared.zero_grad()
    assert opt.grads[0].all()
    _assert_unchanged(opt, snapshot, "the original")


def test_views_are_copied_as_numpy_copies_them_and_the_readme_recipe_relinks_them():
    theta = np.linspace(-1, 1, 10)
    opt = numadam.Adam([theta[:4], theta[4:]], lr=0.1)
    grads = [np.ones(4), np.ones(6)]
    opt.step(grads)
    theta2, opt2 = copy.deepcopy((theta, opt))
    before = theta2.copy()
    opt2.step(grads)
    assert_bits_equal(theta2, before, "the copied vector")       # as documented
    relinked = numadam.Adam([theta2[:4], theta2[4:]], lr=0.1)
    relinked.load_state_dict(opt.state_dict())
    relinked.step(grads)
    opt.step(grads)
    assert_bits_equal(theta2, theta, "the relinked copy")


class _Logged(numadam.AdamW):
    """A subclass with attributes of its own, as users write them."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.losses = []

    def step(self, grads=None, **kwargs):
        self.losses.append(len(self.losses))
        return super().step(grads, **kwargs)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_subclass_keeps_its_own_attributes(how):
    x = np.ones(3)
    opt = _Logged([x], lr=0.1)
    opt.step([np.ones(3)])
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert type(twin) is _Logged and twin.losses == [0]
    assert twin.losses is not opt.losses
    twin.step([np.ones(3)])
    opt.step([np.ones(3)])
    assert twin.losses == opt.losses == [0, 1]
    _assert_same(opt, twin, "after a step")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_round_trips_exactly(protocol):
    params = [np.linspace(-1, 1, 5), np.array(0.5, np.float32), np.zeros(0)]
    opt = numadam.Adam(params, lr=0.1, amsgrad=True)
    opt.grads[0][...] = 1.0
    opt.step()
    params2, twin = pickle.loads(pickle.dumps((params, opt), protocol=protocol))
    assert _params(twin)[0] is params2[0]
    assert_bits_equal(twin.grads[0], opt.grads[0], "owned gradient")
    for o in (opt, twin):
        o.grads[1][...] = -2.0
        o.step()
    _assert_same(opt, twin, f"protocol {protocol}")
