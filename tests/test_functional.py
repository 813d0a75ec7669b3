"""numadam.functional.adam_update: bit-identical to the classes, from Python and njit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

import numadam
import optim_configs as oc
from helpers import assert_bits_equal
from numadam.functional import adam_update

STEPS = 60
SHAPE = (4, 8)
# (class, weight_decay, amsgrad, maximize, betas, eps)
CASES = {
    "adam": ("Adam", 0.0, False, False, (0.9, 0.999), 1e-8),
    "adam_l2": ("Adam", 0.05, False, False, (0.9, 0.999), 1e-8),
    "adamw": ("AdamW", 0.05, False, False, (0.9, 0.999), 1e-8),
    "amsgrad_l2": ("Adam", 0.02, True, False, (0.9, 0.99), 1e-8),
    "amsgrad_adamw_maximize": ("AdamW", 0.1, True, True, (0.9, 0.999), 1e-8),
    "maximize": ("Adam", 0.0, False, True, (0.9, 0.999), 1e-6),
    "small_beta1_eps0": ("Adam", 0.0, False, False, (0.3, 0.9), 0.0),
}


def lr_at(step):
    """A schedule, so that the learning rate really is a per-call argument."""
    return 1e-2 if step <= 30 else 3e-3


def problem(name, dtype):
    index = list(CASES).index(name)
    param = (oc.initial_params(index, dtype)[1]).reshape(SHAPE)
    grads = np.stack([oc.gradient(index, t, 1, SHAPE, dtype) for t in range(1, STEPS + 1)])
    return param, grads


def with_class(name, dtype):
    cls, wd, amsgrad, maximize, betas, eps = CASES[name]
    param, grads = problem(name, dtype)
    opt = getattr(numadam, cls)([param], lr=lr_at(1), betas=betas, eps=eps,
                                weight_decay=wd, amsgrad=amsgrad, maximize=maximize)
    for t in range(1, STEPS + 1):
        opt.param_groups[0]["lr"] = lr_at(t)
        opt.step([grads[t - 1]])
    state = opt.state[0]
    return param, state["exp_avg"], state["exp_avg_sq"], \
        state["max_exp_avg_sq"] if amsgrad else None


def fresh_state(param, amsgrad):
    m, v = np.zeros_like(param), np.zeros_like(param)
    vmax = np.zeros_like(param) if amsgrad else np.empty(0, param.dtype)
    return m, v, vmax


@njit(cache=True)
def _njit_loop(param, grads, m, v, vmax, lrs, beta1, beta2, eps, wd, amsgrad, maximize,
               decoupled):
    for t in range(1, grads.shape[0] + 1):
        adam_update(param, grads[t - 1], m, v, vmax, t, lrs[t - 1], beta1, beta2, eps, wd,
                    amsgrad, maximize, decoupled)


def check_same(name, got, expected):
    for what, a, b in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), got,
                          expected):
        if b is not None:
            assert_bits_equal(a, b, f"{name} {what}")


@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_from_python_is_bit_identical_to_the_classes(name, dtype):
    cls, wd, amsgrad, maximize, (beta1, beta2), eps = CASES[name]
    param, grads = problem(name, dtype)
    m, v, vmax = fresh_state(param, amsgrad)
    for t in range(1, STEPS + 1):
        adam_update(param, grads[t - 1], m, v, vmax, t, lr_at(t), beta1, beta2, eps, wd,
                    amsgrad, maximize, cls == "AdamW")
    check_same(name, (param, m, v, vmax), with_class(name, dtype))


@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_inside_a_user_njit_loop_is_bit_identical_to_the_classes(name, dtype):
    cls, wd, amsgrad, maximize, (beta1, beta2), eps = CASES[name]
    param, grads = problem(name, dtype)
    m, v, vmax = fresh_state(param, amsgrad)
    lrs = np.array([lr_at(t) for t in range(1, STEPS + 1)])
    _njit_loop(param, grads, m, v, vmax, lrs, beta1, beta2, eps, wd, amsgrad, maximize,
               cls == "AdamW")
    check_same(name, (param, m, v, vmax), with_class(name, dtype))


def test_a_long_array_matches_too():
    """Long enough for the vectorised loop body and its scalar tail."""
    rng = np.random.default_rng(0)
    param = rng.standard_normal(1003).astype(np.float32)
    expected = param.copy()
    opt = numadam.AdamW([expected], lr=1e-2, amsgrad=True)
    m, v, vmax = fresh_state(param, True)
    for t in range(1, 11):
        g = rng.standard_normal(1003).astype(np.float32)
        opt.step([g])
        adam_update(param, g, m, v, vmax, t, 1e-2, 0.9, 0.999, 1e-8, 1e-2, True, False, True)
    assert_bits_equal(param, expected, "param")


def test_param_and_grad_may_be_the_same_array():
    x = np.array([3.0, -2.0, 0.5])
    y = x.copy()
    m, v, vmax = fresh_state(x, False)
    opt = numadam.Adam([y], lr=0.1)
    for t in range(1, 20):
        opt.step([y.copy()])
        adam_update(x, x, m, v, vmax, t, 0.1, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    assert_bits_equal(x, y, "param")


def args_for(like, **over):
    m, v, vmax = fresh_state(like, False)
    args = dict(param=like, grad=np.ones_like(like), exp_avg=m, exp_avg_sq=v,
                max_exp_avg_sq=vmax, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
    args.update(over)
    return args


P = np.zeros(4)


@pytest.mark.parametrize("over,error,words", [
    (dict(grad=np.zeros(3)), ValueError, "grad has shape (3,)"),
    (dict(grad=np.zeros(4, np.float32)), ValueError, "grad has dtype float32"),
    (dict(grad=[1.0, 1.0, 1.0, 1.0]), TypeError, "grad must be a NumPy array"),
    (dict(exp_avg=np.zeros(5)), ValueError, "exp_avg has shape (5,)"),
    (dict(exp_avg_sq=np.zeros((4, 1))), ValueError, "exp_avg_sq has shape (4, 1)"),
    (dict(amsgrad=True), ValueError, "max_exp_avg_sq has shape (0,)"),
    (dict(param=np.zeros(4, np.int64), grad=np.zeros(4, np.int64)), ValueError,
     "unsupported dtype int64"),
    (dict(param=np.zeros(8)[::2]), ValueError, "not C-contiguous"),
    (dict(grad=np.zeros(8)[::2]), ValueError, "np.ascontiguousarray(grad)"),
    (dict(exp_avg=np.zeros(8)[::-2]), ValueError,
     "exp_avg is not C-contiguous (strides (-16,)); the state is updated in place"),
    (dict(exp_avg_sq=np.broadcast_to(np.zeros(1), (4,))), ValueError,
     "exp_avg_sq is not C-contiguous (strides (0,)); the state is updated in place"),
    (dict(step=0), ValueError, "step must be >= 1"),
    (dict(step=1.0), TypeError, "step must be an integer"),
    (dict(step=True), TypeError, "step must be an integer"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(beta2=1.0), ValueError, "betas[1]"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(amsgrad=1), ValueError, "amsgrad must be True or False"),
])
def test_bad_arguments_from_python_touch_nothing(over, error, words):
    args = args_for(P.copy(), **over)
    before = [np.array(a, copy=True) for a in args.values() if isinstance(a, np.ndarray)]
    with pytest.raises(error) as info:
        adam_update(**args)
    assert words in str(info.value)
    after = [a for a in args.values() if isinstance(a, np.ndarray)]
    for a, b in zip(after, before):
        assert_bits_equal(np.ascontiguousarray(a), b, "untouched")


def test_read_only_state_is_rejected():
    m = np.zeros(4)
    m.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        adam_update(**args_for(np.zeros(4), exp_avg=m))


@njit
def _call(param, grad, m, v, vmax, step, lr, amsgrad):
    adam_update(param, grad, m, v, vmax, step, lr, 0.9, 0.999, 1e-8, 0.0, amsgrad, False,
                False)


def test_inside_njit_shape_and_value_errors_raise_before_any_write():
    x = np.ones(4)
    g = np.ones(4)
    m, v, vmax = fresh_state(x, False)
    for bad, words in [((x, g[:3], m, v, vmax, 1, 1e-3, False), "shape of param"),
                       ((x, g, m, v, vmax, 1, 1e-3, True), "max_exp_avg_sq"),
                       ((x, g, m, v, vmax, 0, 1e-3, False), "step must be >= 1"),
                       ((x, g, m, v, vmax, 1, -1.0, False), "need finite lr")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            _call(*bad)
        assert_bits_equal(x, np.ones(4), "param")
        assert not m.any() and not v.any()


def test_inside_njit_type_mismatches_fail_at_compile_time_with_a_clear_message():
    x = np.ones(4)
    m, v, vmax = fresh_state(x, False)
    with pytest.raises(TypingError, match="grad is array\\(float32"):
        _call(x, np.ones(4, np.float32), m, v, vmax, 1, 1e-3, False)
    with pytest.raises(TypingError, match="not known to be C-contiguous"):
        _call(x, np.ones(8)[::2], m, v, vmax, 1, 1e-3, False)
    with pytest.raises(TypingError, match="step must be an integer"):
        _call(x, np.ones(4), m, v, vmax, 1.0, 1e-3, False)


def test_read_only_param_is_rejected_even_as_its_own_gradient():
    x = np.zeros(4)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        adam_update(**args_for(x, grad=x))


@njit
def _call_hyper(param, grad, m, v, vmax, lr, beta1, beta2, eps, wd, amsgrad):
    adam_update(param, grad, m, v, vmax, 1, lr, beta1, beta2, eps, wd, amsgrad, False, False)


@pytest.mark.parametrize("bad", [dict(beta1=1.0), dict(beta2=1.0), dict(beta1=-0.1),
                                 dict(beta2=np.nan), dict(lr=np.inf), dict(eps=-1e-8),
                                 dict(wd=np.nan)])
def test_inside_njit_each_hyperparameter_is_checked_before_any_write(bad):
    # From Python these values never reach the compiled check (the Python
    # validation refuses them first), so only an njit caller can see it.
    x, g = np.ones(4), np.full(4, 0.5)
    m, v, vmax = fresh_state(x, True)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0) | bad
    with pytest.raises(ValueError, match="need finite lr"):
        _call_hyper(x, g, m, v, vmax, amsgrad=True, **hyper)
    assert_bits_equal(x, np.ones(4), "param")
    assert not m.any() and not v.any() and not vmax.any()


def _aliasing_cases():
    """(name, arrays (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq), amsgrad, words)."""
    x, g = np.ones(6), np.full(6, 0.5)
    m, v, w = np.zeros(6), np.zeros(6), np.zeros(6)
    buf = np.zeros(12)
    state_state = "exp_avg, exp_avg_sq and max_exp_avg_sq must not share memory"
    state_param = "state arrays must not share memory with param or grad"
    return [
        ("exp_avg is exp_avg_sq", (x, g, m, m, w), False, state_state),
        ("overlapping moments", (x, g, buf[:6], buf[3:9], w), False, state_state),
        ("vmax is exp_avg", (x, g, m, v, m), True, state_state),
        ("vmax is exp_avg_sq", (x, g, m, v, v), True, state_state),
        ("exp_avg is param", (x, g, x, v, w), False, state_param),
        ("exp_avg_sq is grad", (x, g, m, g, w), False, state_param),
        ("vmax is param", (x, g, m, v, x), True, state_param),
        ("vmax is grad", (x, g, m, v, g), True, state_param),
        ("grad is a shifted view of param", (buf[:6], buf[1:7], m, v, w), False,
         "grad overlaps param"),
    ]


@pytest.mark.parametrize("case", _aliasing_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("caller", ["python", "njit"])
def test_aliased_arrays_are_refused_before_any_write(case, caller):
    _, arrays, amsgrad, words = case
    before = [a.copy() for a in arrays]
    call = adam_update if caller == "python" else _call_all
    with pytest.raises(ValueError, match=words):
        call(*arrays, 3, 0.1, 0.9, 0.999, 1e-8, 0.0, amsgrad, False, False)
    for a, b in zip(arrays, before):
        assert_bits_equal(a, b, "an array")


@njit
def _call_all(param, grad, m, v, vmax, step, lr, beta1, beta2, eps, wd, amsgrad, maximize,
              decoupled):
    adam_update(param, grad, m, v, vmax, step, lr, beta1, beta2, eps, wd, amsgrad, maximize,
                decoupled)


def test_vmax_may_alias_anything_without_amsgrad_and_views_of_one_buffer_are_fine():
    x, g = np.ones(6), np.full(6, 0.5)
    state = np.zeros((2, 6))                        # both moments in one buffer, apart
    adam_update(x, g, state[0], state[1], x, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, False, False,
                False)
    y, h = np.ones(6), np.full(6, 0.5)
    m, v = np.zeros(6), np.zeros(6)
    adam_update(y, h, m, v, y[:0], 1, 0.1, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    assert_bits_equal(x, y, "param")
    assert_bits_equal(state[0], m, "exp_avg")


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
