"""Every rule (Adam, AdamW, SGD, Adagrad, RMSprop) meets the whole contract.

State layout as torch keeps it, state dicts, checkpoints, copies, the
bad-input contract, the finite-gradient guard, missing gradients, schedules,
both dtypes and threads; and odd but legal uses. Golden parity with torch is
in ``test_golden.py``; these tests hold numadam to the same behaviour on
paths the golden runs do not take.
"""

import copy
import math
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numadam
from helpers import assert_bits_equal

DTYPES = (np.float32, np.float64)

# class -> hyperparameters that make every state array of the rule exist
# (non-round values), and the state keys torch keeps then, in torch's order.
FULL = {
    "Adam": (dict(lr=0.013, betas=(0.83, 0.991), eps=3e-7, weight_decay=0.021, amsgrad=True),
             ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    "AdamW": (dict(lr=0.011, betas=(0.77, 0.97), weight_decay=0.037, amsgrad=True),
              ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    "SGD": (dict(lr=0.017, momentum=0.87, dampening=0.13, weight_decay=0.019),
            ["momentum_buffer"]),
    "Adagrad": (dict(lr=0.031, lr_decay=0.007, weight_decay=0.011,
                     initial_accumulator_value=0.23, eps=3e-9),
                ["step", "sum"]),
    "RMSprop": (dict(lr=0.0071, alpha=0.93, eps=2e-7, weight_decay=0.013, momentum=0.61,
                     centered=True),
                ["step", "square_avg", "momentum_buffer", "grad_avg"]),
}
CLASSES = list(FULL)

# Group keys in torch's order (its constructors' ``defaults`` dicts, less the
# implementation flags numadam drops), then "params".
GROUP_KEYS = {
    "Adam": ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
             "decoupled_weight_decay"],
    "AdamW": ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
              "decoupled_weight_decay"],
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"],
    "Adagrad": ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                "maximize"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"],
}

SHAPES = [(16,), (3, 5), (7,)]


def _params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(dtype, step, shapes=SHAPES):
    rng = np.random.default_rng(1000 + step)
    return [(rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 1)).astype(dtype)
            for s in shapes]


def _make(cls, dtype, seed=0, **over):
    kwargs = dict(FULL[cls][0], **over)
    params = _params(dtype, seed)
    return getattr(numadam, cls)(params, **kwargs), params


def _run(opt, first, last, dtype, skip=()):
    for step in range(first, last + 1):
        grads = _grads(dtype, step)
        opt.step([None if (step, k) in skip else g for k, g in enumerate(grads)])


def _all_params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def _snapshot(opt):
    return [p.copy() for p in _all_params(opt)], opt.state_dict()


def _assert_same(opt, snapshot, what):
    """``opt``'s parameters and state equal ``snapshot``'s bit for bit, with
    the same state keys in the same order."""
    params, sd = snapshot
    for k, (p, q) in enumerate(zip(_all_params(opt), params, strict=True)):
        assert_bits_equal(p, q, f"{what}: param {k}")
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"], what
    assert list(now["state"]) == list(sd["state"]), what
    for index, entry in sd["state"].items():
        assert list(now["state"][index]) == list(entry), (what, index)
        for key, value in entry.items():
            if key == "step":
                assert now["state"][index][key] == value, (what, index)
            else:
                assert_bits_equal(now["state"][index][key], value, f"{what}: {index} {key}")


# ------------------------------------------------------------------ layout
LAYOUTS = [
    ("Adam", dict(amsgrad=False), ["step", "exp_avg", "exp_avg_sq"]),
    ("Adam", dict(amsgrad=True), ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ("AdamW", dict(amsgrad=False), ["step", "exp_avg", "exp_avg_sq"]),
    ("SGD", dict(momentum=0.0, dampening=0.0), []),
    ("SGD", dict(), ["momentum_buffer"]),
    ("SGD", dict(momentum=0.9, dampening=0.0, nesterov=True), ["momentum_buffer"]),
    ("Adagrad", dict(), ["step", "sum"]),
    ("RMSprop", dict(momentum=0.0, centered=False), ["step", "square_avg"]),
    ("RMSprop", dict(momentum=0.5, centered=False), ["step", "square_avg", "momentum_buffer"]),
    ("RMSprop", dict(momentum=0.0, centered=True), ["step", "square_avg", "grad_avg"]),
    ("RMSprop", dict(), ["step", "square_avg", "momentum_buffer", "grad_avg"]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,over,keys", LAYOUTS)
def test_state_layout_is_torchs(cls, over, keys, dtype):
    """Key names and order as torch's; ``step`` iff torch keeps one; SGD
    without momentum has no state at all; Adagrad has it from construction."""
    opt, params = _make(cls, dtype, **over)
    eager = cls == "Adagrad"
    sd = opt.state_dict()
    assert list(sd["state"]) == ([0, 1, 2] if eager else [])
    assert len(opt.state) == len(sd["state"])
    for group in sd["param_groups"]:
        assert list(group) == GROUP_KEYS[cls] + ["params"]
    if eager:
        for k, p in enumerate(params):
            assert list(opt.state[p]) == keys and opt.state[p]["step"] == 0
            assert_bits_equal(opt.state[p]["sum"], np.full(p.shape, 0.23, dtype), "sum")
    else:
        with pytest.raises(KeyError):
            opt.state[params[0]]
    _run(opt, 1, 2, dtype, skip={(1, 2), (2, 2)})   # parameter 2 never gets a gradient
    sd = opt.state_dict()
    with_state = [0, 1] + ([2] if eager else [])
    assert list(sd["state"]) == (with_state if keys else [])
    assert len(opt.state) == len(sd["state"]) and list(opt.state) == list(sd["state"])
    for index in sd["state"]:
        assert list(sd["state"][index]) == keys
        assert list(opt.state[index]) == keys
        for key in keys:
            if key == "step":
                assert type(sd["state"][index][key]) is int
                assert sd["state"][index][key] == (0 if index == 2 else 2)
            else:
                value = sd["state"][index][key]
                assert value.dtype == dtype and value.shape == params[index].shape
    if not keys:
        with pytest.raises(KeyError):
            opt.state[params[0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_adagrad_add_param_group_creates_state_from_the_constructors_value(dtype):
    """torch's Adagrad initialises every sum from its constructor's
    ``initial_accumulator_value`` (``__init__``, and ``_init_group`` reads
    ``self.defaults``); a group's own value is kept but initialises nothing.
    Measured with torch 2.13.0: groups overriding it with 0.7 and 0.9 under a
    constructor value of 0.3 all start from 0.3."""
    a, b, c = np.ones(3, dtype), np.ones(2, dtype), np.ones(4, np.float64)
    opt = numadam.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 0.7}],
                          lr=0.1, initial_accumulator_value=0.3)
    opt.add_param_group({"params": [c], "initial_accumulator_value": 0.9})
    assert opt.param_groups[1]["initial_accumulator_value"] == 0.7
    assert opt.param_groups[2]["initial_accumulator_value"] == 0.9
    assert list(opt.state) == [0, 1, 2]
    for p in (a, b, c):
        assert opt.state[p]["step"] == 0
        assert_bits_equal(opt.state[p]["sum"], np.full(p.shape, 0.3, p.dtype), "sum")
    opt.step([np.ones(3, dtype), np.ones(2, dtype), np.ones(4)])
    for p in (a, b, c):
        assert_bits_equal(opt.state[p]["sum"], np.full(p.shape, p.dtype.type(0.3) + 1, p.dtype),
                          "sum after a step")
    # A state dict that lacks a group's entries (a torch state dict saved
    # before that group's first step) gives them their initial state.
    sd = opt.state_dict()
    del sd["state"][2]
    opt.load_state_dict(sd)
    assert opt.state[c]["step"] == 0
    assert_bits_equal(opt.state[c]["sum"], np.full(4, 0.3), "sum of a missing entry")


# ------------------------------------------------------- state dicts, files
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_and_checkpoint_resume_bit_for_bit(cls, dtype, tmp_path):
    straight, _ = _make(cls, dtype)
    _run(straight, 1, 7, dtype, skip={(2, 1)})
    first, first_params = _make(cls, dtype)
    _run(first, 1, 4, dtype, skip={(2, 1)})
    first.save(tmp_path / "ckpt.npz")
    for how in ("dict", "file"):
        resumed, params = _make(cls, dtype, lr=0.5)    # the loaded groups win
        for p, q in zip(params, first_params):
            p[...] = q
        if how == "dict":
            resumed.load_state_dict(first.state_dict())
        else:
            resumed.load(tmp_path / "ckpt.npz")
        _assert_same(resumed, _snapshot(first), f"{how}: loaded")
        _run(resumed, 5, 7, dtype)
        _assert_same(resumed, _snapshot(straight), f"{how}: continued")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_bit_for_bit(cls, dtype, how):
    for steps in (0, 3):      # Adagrad has state before its first step
        opt, _ = _make(cls, dtype)
        _run(opt, 1, steps, dtype)
        twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
        _assert_same(twin, _snapshot(opt), "copy")
        _run(opt, steps + 1, steps + 3, dtype)
        _run(twin, steps + 1, steps + 3, dtype)
        _assert_same(twin, _snapshot(opt), "copy after steps")


def _legal(hyper, draw):
    """A random legal value of ``hyper``: zeros and flags both ways included."""
    if hyper.kind == "flag":
        return draw(st.booleans())
    if hyper.kind == "betas":
        return tuple(draw(st.floats(0.0, 0.999)) for _ in range(2))
    if hyper.kind == "real":
        return draw(st.sampled_from([0.0]) | st.floats(-2.0, 2.0))
    high = 0.3 if hyper.name in ("lr", "weight_decay") else 5.0
    return draw(st.sampled_from([0.0]) | st.floats(1e-8, high))


@settings(max_examples=40, deadline=None)
@given(cls=st.sampled_from(CLASSES), dtype=st.sampled_from(DTYPES), data=st.data())
def test_random_legal_hyperparameters_resume_and_copy_bit_for_bit(cls, dtype, data):
    rule = getattr(numadam, cls).rule
    kwargs = {h.name: _legal(h, data.draw) for h in rule.hyper
              if not (cls == "AdamW" and h.name == "decoupled_weight_decay")}
    if cls == "SGD" and kwargs["nesterov"] and not (kwargs["momentum"] > 0
                                                   and kwargs["dampening"] == 0):
        kwargs["nesterov"] = False
    k = data.draw(st.integers(0, 3))
    straight = getattr(numadam, cls)(_params(dtype), **kwargs)
    first = getattr(numadam, cls)(_params(dtype), **kwargs)
    with np.errstate(all="ignore"):     # a huge lr or decay may overflow, as in torch
        _run(straight, 1, k + 2, dtype)
        _run(first, 1, k, dtype)
        resumed = getattr(numadam, cls)(_params(dtype, seed=5), **FULL[cls][0])
        for p, q in zip(_all_params(resumed), _all_params(first)):
            p[...] = q
        resumed.load_state_dict(first.state_dict())
        twin = pickle.loads(pickle.dumps(first))
        for opt in (resumed, twin):
            _run(opt, k + 1, k + 2, dtype)
    for opt in (resumed, twin):
        _assert_same(opt, _snapshot(straight), f"{cls} {kwargs} after {k}")


# A buffer torch keeps after its option is switched off.
SWITCHED_OFF = [
    ("SGD", dict(momentum=0.9, dampening=0.0), dict(momentum=0.0), "momentum_buffer"),
    ("Adam", dict(amsgrad=True), dict(amsgrad=False), "max_exp_avg_sq"),
    ("RMSprop", dict(momentum=0.5, centered=True), dict(centered=False), "grad_avg"),
    ("RMSprop", dict(momentum=0.5, centered=False), dict(momentum=0.0), "momentum_buffer"),
]


def test_an_unused_buffer_loaded_keeps_torchs_key_order():
    """RMSprop without momentum but centered, loaded with a momentum_buffer
    (torch keeps one after momentum is switched off): the rows put the used
    grad_avg first, the state keys stay in torch's order."""
    x = np.ones(16)
    opt = numadam.RMSprop([x], lr=0.01, centered=True)
    sd = opt.state_dict()
    keys = ["step", "square_avg", "momentum_buffer", "grad_avg"]
    sd["state"] = {0: {key: (3 if key == "step" else np.full(16, 0.5 + n))
                       for n, key in enumerate(keys)}}
    opt.load_state_dict(sd)
    assert list(opt.state_dict()["state"][0]) == keys and list(opt.state[x]) == keys
    assert_bits_equal(opt.state[x]["grad_avg"], np.full(16, 3.5), "grad_avg")
    opt.step([np.ones(16)])
    assert_bits_equal(opt.state[x]["momentum_buffer"], np.full(16, 2.5), "unused, unchanged")
    assert opt.state[x]["step"] == 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,on,off,key", SWITCHED_OFF)
def test_a_buffer_switched_off_survives_state_dicts_checkpoints_and_copies(
        cls, on, off, key, dtype, tmp_path):
    """Switching an option off after the first step keeps its buffer, as
    torch does; the state dict then holds a buffer the group's
    hyperparameters do not use. It must load (into a fresh optimizer, from a
    file, into itself), and switching the option back on must continue from
    that buffer exactly as the original does."""
    opt, _ = _make(cls, dtype, **on)
    _run(opt, 1, 3, dtype)
    opt.param_groups[0].update(off)
    _run(opt, 4, 5, dtype)
    sd = opt.state_dict()
    assert key in sd["state"][0]
    opt.save(tmp_path / "ckpt.npz")
    twins = []
    for how in ("dict", "file", "self", "deepcopy", "pickle"):
        if how == "pickle":
            twin = pickle.loads(pickle.dumps(opt))
        elif how in ("deepcopy", "self"):
            twin = copy.deepcopy(opt)
            if how == "self":
                twin.load_state_dict(twin.state_dict())
        else:
            twin, params = _make(cls, dtype, **on)
            for p, q in zip(params, _all_params(opt)):
                p[...] = q
            if how == "dict":
                twin.load_state_dict(sd)
            else:
                twin.load(tmp_path / "ckpt.npz")
        _assert_same(twin, _snapshot(opt), how)
        twins.append((how, twin))
    _run(opt, 6, 7, dtype)
    opt.param_groups[0].update(on)
    _run(opt, 8, 9, dtype)
    for how, twin in twins:
        if how in ("dict", "file"):
            assert twin.param_groups[0][next(iter(off))] == off[next(iter(off))]
        _run(twin, 6, 7, dtype)
        twin.param_groups[0].update(on)
        _run(twin, 8, 9, dtype)
        _assert_same(twin, _snapshot(opt), f"{how}: switched back on")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_without_momentum_loads_a_momentum_buffer_and_uses_it_when_switched_on(dtype):
    """As torch's SGD keeps whatever ``state_dict`` gives it: the buffer waits
    unused, and momentum switched on later continues from it."""
    x = np.ones(16, dtype)
    opt = numadam.SGD([x], lr=0.1)
    sd = opt.state_dict()
    sd["state"] = {0: {"momentum_buffer": np.full(16, 2.0, dtype)}}
    opt.load_state_dict(sd)
    assert list(opt.state[x]) == ["momentum_buffer"]
    opt.step([np.ones(16, dtype)])                  # no momentum: p -= lr * g
    assert_bits_equal(x, np.full(16, dtype(1) - dtype(0.1), dtype), "plain step")
    opt.param_groups[0]["momentum"] = 0.5
    opt.step([np.ones(16, dtype)])                  # buf = 0.5 * 2 + 1 = 2
    assert_bits_equal(opt.state[x]["momentum_buffer"], np.full(16, 2.0, dtype), "buffer")
    assert_bits_equal(x, np.full(16, dtype(0.9) - dtype(0.1) * 2, dtype), "momentum step")


def test_an_old_torch_sgd_state_dict_with_none_buffers_loads():
    """torch < 2.0 wrote ``{"momentum_buffer": None}`` for every stepped
    parameter of an SGD without momentum (its ``step`` stored the buffer list
    unconditionally); torch 2.13 loads that and reads None as no buffer."""
    x, y = np.ones(16), np.ones(4)
    opt = numadam.SGD([x, y], lr=0.1)
    sd = opt.state_dict()
    sd["state"] = {0: {"momentum_buffer": None}, 1: {"momentum_buffer": None}}
    opt.load_state_dict(sd)
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}
    opt.step([np.ones(16), np.ones(4)])
    assert_bits_equal(x, np.full(16, 0.9), "a plain SGD step")


@pytest.mark.parametrize("cls", CLASSES)
def test_a_torch_state_dict_missing_some_entries_loads(cls):
    """A torch state dict converted to NumPy (0-d float32 steps, torch's
    implementation flags in the groups) that lacks the entries of parameters
    torch never stepped: those start fresh, as they would in torch; the
    others continue exactly. Adagrad, whose state torch makes at
    construction, gives them step 0 and the constructor's initial sum."""
    dtype = np.float32
    src, _ = _make(cls, dtype)
    _run(src, 1, 3, dtype, skip={(s, 1) for s in range(1, 4)})
    sd = src.state_dict()
    for entry in sd["state"].values():
        if "step" in entry:
            entry["step"] = np.array(entry["step"], np.float32)
    sd["state"].pop(1, None)
    for group in sd["param_groups"]:
        group.update(foreach=None, fused=True, differentiable=False)
    dst, params = _make(cls, dtype, lr=0.5)
    for p, q in zip(params, _all_params(src)):
        p[...] = q
    dst.load_state_dict(sd)
    if cls == "Adagrad":
        assert dst.state[1]["step"] == 0
        assert_bits_equal(dst.state[1]["sum"], np.full(SHAPES[1], 0.23, dtype), "fresh sum")
    else:
        assert 1 not in dst.state
    _run(src, 4, 5, dtype)
    _run(dst, 4, 5, dtype)
    _assert_same(dst, _snapshot(src), "continued")


# ------------------------------------------------------------ bad input
def _bad_values(kind):
    common = [math.nan, math.inf, "0.1", None, [0.1]]
    return {
        "nonneg": common + [-1e-3, -math.inf, True],
        "init": common + [-0.5, False],
        "real": common + [-math.inf, True],
        "flag": [1, 0, "True", None, 1.0],
        "betas": [(0.9,), (0.9, 1.0), (-0.1, 0.9), (0.9, math.nan), "ab", 0.9],
    }[kind]


def _bad_cases():
    cases = []
    for cls in CLASSES:
        for hyper in getattr(numadam, cls).rule.hyper:
            if cls == "AdamW" and hyper.name == "decoupled_weight_decay":
                continue                      # not an argument of AdamW
            for value in _bad_values(hyper.kind):
                cases.append((cls, hyper.name, value))
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("cls,name,value", BAD, ids=[f"{c}-{n}-{v!r}" for c, n, v in BAD])
def test_bad_hyperparameters_are_refused_naming_the_value(cls, name, value):
    x = np.ones(4)
    with pytest.raises(ValueError) as info:
        getattr(numadam, cls)([x], **{name: value})
    message = str(info.value)
    assert name in message
    # The value itself, or for a pair the culprit element.
    shown = [value] + (list(value) if isinstance(value, tuple) else [])
    assert any(f"got {v!r}" in message for v in shown), message
    # The same value written into a group is refused at the next step, with
    # nothing changed, and the group can be repaired.
    opt, params = _make(cls, np.float64)
    _run(opt, 1, 2, np.float64)
    before = _snapshot(opt)
    good = opt.param_groups[0][name]
    opt.param_groups[0][name] = value
    with pytest.raises(ValueError, match=rf"param_groups\[0\]: .*{name}"):
        opt.step(_grads(np.float64, 3))
    _assert_same_after_refusal(opt, before, name, value, good)


def _assert_same_after_refusal(opt, before, name, value, good, grads=None):
    params, sd = before
    for p, q in zip(_all_params(opt), params):
        assert_bits_equal(p, q, "param after a refused step")
    for index, entry in sd["state"].items():
        for key, v in entry.items():
            if key == "step":
                assert opt.state[index][key] == v
            else:
                assert_bits_equal(opt.state[index][key], v, f"{key} after a refused step")
    opt.param_groups[0][name] = good
    opt.step(grads or _grads(params[0].dtype, 3))


finite_negative = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False)
nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])


@settings(max_examples=60, deadline=None)
@given(cls=st.sampled_from(CLASSES), data=st.data())
def test_random_bad_hyperparameters_are_refused_before_any_array_is_touched(cls, data):
    """A random hyperparameter of a random kind gets a random bad value, in
    the constructor and as an edit between steps."""
    rule = getattr(numadam, cls).rule
    hyper = data.draw(st.sampled_from([h for h in rule.hyper
                                       if not (cls == "AdamW" and h.kind == "flag"
                                               and h.name == "decoupled_weight_decay")]))
    if hyper.kind in ("nonneg", "init"):
        value = data.draw(finite_negative | nonfinite)
    elif hyper.kind == "real":
        value = data.draw(nonfinite)
    elif hyper.kind == "flag":
        value = data.draw(st.integers() | st.floats() | st.text(max_size=3))
    else:
        good = st.floats(0, 0.999)
        value = data.draw(st.tuples(finite_negative | nonfinite | st.floats(1.0, 1e300), good)
                          .map(lambda t: t[::-1] if t[1] > 0.5 else t))
    x = np.ones(4)
    with pytest.raises(ValueError, match=hyper.name):
        getattr(numadam, cls)([x], **{hyper.name: value})
    assert (x == 1).all()
    opt, params = _make(cls, np.float32)
    _run(opt, 1, 1, np.float32)
    before = _snapshot(opt)
    good = opt.param_groups[0][hyper.name]
    opt.param_groups[0][hyper.name] = value
    with pytest.raises(ValueError, match=hyper.name):
        opt.step(_grads(np.float32, 2))
    _assert_same_after_refusal(opt, before, hyper.name, value, good)


@pytest.mark.parametrize("momentum,dampening", [(0.0, 0.0), (0.9, 0.1), (0.9, -0.1)])
def test_sgd_nesterov_needs_momentum_and_no_dampening_as_in_torch(momentum, dampening):
    x = np.ones(4)
    with pytest.raises(ValueError, match="nesterov"):
        numadam.SGD([x], momentum=momentum, dampening=dampening, nesterov=True)
    opt = numadam.SGD([x], lr=0.1, momentum=0.9, nesterov=True)
    opt.step([np.ones(4)])
    before = _snapshot(opt)
    opt.param_groups[0].update(momentum=momentum, dampening=dampening)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: nesterov"):
        opt.step([np.ones(4)])
    opt.param_groups[0]["momentum"] = 0.9
    _assert_same_after_refusal(opt, before, "dampening", None, 0.0, [np.ones(4)])


SWITCHED_ON = [
    ("SGD", dict(momentum=0.0, dampening=0.0), dict(momentum=0.9), "momentum_buffer"),
    ("RMSprop", dict(centered=False, momentum=0.0), dict(centered=True), "grad_avg"),
    ("RMSprop", dict(centered=False, momentum=0.0), dict(momentum=0.3), "momentum_buffer"),
    ("Adam", dict(amsgrad=False), dict(amsgrad=True), "max_exp_avg_sq"),
    ("AdamW", dict(amsgrad=False), dict(amsgrad=True), "max_exp_avg_sq"),
]


@pytest.mark.parametrize("cls,off,on,key", SWITCHED_ON)
def test_switching_on_a_state_creating_option_after_the_first_step_is_refused(cls, off, on, key):
    """The buffer would have to start mid-run from nothing; a clear error
    and nothing changed, and the optimizer keeps working once reverted."""
    opt, _ = _make(cls, np.float64, **off)
    _run(opt, 1, 2, np.float64)
    before = _snapshot(opt)
    name = next(iter(on))
    opt.param_groups[0].update(on)
    with pytest.raises(ValueError, match=rf"param_groups\[0\]: .*needs {key}"):
        opt.step(_grads(np.float64, 3))
    _assert_same_after_refusal(opt, before, name, on[name], off[name])


@pytest.mark.parametrize("src", CLASSES)
@pytest.mark.parametrize("dst", CLASSES)
def test_a_state_dict_of_another_rule_is_refused_with_nothing_changed(src, dst):
    if src == dst or {src, dst} <= {"Adam", "AdamW"}:
        return                                # one rule (test_state.py covers them)
    other, _ = _make(src, np.float64)
    _run(other, 1, 2, np.float64)
    opt, _ = _make(dst, np.float64)
    _run(opt, 1, 2, np.float64)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict(other.state_dict())
    # Groups of the right rule over another rule's state arrays.
    sd = opt.state_dict()
    sd["state"] = other.state_dict()["state"]
    with pytest.raises(ValueError, match=r"does not keep|has no '(step|sum|square_avg)'"):
        opt.load_state_dict(sd)
    _assert_same(opt, before, "after refused loads")


# ---------------------------------------------- gradients and the guard
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_check_finite_changes_nothing_on_a_nonfinite_gradient(cls, dtype, mode):
    opt, _ = _make(cls, dtype, check_finite=mode)
    clean, _ = _make(cls, dtype)
    _run(opt, 1, 2, dtype)
    _run(clean, 1, 2, dtype)
    before = _snapshot(opt)
    for bad in (np.nan, np.inf, -np.inf):
        grads = _grads(dtype, 3)
        grads[1][2, 4] = bad
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="parameter 1"):
                opt.step(grads)
        else:
            opt.step(grads)
        _assert_same(opt, before, f"after a gradient holding {bad}")
    assert opt.skipped_steps == (3 if mode == "skip" else 0)
    _run(opt, 3, 4, dtype)
    _run(clean, 3, 4, dtype)
    _assert_same(opt, _snapshot(clean), "after the refused steps")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
def test_a_missing_gradient_leaves_its_parameter_and_state_untouched(cls, dtype):
    opt, params = _make(cls, dtype)
    _run(opt, 1, 2, dtype)
    before = _snapshot(opt)
    grads = _grads(dtype, 3)
    grads[1] = None
    opt.step(grads)
    after = opt.state_dict()
    assert_bits_equal(params[1], before[0][1], "parameter without a gradient")
    assert list(after["state"][1]) == list(before[1]["state"][1])
    for key, value in before[1]["state"][1].items():
        if key == "step":
            assert after["state"][1][key] == value
        else:
            assert_bits_equal(after["state"][1][key], value, key)
    for k in (0, 2):
        assert not np.array_equal(params[k], before[0][k]), "the others moved"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
def test_learning_rate_edits_between_steps_take_effect_exactly(cls, dtype):
    """An edited lr is the lr of the next step: bit for bit the optimizer
    built with that lr over the same state; an int lr is the same float."""
    opt, _ = _make(cls, dtype)
    _run(opt, 1, 2, dtype)
    sd = opt.state_dict()
    other, params = _make(cls, dtype)
    for p, q in zip(params, _all_params(opt)):
        p[...] = q
    sd["param_groups"][0]["lr"] = 0.0031
    other.load_state_dict(sd)
    opt.param_groups[0]["lr"] = 0.0031
    _run(opt, 3, 4, dtype)
    _run(other, 3, 4, dtype)
    _assert_same(opt, _snapshot(other), "edited lr")
    moved = _snapshot(opt)[0]
    opt.param_groups[0]["lr"] = 0
    other.param_groups[0]["lr"] = 0.0
    _run(opt, 5, 5, dtype)
    _run(other, 5, 5, dtype)
    snap = _snapshot(other)
    for p, q in zip(_all_params(opt), snap[0]):
        assert_bits_equal(p, q, "int lr")
    for p, q in zip(_all_params(opt), moved):   # lr 0: every update (and decay) is 0
        assert_bits_equal(p, q, "lr 0")


@pytest.mark.parametrize("cls", CLASSES)
def test_a_group_mixing_float32_and_float64_steps_each_dtype_exactly(cls):
    """One group, two dtypes (two buckets) = one optimizer per dtype."""
    mixed = [np.linspace(-1, 1, 16).astype(np.float32), np.linspace(-2, 1, 9),
             np.linspace(0, 1, 5).astype(np.float32)]
    opt = getattr(numadam, cls)(mixed, **FULL[cls][0])
    f32 = [mixed[0].copy(), mixed[2].copy()]
    f64 = [mixed[1].copy()]
    opt32 = getattr(numadam, cls)(f32, **FULL[cls][0])
    opt64 = getattr(numadam, cls)(f64, **FULL[cls][0])
    for step in range(4):
        g = [np.cos(np.arange(p.size) + step).astype(p.dtype) for p in mixed]
        opt.step(g)
        opt32.step([g[0], g[2]])
        opt64.step([g[1]])
    sd, sd32, sd64 = opt.state_dict(), opt32.state_dict(), opt64.state_dict()
    for k, (ref, ref_sd, i) in enumerate([(f32[0], sd32, 0), (f64[0], sd64, 0),
                                          (f32[1], sd32, 1)]):
        assert_bits_equal(mixed[k], ref, f"param {k}")
        assert list(sd["state"][k]) == list(ref_sd["state"][i])
        for key, value in ref_sd["state"][i].items():
            if key != "step":
                assert_bits_equal(sd["state"][k][key], value, f"{k} {key}")


@pytest.mark.parametrize("cls", CLASSES)
def test_maximize_with_weight_decay_is_minimising_the_negated_gradient(cls):
    """torch negates the gradient first, then adds the decay: bit for bit the
    minimisation of ``-g`` (for finite gradients; a NaN's sign may differ)."""
    for dtype in DTYPES:
        up, a = _make(cls, dtype, maximize=True)
        down, b = _make(cls, dtype, maximize=False)
        assert up.param_groups[0]["weight_decay"] > 0
        for step in range(1, 5):
            grads = _grads(dtype, step)
            up.step(grads)
            down.step([-g for g in grads])
        for p, q in zip(a, b):
            assert_bits_equal(p, q, f"{cls} {dtype}")


# --------------------------------------------------------------- threads
@pytest.mark.parametrize("cls", CLASSES)
def test_two_threads_sharing_one_optimizer_take_turns(cls):
    """Constant gradients make the order of the steps irrelevant: 2 x 40
    steps from two threads = 80 steps from one, bit for bit (a torn step,
    one bucket stepped twice or a lost step, would show)."""
    shapes = [(4096,), (33,), (2, 300)]
    grads = [np.cos(np.arange(int(np.prod(s)))).reshape(s) for s in shapes]
    kwargs = FULL[cls][0]
    shared = getattr(numadam, cls)([np.ones(s) for s in shapes], **kwargs)
    alone = getattr(numadam, cls)([np.ones(s) for s in shapes], **kwargs)
    errors = []

    def work():
        try:
            for _ in range(40):
                shared.step([g.copy() for g in grads])
                shared.state_dict()
        except BaseException as error:   # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for _ in range(80):
        alone.step(grads)
    _assert_same(shared, _snapshot(alone), "two threads")


# ------------------------------------------------------ odd but legal uses
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
def test_zero_size_parameters_have_state_and_steps_as_in_torch(cls, dtype, tmp_path):
    """torch steps an empty tensor like any other (its step counts); numadam
    must too, without touching its neighbours' memory."""
    params = [np.zeros(0, dtype), np.ones(5, dtype), np.zeros((3, 0), dtype)]
    opt = getattr(numadam, cls)(params, **FULL[cls][0])
    ref = getattr(numadam, cls)([np.ones(5, dtype)], **FULL[cls][0])
    for step in range(3):
        g = np.full(5, 0.5 + step, dtype)
        opt.step([np.zeros(0, dtype), g, np.zeros((3, 0), dtype)])
        ref.step([g])
    assert_bits_equal(params[1], _all_params(ref)[0], "the non-empty neighbour")
    sd = opt.state_dict()
    keys = FULL[cls][1]
    for k in (0, 2):
        assert list(sd["state"][k]) == keys
        if "step" in keys:
            assert sd["state"][k]["step"] == 3
        for key in keys[1:] if "step" in keys else keys:
            assert sd["state"][k][key].shape == params[k].shape
    opt.save(tmp_path / "empty.npz")
    again = getattr(numadam, cls)([np.zeros(0, dtype), params[1].copy(),
                                   np.zeros((3, 0), dtype)], **FULL[cls][0])
    again.load(tmp_path / "empty.npz")
    _assert_same(again, _snapshot(opt), "zero-size through a checkpoint")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_alpha_above_one_is_accepted_as_in_torch(dtype):
    """torch checks only ``alpha >= 0``; ``1 - alpha < 0`` drives the average
    negative, and the square root of a negative is NaN, in torch as here."""
    x = np.ones(16, dtype)
    opt = numadam.RMSprop([x], alpha=1.5)
    opt.step([np.ones(16, dtype)])
    # square_avg = 1.5 * 0 + (1 - 1.5) * 1 * 1
    assert_bits_equal(opt.state[x]["square_avg"], np.full(16, -0.5, dtype), "square_avg")
    assert np.isnan(x).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_centered_alpha_zero_is_nan_where_torchs_fused_residual_is_negative(dtype):
    """With ``alpha = 0`` the first step has ``square_avg = round(g*g)`` and
    ``grad_avg = g``; torch's ``addcmul(grad_avg, grad_avg, value=-1)`` is one
    FMA, so the variance is the exact rounding error ``round(g*g) - g*g``, and
    its square root is NaN wherever that is negative (torch 2.13.0 measured:
    the same NaN mask, the same bits elsewhere). A separately rounded product
    would give 0 everywhere, and no NaN."""
    from fractions import Fraction
    g = np.random.default_rng(7).standard_normal(64).astype(dtype)
    x = np.zeros(64, dtype)
    opt = numadam.RMSprop([x], lr=0.01, alpha=0.0, centered=True)
    with np.errstate(invalid="ignore"):
        opt.step([g.copy()])
    residual = [Fraction(float(v * v)) - Fraction(float(v)) ** 2 for v in g]
    assert_bits_equal(np.isnan(x), np.array([r < 0 for r in residual]), "NaN mask")
    assert 0 < np.isnan(x).sum() < 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_adagrad_huge_lr_decay_stops_the_updates_without_nan(dtype):
    """``1 + (t - 1) * 1e308`` overflows to inf at step 3: the rate is 0, as
    torch's double arithmetic gives, not NaN."""
    x = np.ones(16, dtype)
    opt = numadam.Adagrad([x], lr=0.1, lr_decay=1e308)
    opt.step([np.ones(16, dtype)])
    after_one = x.copy()
    assert_bits_equal(after_one, np.full(16, dtype(1) - dtype(0.1) / (dtype(1) + dtype(1e-10)),
                                         dtype), "first step")
    for _ in range(3):
        opt.step([np.ones(16, dtype)])
    assert_bits_equal(x, after_one, "no movement once the rate underflows or is 0")
    assert opt.state[x]["step"] == 4


def test_sgd_negative_dampening_is_accepted_as_in_torch():
    """torch does not check dampening: -1 makes ``1 - dampening`` = 2."""
    x = np.zeros(16)
    opt = numadam.SGD([x], lr=0.5, momentum=0.5, dampening=-1.0)
    opt.step([np.ones(16)])            # first step: buf = g = 1 (no dampening)
    opt.step([np.ones(16)])            # buf = 0.5 * 1 + 2 * 1 = 2.5
    assert_bits_equal(opt.state[x]["momentum_buffer"], np.full(16, 2.5), "buffer")
    assert_bits_equal(x, np.full(16, -0.5 - 1.25), "param")


@pytest.mark.parametrize("cls", CLASSES)
def test_writes_through_state_views_are_what_the_next_step_reads(cls):
    """``opt.state[p][key] = value`` and in-place writes into the views equal
    loading a state dict holding those values."""
    dtype = np.float32
    opt, _ = _make(cls, dtype)
    _run(opt, 1, 2, dtype)
    keys = [k for k in FULL[cls][1] if k != "step"]
    for n, key in enumerate(keys):
        opt.state[0][key] = np.full(SHAPES[0], 0.25 * (n + 1))    # float64 cast in
        opt.state[1][key][...] = 0.5 * (n + 1)
    if "step" in FULL[cls][1]:
        opt.state[2]["step"] = 7
    else:
        with pytest.raises(KeyError):
            opt.state[2]["step"] = 7
    sd = opt.state_dict()
    assert_bits_equal(sd["state"][0][keys[0]], np.full(SHAPES[0], 0.25, dtype), "set")
    other, params = _make(cls, dtype)
    for p, q in zip(params, _all_params(opt)):
        p[...] = q
    other.load_state_dict(sd)
    _run(opt, 3, 4, dtype)
    _run(other, 3, 4, dtype)
    _assert_same(opt, _snapshot(other), "after writes through the views")
    with pytest.raises(TypeError):
        del opt.state[0][keys[0]]
