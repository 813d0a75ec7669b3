"""opt.jit(): the optimizer handle inside @njit code, against Python steps."""

import copy
import gc
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
import zlib

import numpy as np
import pytest
from numba import njit

import numadam
import optim_configs as oc
from helpers import assert_bits_equal


@njit
def steps(h, n):
    for _ in range(n):
        h.step()


@njit(nogil=True)
def steps_nogil(h, n):
    for _ in range(n):
        h.step()


@njit
def set_lr(h, group, value):
    h.set_lr(group, value)


@njit
def get_lr(h, group):
    return h.get_lr(group)


def random_hyper(name, rng):
    """The config's constructor keywords with every real hyperparameter
    moved to a random value of its range (flags and layout kept)."""
    kwargs = dict(oc.CONFIGS[name]["kwargs"])
    kwargs["lr"] = kwargs.get("lr", 1e-2) * rng.uniform(0.3, 3.0)
    for key in ("weight_decay", "momentum", "lr_decay", "dampening"):
        if kwargs.get(key):
            kwargs[key] = kwargs[key] * rng.uniform(0.5, 1.1)
    if "betas" in kwargs or oc.CONFIGS[name]["cls"] in ("Adam", "AdamW"):
        kwargs["betas"] = (rng.uniform(0.5, 0.95), rng.uniform(0.9, 0.9999))
    if oc.CONFIGS[name]["cls"] == "RMSprop":
        kwargs["alpha"] = rng.uniform(0.8, 0.999)
    if kwargs.get("eps"):
        kwargs["eps"] = kwargs["eps"] * rng.uniform(0.5, 2.0)
    return kwargs


def twins(name, dtype, seed=0):
    """Two optimizers of configuration ``name`` with the same random
    hyperparameters over equal copies of the parameters."""
    rng = np.random.default_rng(zlib.crc32(f"{name} {dtype} {seed}".encode()))
    config = oc.CONFIGS[name]
    kwargs = random_hyper(name, rng)
    out = []
    for _ in range(2):
        params = oc.initial_params(oc.index(name), dtype)
        groups = [dict(params=[params[k] for k in shapes], **over)
                  for shapes, over in oc.layout(config)]
        out.append((getattr(numadam, config["cls"])(groups, **kwargs), params))
    return out, rng


def fill(opts, rng, dtype):
    """The same random gradient into the owned buffers of every optimizer."""
    for k, g in enumerate(opts[0].grads):
        value = (rng.standard_normal(g.shape) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
        for opt in opts:
            opt.grads[k][...] = value


def assert_same(a, b, what):
    """Parameters, state and step counts of optimizers ``a`` and ``b`` bit for bit."""
    for k, (p, q) in enumerate(zip([x for g in a.param_groups for x in g["params"]],
                                   [x for g in b.param_groups for x in g["params"]])):
        assert_bits_equal(p, q, f"{what}: param {k}")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys(), what
    for index, entry in sa["state"].items():
        assert entry.keys() == sb["state"][index].keys(), what
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert_bits_equal(value, sb["state"][index][key], f"{what}: {index} {key}")
            else:
                assert value == sb["state"][index][key], (what, index, key)
    assert sa["param_groups"] == sb["param_groups"], what


@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", list(oc.CONFIGS))
def test_handle_steps_are_python_steps_bit_for_bit(name, dtype):
    ((a, _), (b, _)), rng = twins(name, dtype)
    h = b.jit()
    # Python and compiled steps interleaved on b, Python steps only on a,
    # with the learning rate moved from both sides.
    for t in range(1, 9):
        fill([a, b], rng, dtype)
        if t == 4:
            lr = a.param_groups[-1]["lr"] * 0.5
            a.param_groups[-1]["lr"] = lr
            set_lr(h, len(b.param_groups) - 1, lr)
        if t == 6:
            a.param_groups[0]["lr"] = b.param_groups[0]["lr"] = 2e-3
        a.step()
        if t % 3 == 0:
            b.step()
        else:
            steps(h, 1)
        assert_same(a, b, f"{name} {dtype} step {t}")


@pytest.mark.parametrize("dtype", oc.DTYPES)
def test_state_continues_both_ways_through_state_dict_and_files(dtype, tmp_path):
    name = "rmsprop_groups_schedule_missing_grads"
    (a, _), (b, _) = twins(name, dtype)[0]
    rng = np.random.default_rng(5)
    h = b.jit()
    for t in range(3):              # Python first, then compiled
        fill([a, b], rng, dtype)
        a.step()
        b.step()
    for t in range(3):
        fill([a, b], rng, dtype)
        a.step()
        steps(h, 1)
    assert_same(a, b, "after compiled steps")
    b.save(tmp_path / "b.npz")
    (c, _), _ = twins(name, dtype)[0]
    for p, q in zip([x for g in c.param_groups for x in g["params"]],
                    [x for g in b.param_groups for x in g["params"]]):
        p[...] = q                  # the file holds the state; parameters travel apart
    c.load(tmp_path / "b.npz")
    hc = c.jit()                    # a fresh optimizer continues from the file
    c_state = b.state_dict()
    for t in range(3):
        fill([a, b, c], rng, dtype)
        a.step()
        steps(h, 1)
        steps(hc, 1)
    assert_same(a, b, "compiled after save")
    assert_same(a, c, "loaded, then compiled")
    assert c_state["state"][0]["step"] + 3 == b.state_dict()["state"][0]["step"]


def test_a_python_step_with_some_gradients_then_a_compiled_step_reads_opt_grads():
    (a, pa), (b, pb) = twins("adam", "float64")[0]
    rng = np.random.default_rng(1)
    h = b.jit()
    user = [rng.standard_normal(p.shape) for p in pa]
    user[1] = None
    a.step(user)
    b.step(user)
    fill([a, b], rng, "float64")
    a.step()
    steps(h, 1)
    assert_same(a, b, "step(grads) then h.step()")


def test_groups_of_mixed_dtypes_step_in_one_compiled_call():
    rng = np.random.default_rng(2)
    made = []
    for _ in range(2):
        ps = [np.linspace(-1, 1, 16).astype(np.float32), np.linspace(2, 3, 8),
              np.linspace(0, 1, 5).astype(np.float32), np.linspace(-3, 0, 7)]
        made.append(numadam.AdamW([dict(params=ps[:2], lr=3e-3),
                                   dict(params=ps[2:], lr=7e-3, amsgrad=True,
                                        betas=(0.71, 0.977))], weight_decay=0.013))
    a, b = made
    h = b.jit()
    for t in range(5):
        for k, g in enumerate(a.grads):
            g[...] = rng.standard_normal(g.shape)
            b.grads[k][...] = g
        a.step()
        steps(h, 1)
    assert len(b._buckets) == 4
    assert_same(a, b, "mixed dtypes")


@njit
def hyper_roundtrip(h):
    before = (h.get_hyper(0, "beta1"), h.get_hyper(0, "beta2"), h.get_hyper(0, "eps"),
              h.get_hyper(0, "amsgrad"))
    h.set_hyper(0, "beta1", 0.5)
    h.set_hyper(0, "weight_decay", np.float32(0.25))
    h.set_lr(1, 3)
    return before


def test_hyperparameters_cross_both_ways():
    params = [np.zeros(4), np.zeros(3)]
    opt = numadam.Adam([dict(params=params[:1]), dict(params=params[1:], lr=0.1)],
                       betas=(0.8, 0.9), eps=1e-6, amsgrad=True)
    h = opt.jit()
    assert hyper_roundtrip(h) == (0.8, 0.9, 1e-6, True)
    groups = opt.param_groups
    assert groups[0]["betas"] == (0.5, 0.9) and type(groups[0]["betas"]) is tuple
    assert groups[0]["weight_decay"] == 0.25
    assert groups[1]["lr"] == 3.0 and type(groups[1]["lr"]) is float
    # Python's edits reach the handle at its next entry into compiled code.
    opt.param_groups[1]["lr"] = 0.125
    assert get_lr(h, 1) == 0.125
    opt.param_groups[0]["betas"] = (0.6, 0.7)
    assert hyper_roundtrip(h)[:2] == (0.6, 0.7)
    # A bad Python edit is refused where the handle enters, as step() would.
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr"):
        get_lr(h, 1)


def test_a_value_set_inside_njit_is_what_the_next_python_step_uses():
    (a, _), (b, _) = twins("sgd_nesterov_weight_decay", "float32")[0]
    rng = np.random.default_rng(3)
    h = b.jit()
    set_lr(h, 0, 0.03125)
    a.param_groups[0]["lr"] = 0.03125
    for _ in range(3):
        fill([a, b], rng, "float32")
        a.step()
        b.step()
    assert_same(a, b, "lr set in njit, Python steps")


@njit
def set_named(h, value):
    h.set_hyper(0, "momentum", value)


@njit
def set_dampening(h, value):
    h.set_hyper(0, "dampening", value)


def test_values_set_inside_njit_are_validated_there():
    opt = numadam.SGD([np.zeros(3)], lr=0.1, momentum=0.9, nesterov=True)
    h = opt.jit()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError) as error:
            set_lr(h, 0, bad)
        assert str(error.value).startswith("numadam: h.set_lr: lr must be a finite number >= 0")
        assert repr(bad) in str(error.value)
    with pytest.raises(ValueError, match="^numadam: nesterov=True requires"):
        set_dampening(h, 0.5)
    with pytest.raises(IndexError, match="^numadam: h.set_lr: group 3 does not exist"):
        set_lr(h, 3, 0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["dampening"] == 0.0
    # Momentum decides whether SGD has a momentum buffer: switching it off
    # and on again keeps the layout; from zero it would need a new array.
    plain = numadam.SGD([np.zeros(3)], lr=0.1)
    hp = plain.jit()
    with pytest.raises(ValueError, match="^numadam: h.set_hyper: momentum cannot switch"):
        set_named(hp, 0.5)


@njit
def set_flag(h):
    h.set_hyper(0, "maximize", 1.0)


@njit
def set_unknown(h):
    h.set_hyper(0, "beta3", 1.0)


@njit
def set_text(h):
    h.set_lr(0, "fast")


@njit
def set_by_variable(h, name):
    h.set_hyper(0, name, 0.1)


@njit
def get_init(h):
    return h.get_hyper(0, "initial_accumulator_value")


def first_line(error):
    return str(error.value).splitlines()[0]


def test_typing_errors_lead_with_numadams_message():
    h = numadam.Adam([np.zeros(3)]).jit()
    with pytest.raises(TypeError) as error:
        set_flag(h)
    assert first_line(error).startswith("numadam: h.set_hyper: maximize is a flag")
    with pytest.raises(TypeError) as error:
        set_unknown(h)
    assert first_line(error).startswith("numadam: h.set_hyper: adam has no hyperparameter "
                                        "'beta3'")
    with pytest.raises(TypeError) as error:
        set_text(h)
    assert first_line(error).startswith("numadam: h.set_lr: the learning rate must be a real")
    with pytest.raises(TypeError) as error:
        set_by_variable(h, "lr")
    assert first_line(error).startswith("numadam: h.set_hyper: the hyperparameter name "
                                        "must be a literal string")
    with pytest.raises(TypeError) as error:
        get_init(numadam.Adagrad([np.zeros(2)]).jit())
    assert first_line(error).startswith("numadam: h.get_hyper: initial_accumulator_value "
                                        "only initialises")


def test_the_handle_keeps_what_it_points_at_alive():
    params = [np.ones(1000), np.ones(10)]
    opt = numadam.Adam(params, lr=0.5)
    opt.grads[0][...] = 1.0
    opt.grads[1][...] = -1.0
    h = opt.jit()
    watched = weakref.ref(params[0])
    del opt, params
    for _ in range(3):
        gc.collect()
    assert watched() is not None
    steps(h, 2)
    assert np.all(watched() < 1.0)
    del h
    gc.collect()
    assert watched() is None


def test_a_handle_made_before_load_state_dict_or_add_param_group_refuses():
    opt = numadam.Adam([np.zeros(3)])
    h = opt.jit()
    steps(h, 1)
    opt.load_state_dict(opt.state_dict())
    with pytest.raises(RuntimeError, match=r"^numadam: this handle was made before "
                                           r"opt.load_state_dict"):
        steps(h, 1)
    h = opt.jit()
    steps(h, 1)
    opt.add_param_group(dict(params=[np.zeros(2)]))
    with pytest.raises(RuntimeError, match=r"made before opt.add_param_group"):
        steps(h, 1)
    h = opt.jit()
    steps(h, 1)
    assert opt.state_dict()["state"][0]["step"] == 3
    assert opt.state_dict()["state"][1]["step"] == 1


def test_two_compiled_loops_and_a_python_loop_on_threads_take_turns():
    # A constant gradient: every step is the same map, so any interleaving of
    # whole steps gives the bits of the same number of steps in a row.
    n = 300
    (a, _), (b, _) = twins("amsgrad", "float32")[0]
    for g, h in zip(a.grads, b.grads):
        g[...] = h[...] = 0.25
    for _ in range(3 * n):
        a.step()
    h = b.jit()
    steps_nogil(h, 1)               # compiled before the threads start
    start = threading.Barrier(3)

    def compiled():
        start.wait()
        steps_nogil(h, n - 1 if threading.current_thread().name == "first" else n)

    def python():
        start.wait()
        for _ in range(n):
            b.step()

    threads = [threading.Thread(target=compiled, name="first"),
               threading.Thread(target=compiled), threading.Thread(target=python)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_same(a, b, "threads")


def test_check_finite_raise_names_the_parameter_and_changes_nothing():
    params = [np.ones(3), np.ones(4)]
    opt = numadam.Adam(params, check_finite="raise")
    h = opt.jit()
    opt.grads[1][2] = np.nan
    before = [p.copy() for p in params]
    with pytest.raises(FloatingPointError, match="^the gradient of parameter 1 holds NaN"):
        steps(h, 1)
    assert all(np.array_equal(p, q) for p, q in zip(params, before))
    assert opt.state_dict()["state"] == {}
    opt.grads[1][2] = 0.0
    steps(h, 1)                     # the busy word was given back
    assert opt.state_dict()["state"][1]["step"] == 1


def test_check_finite_skip_counts_compiled_skips_with_pythons():
    made = [numadam.Adagrad([np.ones(3), np.ones(2, np.float32)], lr=0.1, check_finite="skip")
            for _ in range(2)]
    a, b = made
    h = b.jit()
    for t, bad in enumerate([False, True, False, True, True, False]):
        for opt in made:
            opt.grads[0][...] = 0.5
            opt.grads[1][...] = np.inf if bad else -0.25
        a.step()
        if t % 2:
            b.step()
        else:
            steps(h, 1)
        assert a.skipped_steps == b.skipped_steps == sum(
            [False, True, False, True, True, False][:t + 1])
    assert_same(a, b, "skip")
    b.skipped_steps = 0             # a reset from Python counts from there
    b.grads[1][...] = np.nan
    steps(h, 1)
    assert b.skipped_steps == 1
    assert pickle.loads(pickle.dumps(b)).skipped_steps == 1


def test_what_jit_refuses():
    h = numadam.Adam([np.zeros(2)]).jit()
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        pickle.dumps(h)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        copy.copy(h)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        copy.deepcopy(h)


def test_an_optimizer_with_a_handle_still_copies_and_pickles_by_value():
    (a, _), (b, _) = twins("adam_l2", "float64")[0]
    rng = np.random.default_rng(4)
    h = b.jit()
    fill([a, b], rng, "float64")
    a.step()
    steps(h, 1)
    c = pickle.loads(pickle.dumps(b))
    d = copy.deepcopy(b)
    fill([a, c, d], rng, "float64")
    for opt in (a, c, d):
        opt.step()
    assert_same(a, c, "pickled")
    assert_same(a, d, "deep copy")


@njit
def get_flag(h, group):
    return h.get_hyper(group, "maximize")


def test_reading_a_group_that_does_not_exist_names_it():
    h = numadam.RMSprop([np.zeros(3)], maximize=True).jit()
    assert get_flag(h, 0) is True
    with pytest.raises(IndexError, match=r"^numadam: h.get_lr: group -1 does not exist; "
                                         r"the optimizer has 1 groups"):
        get_lr(h, -1)
    with pytest.raises(IndexError, match=r"^numadam: h.get_hyper: group 2 does not exist"):
        get_flag(h, 2)


def test_a_compiled_step_inside_the_closure_of_a_python_step_raises_instead_of_hanging():
    opt = numadam.SGD([np.ones(3)], lr=0.1)
    opt.grads[0][...] = 1.0
    h = opt.jit()
    for loop in (steps, steps_nogil):
        with pytest.raises(RuntimeError, match=r"^numadam: h.step\(\) was called inside a "
                                               r"step .* of the same optimizer on this thread"):
            opt.step(closure=lambda: loop(h, 1))
    steps(h, 1)                     # the busy word was given back by the Python step
    assert np.all(opt.param_groups[0]["params"][0] < 1.0)


def test_a_compiled_loop_without_the_gil_waits_for_a_slow_python_step():
    (a, _), (b, _) = twins("adam_l2", "float64")[0]
    for opt in (a, b):
        for g in opt.grads:
            g[...] = 0.5
    ha, hb = a.jit(), b.jit()
    steps_nogil(ha, 1)              # compiled before the thread starts
    steps_nogil(hb, 1)
    n = 1_000_000
    seen = []

    def slow_closure():
        seen.append(b.state_dict()["state"][0]["step"])
        time.sleep(1.5)             # longer than 2**25 tries of the compiled step

    thread = threading.Thread(target=steps_nogil, args=(hb, n))
    thread.start()
    time.sleep(0.2)
    b.step(closure=slow_closure)
    thread.join()
    assert 1 < seen[0] < n + 1      # the compiled loop was running, and waited
    steps_nogil(ha, n + 1)
    assert_same(a, b, "waited")


def test_jit_refuses_device_parameters():
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
    code = ("import numpy as np, numadam\n"
            "from numba import cuda\n"
            "opt = numadam.Adam([cuda.to_device(np.zeros(4))])\n"
            "try:\n"
            "    opt.jit()\n"
            "except TypeError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "opt.jit() steps NumPy parameters on the host" in done.stdout


def test_a_negative_zero_set_inside_njit_reaches_the_group():
    (a, _), (b, _) = twins("adamw", "float32")[0]
    rng = np.random.default_rng(6)
    h = b.jit()
    set_lr(h, 0, -0.0)
    a.param_groups[0]["lr"] = -0.0
    assert str(b.param_groups[0]["lr"]) == "-0.0"
    for t in range(2):
        fill([a, b], rng, "float32")
        a.step()
        if t:
            b.step()
        else:
            steps(h, 1)
    assert_same(a, b, "lr -0.0")
