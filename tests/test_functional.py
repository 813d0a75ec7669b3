"""numadam.functional: every rule's update, bit-identical to the classes, from
Python and from inside @njit, and every bad input refused before any write."""

import inspect
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

import numadam
import optim_configs as oc
from helpers import assert_bits_equal, build, golden, step_grads
from numadam.functional import adagrad_update, adam_update, rmsprop_update, sgd_update
from internals import CLASSES, rule as rule_of


# rule -> (function, its state arrays, the function's hyperparameters from a
# parameter group of the rule's class)
RULES = {
    "adam": (adam_update, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             lambda h: (h["lr"], *h["betas"], h["eps"], h["weight_decay"], h["amsgrad"],
                        h["maximize"], h["decoupled_weight_decay"])),
    "sgd": (sgd_update, ("momentum_buffer",),
            lambda h: (h["lr"], h["momentum"], h["dampening"], h["weight_decay"],
                       h["nesterov"], h["maximize"])),
    "adagrad": (adagrad_update, ("sum",),
                lambda h: (h["lr"], h["lr_decay"], h["weight_decay"], h["eps"],
                           h["maximize"])),
    "rmsprop": (rmsprop_update, ("square_avg", "momentum_buffer", "grad_avg"),
                lambda h: (h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["momentum"],
                           h["centered"], h["maximize"])),
}


def fresh_state(rule, group, param):
    """The state arrays of ``rule`` for ``param`` under ``group``, in the
    function's order: used ones at their initial value, unused ones empty. A
    momentum buffer starts as NaN: its first step must not read it."""
    values, args = rule_of(rule).validate(group)
    initial = dict(zip(args.rows, rule_of(rule).initial(values)))
    fill = dict(momentum_buffer=np.nan) if rule == "sgd" else {}
    return [np.full_like(param, fill.get(name, initial[name])) if name in initial
            else np.empty(0, param.dtype) for name in RULES[rule][1]]


@njit(cache=True)
def _adam_loop(param, grads, has, lrs, s, h):
    step = 0
    for t in range(grads.shape[0]):
        if has[t]:
            step += 1
            adam_update(param, grads[t], s[0], s[1], s[2], step, lrs[t], h[1], h[2], h[3],
                        h[4], h[5], h[6], h[7])


@njit(cache=True)
def _sgd_loop(param, grads, has, lrs, s, h):
    step = 0
    for t in range(grads.shape[0]):
        if has[t]:
            step += 1
            sgd_update(param, grads[t], s[0], step, lrs[t], h[1], h[2], h[3], h[4], h[5])


@njit(cache=True)
def _adagrad_loop(param, grads, has, lrs, s, h):
    step = 0
    for t in range(grads.shape[0]):
        if has[t]:
            step += 1
            adagrad_update(param, grads[t], s[0], step, lrs[t], h[1], h[2], h[3], h[4])


@njit(cache=True)
def _rmsprop_loop(param, grads, has, lrs, s, h):
    step = 0
    for t in range(grads.shape[0]):
        if has[t]:
            step += 1
            rmsprop_update(param, grads[t], s[0], s[1], s[2], step, lrs[t], h[1], h[2], h[3],
                           h[4], h[5], h[6])


LOOPS = dict(adam=_adam_loop, sgd=_sgd_loop, adagrad=_adagrad_loop, rmsprop=_rmsprop_loop)


def replay(rule, caller, param, grads, has, lrs, group):
    """Steps of one array through the function: ``grads[t]`` where ``has[t]``,
    at learning rate ``lrs[t]`` and the other hyperparameters of ``group``.
    Returns the state arrays."""
    function, _, hyper = RULES[rule]
    state = fresh_state(rule, group, param)
    h = hyper(group)
    if caller == "njit":
        LOOPS[rule](param, grads, has, lrs, tuple(state), h)
        return state
    step = 0
    for t in range(len(grads)):
        if has[t]:
            step += 1
            function(param, grads[t], *state, step, lrs[t], *h[1:])
    return state


def rule_name(config):
    return CLASSES[oc.CONFIGS[config]["cls"]]


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", [n for n in oc.CONFIGS])
def test_every_golden_config_replayed_array_by_array_gives_torchs_bits(name, dtype, caller):
    """Each parameter of the config on its own, with its group's
    hyperparameters, the lr schedule and the withheld gradients: the final
    parameters and state are torch's (the golden vectors) and the class's."""
    config, rule = oc.CONFIGS[name], rule_name(name)
    expected = golden(name, dtype)
    opt, _ = build(name, dtype)
    grads = [step_grads(name, dtype, t) for t in range(1, oc.STEPS + 1)]
    schedule = config.get("schedule", {})
    order = oc.param_order(config)
    position = 0
    for g, (shapes, _) in enumerate(oc.layout(config)):
        group = {k: v for k, v in opt.param_groups[g].items() if k != "params"}
        lr, lrs = group["lr"], []
        for t in range(1, oc.STEPS + 1):
            lr = schedule[t][g] if t in schedule else lr
            lrs.append(lr)
        lrs = np.array(lrs)
        for k in shapes:
            i = order.index(k)
            has = np.array([grads[t][i] is not None for t in range(oc.STEPS)])
            series = np.stack([grads[t][i] if has[t] else np.zeros(oc.SHAPES[k], dtype)
                               for t in range(oc.STEPS)])
            param = expected[f"initial_{k}"].copy()
            state = replay(rule, caller, param, series, has, lrs, group)
            assert_bits_equal(param, expected[f"final_{k}"], f"{name} param {k}")
            for what, array in zip(RULES[rule][1], state):
                key = f"final_state_{position}_{what}"
                if key in expected:
                    assert_bits_equal(array, expected[key], f"{name} {what} of param {k}")
                else:
                    assert array.size == 0, f"{name}: torch keeps no {what}"
            position += 1


CASE_FILES = [(f"cases_{family}" if rule == "adam" else f"cases_{rule}_{family}", dtype)
              for rule in RULES for family in ("random_hyper", "nonfinite")
              for dtype in oc.DTYPES]


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("name,dtype", CASE_FILES)
def test_torchs_random_hyperparameter_and_nonfinite_cases(name, dtype, caller):
    """torch's own cases: no round numbers (every host-side scalar must round
    as torch's), every flag, and NaN and Inf in the gradients. A NaN need only
    meet a NaN, as in tests/test_golden.py."""
    expected = golden(name, dtype)
    grads = expected["grads"]
    hypers = json.loads(str(expected["hyper"]))
    for c, hyper in enumerate(hypers):
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hyper.items()
                  if k != "cls"}
        opt = getattr(numadam, hyper["cls"])([np.zeros(1, dtype)], **kwargs)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        rule = CLASSES[hyper["cls"]]
        param = expected["initial"][c].copy()
        steps = grads.shape[1]
        with np.errstate(invalid="ignore"):
            state = replay(rule, caller, param, grads[c], np.ones(steps, bool),
                           np.full(steps, group["lr"]), group)
        what = f"{name} case {c} {hyper}"
        assert_bits_equal(param, expected["param"][c], f"{what}: param", nan_bits=False)
        used = rule_of(rule).validate(group)[1].rows
        for key, array in zip(RULES[rule][1], state):
            if key in used:
                assert_bits_equal(array, expected[key][c], f"{what}: {key}", nan_bits=False)
            else:
                assert array.size == 0


def random_group(rule, rng):
    """Hyperparameters of ``rule`` drawn at random, every flag included."""
    def some(low, high, zero=0.3):
        return 0.0 if rng.random() < zero else float(10 ** rng.uniform(low, high))
    flag = lambda: bool(rng.random() < 0.5)            # noqa: E731
    lr = float(10 ** rng.uniform(-4, -1))
    if rule == "adam":
        return dict(lr=lr, betas=(float(rng.uniform(0, 0.99)), float(rng.uniform(0.5, 0.9999))),
                    eps=some(-10, -4), weight_decay=some(-3, -0.5), amsgrad=flag(),
                    maximize=flag(), decoupled_weight_decay=flag())
    if rule == "sgd":
        momentum = some(-2, -0.01)
        nesterov = momentum > 0 and flag()
        dampening = 0.0 if nesterov else float(rng.choice([0.0, rng.uniform(-0.5, 1.0)]))
        return dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=some(-3, -0.5),
                    nesterov=nesterov, maximize=flag())
    if rule == "adagrad":
        return dict(lr=lr, lr_decay=some(-4, -1), weight_decay=some(-3, -0.5),
                    initial_accumulator_value=some(-2, 0), eps=some(-12, -6), maximize=flag())
    return dict(lr=lr, alpha=float(rng.uniform(0, 0.999)), eps=some(-10, -4),
                weight_decay=some(-3, -0.5), momentum=some(-2, -0.01), centered=flag(),
                maximize=flag())


CLASS = dict(adam="Adam", sgd="SGD", adagrad="Adagrad", rmsprop="RMSprop")


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_random_hyperparameters_match_the_class_bit_for_bit(rule, dtype, caller):
    rng = np.random.default_rng([7, list(RULES).index(rule), oc.DTYPES.index(dtype)])
    for trial in range(12):
        group = random_group(rule, rng)
        steps = 25
        # 35 elements: the vectorised loop body and its scalar tail
        param = rng.standard_normal(35).astype(dtype)
        grads = (rng.standard_normal((steps, 35)) * 10 ** rng.uniform(-3, 2, (steps, 1))
                 ).astype(dtype)
        if trial % 4 == 3:
            grads[steps // 2, ::7] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
        expected = param.copy()
        opt = getattr(numadam, CLASS[rule])([expected], **group)
        for g in grads:
            opt.step([g.copy()])
        full = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        state = replay(rule, caller, param, grads, np.ones(steps, bool),
                       np.full(steps, group["lr"]), full)
        # A NaN's sign is not part of the contract: the class's kernel and the
        # functional loop are separate compilations of one element function,
        # and LLVM may order a NaN-propagating addition's operands differently
        # in each (seen on Numba 0.60 after some compile histories).
        assert_bits_equal(param, expected, f"{rule} {group} param", nan_bits=False)
        kept = dict(opt.state_dict()["state"].get(0, {}))
        for what, array in zip(RULES[rule][1], state):
            if what in kept:
                assert_bits_equal(array, kept[what], f"{rule} {group} {what}",
                                  nan_bits=False)
            else:
                assert array.size == 0


# ----------------------------------------------------------------- bad input

def full_call(rule, dtype="float64"):
    """Valid arguments of ``rule``'s function with every state array in use."""
    function, names, hyper = RULES[rule]
    over = dict(adam=dict(amsgrad=True), sgd=dict(momentum=0.9),
                rmsprop=dict(momentum=0.5, centered=True)).get(rule, {})
    group = rule_of(rule).defaults(**over)
    param = np.linspace(-1, 1, 16).astype(dtype)
    state = [np.full_like(param, 0.25) for _ in names]
    return [param, np.full_like(param, 0.5), *state, 3, *hyper(group)]


@njit
def _adam_star(args):
    adam_update(*args)


@njit
def _sgd_star(args):
    sgd_update(*args)


@njit
def _adagrad_star(args):
    adagrad_update(*args)


@njit
def _rmsprop_star(args):
    rmsprop_update(*args)


STAR = dict(adam=_adam_star, sgd=_sgd_star, adagrad=_adagrad_star, rmsprop=_rmsprop_star)


def call(rule, caller, args):
    if caller == "python":
        RULES[rule][0](*args)
    else:
        STAR[rule](tuple(args))


def bad_cases(rule):
    """(label, index of the argument, its bad value or a function of the
    arguments, {caller: (error, words)})."""
    function, names, _ = RULES[rule]
    params = list(inspect.signature(function).parameters)
    spec = rule_of(rule)
    f = function.__name__
    cases = [("grad shape", 1, lambda a: np.zeros(5),
              dict(python=(ValueError, "grad has shape (5,)"),
                   njit=(ValueError, f"{f}: grad must have the shape of param"))),
             ("step 0", 2 + len(names), 0,
              dict(python=(ValueError, "step must be >= 1"),
                   njit=(ValueError, "step must be >= 1"))),
             ("step float", 2 + len(names), 1.0,
              dict(python=(TypeError, "step must be an integer"),
                   njit=(TypingError, "step must be an integer")))]
    for i, name in enumerate(names):
        at = 2 + i
        cases += [
            (f"{name} shape", at, lambda a: np.zeros(5),
             dict(python=(ValueError, f"{name} has shape (5,)"),
                  njit=(ValueError, "must have the shape of param"))),
            (f"{name} dtype", at, lambda a: a[0].astype(np.float32),
             dict(python=(ValueError, f"{name} has dtype float32"),
                  njit=(TypingError, f"{name} is array(float32"))),
            (f"{name} strided", at, lambda a: np.zeros(32)[::2],
             dict(python=(ValueError, f"{name} is not C-contiguous"),
                  njit=(TypingError, f"{name} is array(float64, 1d, A), not known to be "
                                     "C-contiguous"))),
            (f"{name} read-only", at, lambda a: _read_only(a[0].copy()),
             dict(python=(ValueError, f"{name} is read-only"),
                  njit=(TypingError, f"{name} is read-only"))),
            (f"{name} is param", at, lambda a: a[0],
             dict(python=(ValueError, "must not share memory with param or grad"),
                  njit=(ValueError, "must not share memory with param or grad"))),
            (f"{name} overlaps grad", at, lambda a: a[1],
             dict(python=(ValueError, "must not share memory with param or grad"),
                  njit=(ValueError, "must not share memory with param or grad")))]
        if i > 0:
            cases.append((f"{name} is {names[0]}", at, lambda a: a[2],
                          dict(python=(ValueError, "must not share memory"),
                               njit=(ValueError, "must not share memory"))))
    first = 3 + len(names)
    kinds = []
    for h in spec.hyper:
        kinds += {"betas": ["unit", "unit"], "init": [], "flag": ["flag"]}.get(h.kind, [h.kind])
    for name, kind in zip(params[first:], kinds):
        at = params.index(name)
        if kind == "flag":
            cases.append((f"{name} int", at, 1,
                          dict(python=(ValueError, f"{name} must be True or False"),
                               njit=(TypingError, f"{name} must be a bool"))))
            continue
        bad = dict(nonneg=-0.5, real=np.nan, unit=1.0)[kind]
        out_of_range = dict(python=(ValueError, f"{name} must be"),
                            njit=(ValueError, f"{f}: {name} must be"))
        cases += [(f"{name} {bad}", at, bad, out_of_range),
                  (f"{name} inf", at, np.inf, out_of_range),
                  (f"{name} str", at, "0.1",
                   dict(python=(ValueError, f"{name} must be a real number"),
                        njit=(TypingError, f"{name} must be a real number")))]
    if rule == "sgd":
        cases.append(("nesterov with dampening", params.index("dampening"), 0.1,
                      dict(python=(ValueError, "nesterov=True requires"),
                           njit=(ValueError, "nesterov=True requires"))))
    return cases


def _read_only(a):
    a.flags.writeable = False
    return a


ALL_BAD = [(rule, case) for rule in RULES for case in bad_cases(rule)]


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("rule,case", ALL_BAD, ids=[f"{r}-{c[0]}" for r, c in ALL_BAD])
def test_bad_input_raises_a_clear_error_before_any_write(rule, case, caller):
    label, at, bad, expect = case
    args = full_call(rule)
    if rule == "sgd" and label == "nesterov with dampening":
        args[params_of(rule).index("nesterov")] = True
    args[at] = bad(args) if callable(bad) else bad
    before = [np.array(a, copy=True) for a in args if isinstance(a, np.ndarray)]
    error, words = expect[caller]
    with pytest.raises(error) as info:
        call(rule, caller, args)
    assert words in str(info.value)
    for a, b in zip([a for a in args if isinstance(a, np.ndarray)], before):
        assert_bits_equal(np.ascontiguousarray(a), b, "untouched")


def params_of(rule):
    return list(inspect.signature(RULES[rule][0]).parameters)


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("rule", RULES)
def test_the_valid_call_of_the_bad_input_test_does_update(rule, caller):
    """The calls above fail for the one bad argument, not for another."""
    args = full_call(rule)
    param = args[0].copy()
    call(rule, caller, args)
    assert not np.array_equal(args[0], param)


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("rule,over,unused", [
    ("sgd", {}, ["momentum_buffer"]),
    ("rmsprop", {}, ["momentum_buffer", "grad_avg"]),
    ("rmsprop", dict(centered=True), ["momentum_buffer"]),
    ("rmsprop", dict(momentum=0.5), ["grad_avg"]),
    ("adam", {}, ["max_exp_avg_sq"]),
])
def test_unused_state_may_be_empty_or_anything_and_is_never_touched(rule, over, unused, caller):
    function, names, hyper = RULES[rule]
    group = rule_of(rule).defaults(**over)
    param = np.linspace(-1, 1, 16)
    grad = np.full(16, 0.5)
    results = []
    for stand_in in ("empty", "param", "other"):
        p = param.copy()
        state = fresh_state(rule, group, p)
        other = np.full(16, 7.0)
        for k, name in enumerate(names):
            if name in unused:
                state[k] = dict(empty=p[:0], param=p, other=other)[stand_in]
        call(rule, caller, [p, grad, *state, 1, *hyper(group)])
        call(rule, caller, [p, grad, *state, 2, *hyper(group)])
        assert_bits_equal(other, np.full(16, 7.0), "an unused state array")
        results.append(p)
    assert_bits_equal(results[1], results[0], "param")
    assert_bits_equal(results[2], results[0], "param")


@pytest.mark.parametrize("rule", RULES)
def test_a_used_state_array_that_is_empty_is_refused(rule):
    args = full_call(rule)
    names = RULES[rule][1]
    for k, name in enumerate(names):
        bad = list(args)
        bad[2 + k] = bad[0][:0]
        with pytest.raises(ValueError, match=f"{name} has shape"):
            call(rule, "python", bad)
        with pytest.raises(ValueError, match="must have the shape of param"):
            call(rule, "njit", bad)


@pytest.mark.parametrize("rule", RULES)
def test_a_read_only_param_is_refused_even_as_its_own_gradient(rule):
    args = full_call(rule)
    args[0].flags.writeable = False
    args[1] = args[0]
    with pytest.raises(ValueError, match="param is read-only"):
        call(rule, "python", args)
    with pytest.raises(TypingError, match="param is read-only"):
        call(rule, "njit", args)


@pytest.mark.parametrize("rule", RULES)
def test_param_and_grad_may_be_the_same_array(rule):
    args = full_call(rule)
    same = list(args)
    same[1] = same[0]
    copied = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    copied[1] = copied[0].copy()
    call(rule, "python", same)
    call(rule, "python", copied)
    assert_bits_equal(same[0], copied[0], "param")


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("rule", ["adam", "rmsprop"])
def test_state_rows_of_one_buffer_are_fine(rule, caller):
    args = full_call(rule)
    n = len(RULES[rule][1])
    buffer = np.stack(args[2:2 + n])
    rows = list(args)
    rows[2:2 + n] = list(buffer)
    call(rule, caller, rows)
    call(rule, caller, args)
    assert_bits_equal(rows[0], args[0], "param")
    assert_bits_equal(buffer, np.stack(args[2:2 + n]), "state")


@njit
def _sgd_float32_hyper(param, grad, buf, lr, momentum, dampening, weight_decay):
    sgd_update(param, grad, buf, 2, np.float32(lr), np.float32(momentum),
               np.float32(dampening), np.float32(weight_decay), False, False)


def test_njit_float32_and_int_hyperparameters_are_widened_exactly():
    # a float32 argument takes its exact float64 value, as it does from Python
    lr, momentum, dampening, weight_decay = 0.1, 0.9, 0.3, 0.07
    a = [np.linspace(-1, 1, 16).astype(np.float32), np.full(16, 0.5, np.float32),
         np.full(16, 0.25, np.float32)]
    b = [x.copy() for x in a]
    _sgd_float32_hyper(*a, lr, momentum, dampening, weight_decay)
    sgd_update(*b, 2, *(float(np.float32(v)) for v in (lr, momentum, dampening,
                                                       weight_decay)), False, False)
    assert_bits_equal(a[0], b[0], "param")
    assert_bits_equal(a[2], b[2], "momentum_buffer")
    c = [x.copy() for x in b]
    _sgd_star((*c, 2, 1, 0, 0, 0, False, False))        # ints from njit code
    sgd_update(*b, 2, 1.0, 0.0, 0.0, 0.0, False, False)
    assert_bits_equal(c[0], b[0], "param")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=5, max_size=5), st.booleans())
def test_sharing_is_refused_exactly_when_np_shares_memory_says_so(starts, amsgrad):
    # Five windows of one buffer: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq.
    buf = np.zeros(20)
    arrays = [buf[s:s + 4] for s in starts]
    used = range(5) if amsgrad else range(4)    # max_exp_avg_sq is ignored without AMSGrad
    bad = any(np.shares_memory(arrays[i], arrays[j])    # a state array and anything else
              for j in used if j >= 2 for i in used if i < j)
    bad |= np.shares_memory(arrays[0], arrays[1]) and starts[0] != starts[1]
    before = buf.copy()
    try:
        adam_update(*arrays, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, amsgrad, False, False)
    except ValueError as error:
        assert bad and ("share" in str(error) or "overlaps param" in str(error))
        assert_bits_equal(buf, before, "the buffer")
    else:
        assert not bad


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=5, max_size=5), st.booleans(), st.booleans())
def test_rmsprop_sharing_is_refused_exactly_when_np_shares_memory_says_so(starts, momentum,
                                                                          centered):
    buf = np.zeros(20)
    arrays = [buf[s:s + 4] for s in starts]
    used = [0, 1, 2] + ([3] if momentum else []) + ([4] if centered else [])
    bad = any(np.shares_memory(arrays[i], arrays[j]) for j in used if j >= 2
              for i in used if i < j)
    bad |= np.shares_memory(arrays[0], arrays[1]) and starts[0] != starts[1]
    before = buf.copy()
    try:
        rmsprop_update(*arrays, 1, 0.1, 0.99, 1e-8, 0.0, 0.5 if momentum else 0.0, centered,
                       False)
    except ValueError as error:
        assert bad and ("share" in str(error) or "overlaps param" in str(error))
        assert_bits_equal(buf, before, "the buffer")
    else:
        assert not bad


@pytest.mark.parametrize("caller", ["python", "njit"])
@pytest.mark.parametrize("rule", RULES)
def test_a_read_only_gradient_is_fine(rule, caller):
    args = full_call(rule)
    same = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    args[1] = _read_only(args[1])
    call(rule, caller, args)
    call(rule, caller, same)
    for a, b in zip(args, same):
        if isinstance(a, np.ndarray):
            assert_bits_equal(a, b, "an array")
