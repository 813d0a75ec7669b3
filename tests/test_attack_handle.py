"""Attacks on opt.jit(): handles where Numba would freeze them, cached
compiled functions across numadam versions, random programs of compiled and
Python steps against a Python twin, threads, schedules driving the handle."""

import copy
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit, objmode

import numadam
import optim_configs as oc


def small(dtype=np.float32, n=8):
    p = np.linspace(-1.0, 1.0, n).astype(dtype)
    opt = numadam.Adam([p], lr=1e-2)
    opt.grads[0][:] = 0.5
    return opt, p


def first_line(error):
    return str(error.value).splitlines()[0]


# ------------------------------------------- a handle frozen into @njit code

def test_handle_as_global_constant_is_refused_by_numadam():
    opt, p = small()
    before = p.copy()
    global FROZEN
    FROZEN = opt.jit()

    @njit
    def uses_global():
        FROZEN.step()

    with pytest.raises(TypeError) as error:
        uses_global()
    assert first_line(error).startswith("numadam: a handle cannot be a global")
    assert np.array_equal(p, before)


def test_handle_as_closure_constant_is_refused_by_numadam():
    opt, p = small()
    h = opt.jit()

    @njit
    def uses_closure():
        h.step()

    with pytest.raises(TypeError) as error:
        uses_closure()
    assert first_line(error).startswith("numadam: a handle cannot be a global")
    # the same handle as an argument still works
    @njit
    def step(h):
        h.step()

    step(h)
    assert opt.state_dict()["state"][0]["step"] == 1


# --------------------------- @njit(cache=True) over a changed numadam install

USER_MODULE = '''
import sys
import numpy as np
from numba import njit
import numadam

@njit(cache=True)
def fit(h, n):
    for _ in range(n):
        h.step()

p = np.linspace(-1.0, 1.0, 8).astype(np.float32)
q = p.copy()
a, b = numadam.Adam([p], lr=1e-2), numadam.Adam([q], lr=1e-2)
a.grads[0][:] = 0.5
b.grads[0][:] = 0.5
fit(a.jit(), 3)
for _ in range(3):
    b.step()
assert np.array_equal(p.view(np.uint32), q.view(np.uint32))
print(len(fit.stats.cache_hits), len(fit.stats.cache_misses))
'''


def test_cached_function_recompiles_for_an_edited_numadam(tmp_path):
    """A user's cache=True function has numadam's compiled step inside it;
    Numba keys it by the user's source and the argument types only. An
    upgrade or edit of numadam (here a module of numadam.cpu whose size
    changes) must make it compile afresh, not run the old step on what may
    be a new table layout."""
    package = tmp_path / "site" / "numadam"
    here = os.path.dirname(os.path.dirname(os.path.abspath(numadam.__file__)))
    shutil.copytree(os.path.join(here, "numadam"), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "userfit.py").write_text(USER_MODULE)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{user}")

    def run():
        out = subprocess.run([sys.executable, "-c", "import userfit"], env=env, cwd=user,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["0", "1"]          # compiled and saved
    assert run() == ["1", "0"]          # loaded: the cache works here
    edited = package / "cpu" / "bucket.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    assert run() == ["0", "1"]          # numadam changed: compiled afresh


# ------------------------------------------------ schedules driving a handle

@njit
def fit_scheduled(h, lrs, beta1s, last_lrs, last_beta1s):
    """Step ``h`` with row ``i`` of the tables before step ``i``; then leave
    the groups at the schedule's current values, as a Python loop of
    ``opt.step(); sched.step()`` leaves them. ``beta1s`` with no rows: the
    betas are left alone."""
    for i in range(lrs.shape[0]):
        for g in range(lrs.shape[1]):
            h.set_lr(g, lrs[i, g])
            if beta1s.shape[0]:
                h.set_hyper(g, "beta1", beta1s[i, g])
        h.step()
    for g in range(last_lrs.shape[0]):
        h.set_lr(g, last_lrs[g])
        if last_beta1s.shape[0]:
            h.set_hyper(g, "beta1", last_beta1s[g])


def scheduled_adam(dtype):
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(16).astype(dtype), rng.standard_normal(12).astype(dtype),
              rng.standard_normal(8).astype(np.float64)]
    opt = numadam.Adam([dict(params=params[:2]), dict(params=params[2:], lr=3e-3,
                                                      weight_decay=0.01)],
                       lr=1e-2, betas=(0.85, 0.995))
    for g in opt.grads:
        g[...] = rng.standard_normal(g.shape)
    return opt, params


SCHEDULES = {
    "cosine": lambda opt: numadam.schedules.CosineAnnealingLR(opt, T_max=7, eta_min=1e-4),
    "onecycle": lambda opt: numadam.schedules.OneCycleLR(opt, max_lr=[0.05, 0.02],
                                                          total_steps=30),
    "warmup_cosine": lambda opt: numadam.schedules.WarmupCosineLR(
        opt, warmup_steps=4, total_steps=25, min_lr_ratio=0.1),
}


def betas_table(opt, sched, n):
    """``sched.lr_table(n)`` plus the beta1 of each group at each step (what
    OneCycleLR's cycle_momentum sets), stepping the schedule as it does."""
    lrs, beta1s = np.empty((n, len(opt.param_groups))), np.empty((n, len(opt.param_groups)))
    for i in range(n):
        lrs[i] = [group["lr"] for group in opt.param_groups]
        beta1s[i] = [group["betas"][0] for group in opt.param_groups]
        sched.step()
    return lrs, beta1s


def drive(h, opt, sched, n, with_beta1):
    if with_beta1:
        lrs, beta1s = betas_table(opt, sched, n)
        last_beta1s = np.array([group["betas"][0] for group in opt.param_groups])
    else:
        lrs, beta1s, last_beta1s = sched.lr_table(n), np.empty((0, 0)), np.empty(0)
    fit_scheduled(h, lrs, beta1s, np.array(sched.get_last_lr()), last_beta1s)


def assert_same_run(a, pa, sa, b, pb, sb):
    for x, y in zip(pa, pb):
        assert x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8))
    assert [dict(g, params=None) for g in a.param_groups] == \
        [dict(g, params=None) for g in b.param_groups]
    sda, sdb = a.state_dict(), b.state_dict()
    for i, entry in sdb["state"].items():
        for key, value in entry.items():
            assert np.array_equal(np.asarray(sda["state"][i][key]), np.asarray(value)), key
    assert sa.state_dict() == sb.state_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_drives_handle_bit_for_bit_with_resume(name, dtype, tmp_path):
    """Rows of a schedule's table set inside @njit before each h.step(),
    in chunks, with a checkpoint saved and loaded into fresh objects in
    between, equal a Python loop of opt.step(); sched.step(): parameters,
    state, groups and schedule state. OneCycleLR cycles beta1 as well,
    which lr_table does not carry: that run drives beta1 from a table too."""
    with_beta1 = name == "onecycle"
    b, pb = scheduled_adam(dtype)
    sb = SCHEDULES[name](b)
    for _ in range(15):
        b.step()
        sb.step()

    a, pa = scheduled_adam(dtype)
    sa = SCHEDULES[name](a)
    drive(a.jit(), a, sa, 5, with_beta1)
    a.step()                                # a Python step in between
    sa.step()
    path = str(tmp_path / "run.npz")
    a.save(path, schedule=sa)
    c, pc = scheduled_adam(dtype)
    sc = SCHEDULES[name](c)
    c.load(path, schedule=sc)
    for x, y in zip(pc, pa):
        x[...] = y                          # the parameters travel with the model
    h = c.jit()
    drive(h, c, sc, 4, with_beta1)
    drive(h, c, sc, 5, with_beta1)
    assert_same_run(c, pc, sc, b, pb, sb)


def test_onecycle_lr_table_alone_keeps_the_betas_of_the_call():
    """The honest behaviour of lr_table with OneCycleLR's cycle_momentum:
    the compiled steps use the betas the groups had when the handle was
    passed in (those lr_table left), not the cycled ones, so the bits differ
    from the Python loop; drive beta1 as well (above) for those."""
    a, pa = scheduled_adam(np.float64)
    sa = SCHEDULES["onecycle"](a)
    b, pb = scheduled_adam(np.float64)
    sb = SCHEDULES["onecycle"](b)
    drive(a.jit(), a, sa, 6, with_beta1=False)
    for _ in range(6):
        b.step()
        sb.step()
    assert sa.state_dict() == sb.state_dict()
    assert not all(np.array_equal(x, y) for x, y in zip(pa, pb))


def test_lr_set_last_inside_njit_wins_over_the_schedule():
    """Without the closing set_lr, the groups keep the last rate set inside
    @njit (table row n-1), not the rate the schedule moved on to: a value
    set inside @njit wins. The example and README close with it."""
    a, _ = scheduled_adam(np.float64)
    sa = SCHEDULES["cosine"](a)
    table = sa.lr_table(3)
    fit_scheduled(a.jit(), table, np.empty((0, 0)), np.empty(0), np.empty(0))
    assert [group["lr"] for group in a.param_groups] == list(table[-1])
    assert list(table[-1]) != list(sa.get_last_lr())


# -------------------------------- random programs against a Python twin


PROGRAM_CONFIGS = ["adam", "amsgrad_adamw_maximize", "groups_schedule",
                   "adamw_groups_missing_grads", "sgd_nesterov_weight_decay",
                   "sgd_groups_schedule_missing_grads",
                   "adagrad_groups_schedule_missing_grads",
                   "rmsprop_groups_schedule_missing_grads", "rmsprop_centered_momentum_wd"]

# A real hyperparameter per rule that any group may take anywhere in the
# range (no state layout or cross-field check depends on it), with the
# Python edit that sets the same value.
SECOND = {"Adam": ("beta1", 0.5, 0.99), "AdamW": ("beta1", 0.5, 0.99),
          "SGD": ("weight_decay", 0.0, 0.1), "Adagrad": ("lr_decay", 0.0, 0.05),
          "RMSprop": ("alpha", 0.8, 0.99)}


@njit
def program_steps(h, k):
    for _ in range(k):
        h.step()


@njit
def program_set_lr(h, group, value):
    h.set_lr(group, value)


@njit
def set_beta1(h, group, value):
    h.set_hyper(group, "beta1", value)


@njit
def set_weight_decay(h, group, value):
    h.set_hyper(group, "weight_decay", value)


@njit
def set_lr_decay(h, group, value):
    h.set_hyper(group, "lr_decay", value)


@njit
def set_alpha(h, group, value):
    h.set_hyper(group, "alpha", value)


SETTERS = {"beta1": set_beta1, "weight_decay": set_weight_decay, "lr_decay": set_lr_decay,
           "alpha": set_alpha}


def python_set(opt, group, name, value):
    entry = opt.param_groups[group]
    if name == "beta1":
        entry["betas"] = (value, entry["betas"][1])
    else:
        entry[name] = value


def program_optimizer(name, dtype, mixed, check_finite, params=None):
    config = oc.CONFIGS[name]
    if params is None:
        params = oc.initial_params(oc.index(name), dtype)
        if mixed:       # the last group's parameters in the other float dtype
            other = np.float64 if dtype == np.float32 else np.float32
            for k in oc.layout(config)[-1][0]:
                params[k] = params[k].astype(other)
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(config)]
    opt = getattr(numadam, config["cls"])(groups, check_finite=check_finite,
                                          **config["kwargs"])
    for k, g in enumerate(opt.grads):
        g[...] = np.linspace(-1.0, 1.0 + k, g.size).reshape(g.shape)
    return opt, params


def assert_twins(a, b, what):
    pa = [x for g in a.param_groups for x in g["params"]]
    pb = [x for g in b.param_groups for x in g["params"]]
    for k, (x, y) in enumerate(zip(pa, pb)):
        assert x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8)), \
            (what, k)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"], what
    assert sa["state"].keys() == sb["state"].keys(), what
    for index, entry in sa["state"].items():
        assert entry.keys() == sb["state"][index].keys(), what
        for key, value in entry.items():
            other = sb["state"][index][key]
            if isinstance(value, np.ndarray):
                assert np.array_equal(value.view(np.uint8), other.view(np.uint8)), \
                    (what, index, key)
            else:
                assert value == other, (what, index, key)
    assert a.skipped_steps == b.skipped_steps, what


OPERATION = st.one_of(
    st.tuples(st.just("python_step")),
    st.tuples(st.just("compiled_steps"), st.integers(0, 3)),
    st.tuples(st.just("set_lr"), st.integers(0, 1), st.floats(1e-4, 0.05)),
    st.tuples(st.just("set_second"), st.integers(0, 1), st.floats(0.0, 1.0)),
    st.tuples(st.just("python_lr"), st.integers(0, 1), st.floats(1e-4, 0.05)),
    st.tuples(st.just("new_gradients"), st.integers(0, 2**31)),
    st.tuples(st.just("poison"), st.integers(0, 2)),
    st.tuples(st.just("zero_grad")),
    st.tuples(st.just("reload")),
    st.tuples(st.just("new_handle")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(PROGRAM_CONFIGS), dtype=st.sampled_from([np.float32, np.float64]),
       mixed=st.booleans(), check_finite=st.sampled_from([None, "skip"]),
       program=st.lists(OPERATION, min_size=1, max_size=14))
def test_random_programs_match_a_python_twin(name, dtype, mixed, check_finite, program):
    """Compiled steps, hyperparameters set inside @njit and from Python,
    new and non-finite gradients, zero_grad, and a state-dict round trip
    into a fresh optimizer with a new handle, against a twin that only ever
    steps from Python: the same bits, groups and skipped steps after every
    operation. Several handles of one optimizer are used in turn."""
    a, params = program_optimizer(name, dtype, mixed, check_finite)
    b, _ = program_optimizer(name, dtype, mixed, check_finite)
    handles = [a.jit()]
    second, low, high = SECOND[oc.CONFIGS[name]["cls"]]
    ngroups = len(a.param_groups)
    for number, op in enumerate(program):
        what = f"operation {number}: {op}"
        kind = op[0]
        h = handles[number % len(handles)]
        if kind == "python_step":
            a.step()
            b.step()
        elif kind == "compiled_steps":
            program_steps(h, op[1])
            for _ in range(op[1]):
                b.step()
        elif kind == "set_lr":
            program_set_lr(h, op[1] % ngroups, op[2])
            b.param_groups[op[1] % ngroups]["lr"] = op[2]
        elif kind == "set_second":
            value = low + (high - low) * op[2]
            SETTERS[second](h, op[1] % ngroups, value)
            python_set(b, op[1] % ngroups, second, value)
        elif kind == "python_lr":
            a.param_groups[op[1] % ngroups]["lr"] = op[2]
            b.param_groups[op[1] % ngroups]["lr"] = op[2]
        elif kind == "new_gradients":
            rng = np.random.default_rng(op[1])
            for ga, gb in zip(a.grads, b.grads):
                ga[...] = gb[...] = rng.standard_normal(ga.shape) * 10.0 ** rng.uniform(-3, 1)
        elif kind == "poison":
            if check_finite is None:
                continue
            k = op[1] % len(a.grads)
            a.grads[k].flat[0] = b.grads[k].flat[0] = np.nan
            program_steps(h, 1)
            b.step()
            a.grads[k].flat[0] = b.grads[k].flat[0] = 1.0
        elif kind == "zero_grad":
            a.zero_grad()
            b.zero_grad()
        elif kind == "reload":
            fresh, _ = program_optimizer(name, dtype, mixed, check_finite, params=params)
            fresh.load_state_dict(a.state_dict())
            fresh.skipped_steps = a.skipped_steps
            for gf, ga in zip(fresh.grads, a.grads):
                gf[...] = ga
            a, handles = fresh, [fresh.jit()]
        elif kind == "new_handle":
            handles.append(a.jit())
        assert_twins(a, b, what)


# ------------------------------------------------------------------ threads


@njit
def steps_with_progress(h, n, pause):
    """A plain (GIL-holding) @njit loop that reports from an objmode block
    between steps, where another Python thread can take the optimizer."""
    for _ in range(n):
        with objmode():
            time.sleep(pause)
        h.step()


@njit(nogil=True)
def steps_nogil(h, n):
    for _ in range(n):
        h.step()


def threaded_adam():
    p = np.linspace(-1.0, 1.0, 4096).astype(np.float32)
    opt = numadam.Adam([p], lr=1e-3, betas=(0.8, 0.99))
    opt.grads[0][...] = np.linspace(-2.0, 1.0, 4096).astype(np.float32)
    return opt, p


def reference_run(n):
    """Parameters and exp_avg after each step count up to ``n`` (the
    gradient is constant, so the state is a function of the count)."""
    opt, p = threaded_adam()
    out = {0: (p.copy(), None)}
    for k in range(1, n + 1):
        opt.step()
        out[k] = (p.copy(), opt.state[0]["exp_avg"].copy())
    return out


def checkpoint_thread(opt, reference, stop, seen):
    """state_dict() in a loop: each snapshot must be the state of a whole
    number of steps."""
    while not stop.is_set():
        entry = opt.state_dict()["state"].get(0)
        if entry is not None:
            seen.append(entry["step"])
            assert np.array_equal(entry["exp_avg"], reference[entry["step"]][1])


def test_gil_holding_loop_waits_for_a_checkpoint_thread_instead_of_raising():
    """A plain @njit loop whose objmode block lets a checkpoint thread take
    the optimizer: the compiled step finds it busy while holding the GIL
    the Python holder needs. It must wait (letting the GIL go), not raise."""
    n = 40
    reference = reference_run(n)
    opt, p = threaded_adam()
    h = opt.jit()
    steps_with_progress(h, 0, 0.0)          # compiled before the thread starts
    stop, seen, errors = threading.Event(), [], []

    def run():
        try:
            checkpoint_thread(opt, reference, stop, seen)
        except BaseException as error:      # noqa: BLE001 (reported below)
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        steps_with_progress(h, n, 0.001)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(seen) > n                    # the thread ran between the steps
    assert opt.state_dict()["state"][0]["step"] == n
    assert np.array_equal(p, reference[n][0])


def test_two_nogil_loops_a_python_stepper_and_a_checkpoint_thread():
    """Two threads in nogil compiled loops on one handle, a third stepping
    from Python and a fourth taking state_dict(): every step lands once,
    no snapshot is torn, and the result is that of as many Python steps."""
    loops, python_steps = 400, 300
    n = 2 * loops + python_steps
    reference = reference_run(n)
    opt, p = threaded_adam()
    h = opt.jit()
    steps_nogil(h, 0)
    stop, seen, errors = threading.Event(), [], []

    def guarded(target, *args):
        def run():
            try:
                target(*args)
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)
        return threading.Thread(target=run)

    def python_stepper():
        for _ in range(python_steps):
            opt.step()

    checker = guarded(checkpoint_thread, opt, reference, stop, seen)
    workers = [guarded(steps_nogil, h, loops), guarded(steps_nogil, h, loops),
               guarded(python_stepper)]
    checker.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    checker.join()
    assert not errors, errors
    assert opt.state_dict()["state"][0]["step"] == n
    assert np.array_equal(p, reference[n][0])


# ------------------------------------------------------- copies, two handles


@njit
def step_both(ha, hb, n):
    for _ in range(n):
        ha.step()
        hb.step()
        hb.step()


def test_a_deep_copy_taken_during_a_compiled_loop_is_whole_and_independent():
    """deepcopy of an optimizer while a nogil loop steps it holds a whole
    number of steps; the copy has a busy word of its own: its handle steps
    inside the closure of the original's step (a shared word would refuse
    that as a re-entered step)."""
    n = 300
    reference = reference_run(n + 2)      # a copy may come after the loop: 2 more
    opt, _ = threaded_adam()
    h = opt.jit()
    steps_nogil(h, 0)
    thread = threading.Thread(target=steps_nogil, args=(h, n))
    thread.start()
    copies = [copy.deepcopy(opt) for _ in range(5)]
    thread.join()
    for c in copies:
        count = c.state_dict()["state"].get(0, {"step": 0})["step"]
        p = c.param_groups[0]["params"][0]
        assert np.array_equal(p, reference[count][0])
    c = copies[-1]
    count = c.state_dict()["state"].get(0, {"step": 0})["step"]
    hc = c.jit()
    opt.step(closure=lambda: steps_nogil(hc, 2))
    assert c.state_dict()["state"][0]["step"] == count + 2
    assert opt.state_dict()["state"][0]["step"] == n + 1
    assert np.array_equal(c.param_groups[0]["params"][0], reference[count + 2][0])


def test_two_optimizers_stepped_in_one_compiled_function():
    """Handles of two optimizers of different rules and dtypes in one call,
    passed in either order, each step only its own optimizer."""
    a, pa = small(np.float32)
    b = numadam.SGD([np.linspace(0.0, 1.0, 5)], lr=0.1, momentum=0.9)
    b.grads[0][...] = 1.0
    ta, tpa = small(np.float32)
    tb = numadam.SGD([np.linspace(0.0, 1.0, 5)], lr=0.1, momentum=0.9)
    tb.grads[0][...] = 1.0
    step_both(a.jit(), b.jit(), 3)
    for _ in range(3):
        ta.step()
        tb.step()
        tb.step()
    assert np.array_equal(pa, tpa)
    assert np.array_equal(b.param_groups[0]["params"][0], tb.param_groups[0]["params"][0])
    step_both(b.jit(), a.jit(), 1)          # swapped: b once, a twice
    ta.step()
    ta.step()
    tb.step()
    assert np.array_equal(pa, tpa)
    assert np.array_equal(b.param_groups[0]["params"][0], tb.param_groups[0]["params"][0])


def test_a_read_only_parameter_is_refused_as_by_step():
    """opt.step() refuses a parameter made read-only; the compiled step
    writes through its address regardless, so the call must refuse it."""
    opt, p = small()
    h = opt.jit()
    p.flags.writeable = False
    before = p.copy()
    with pytest.raises(ValueError) as error:
        opt.step()
    python_message = first_line(error)

    @njit
    def step(h):
        h.step()

    with pytest.raises(ValueError) as error:
        step(h)
    assert first_line(error) == python_message == ("parameter 0 has become read-only; "
                                                   "parameters are updated in place")
    assert np.array_equal(p, before)
    p.flags.writeable = True
    step(h)
    assert opt.state_dict()["state"][0]["step"] == 1


def test_check_finite_changed_after_jit_is_refused():
    """check_finite is compiled into the handle's step; after a change from
    Python an old handle would let a NaN through where opt.step() skips."""
    opt, p = small()
    h = opt.jit()
    opt.check_finite = "skip"
    opt.grads[0][0] = np.nan
    before = p.copy()

    @njit
    def step(h):
        h.step()

    with pytest.raises(RuntimeError) as error:
        step(h)
    assert first_line(error) == ("numadam: opt.check_finite is 'skip', but this handle was "
                                 "made with None; call opt.jit() again")
    assert np.array_equal(p, before)
    step(opt.jit())
    assert np.array_equal(p, before) and opt.skipped_steps == 1


def test_steps_from_prange_threads_take_turns():
    """h.step() in the body of a prange loop: the busy word serialises the
    steps of Numba's worker threads, so n of them are n whole steps."""
    from numba import prange

    @njit(parallel=True)
    def parallel_steps(h, n):
        for _ in prange(n):
            h.step()

    n = 64
    reference = reference_run(n)
    opt, p = threaded_adam()
    parallel_steps(opt.jit(), n)
    assert opt.state_dict()["state"][0]["step"] == n
    assert np.array_equal(p, reference[n][0])
    assert np.array_equal(opt.state[0]["exp_avg"], reference[n][1])
