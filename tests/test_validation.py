"""Bad input gets a clear error before anything is touched."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numadam


def _problem(dtype=np.float32):
    params = [np.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4),
              np.arange(5, dtype=np.float64), np.ones(7, dtype)]
    grads = [np.full(p.shape, 0.5, p.dtype) for p in params]
    return params, grads


def _snapshot(opt, params):
    return [p.copy() for p in params], opt.state_dict()


def _assert_unchanged(opt, params, snapshot):
    before_params, before_sd = snapshot
    for p, q in zip(params, before_params):
        np.testing.assert_array_equal(p, q)
    after = opt.state_dict()
    assert after["param_groups"] == before_sd["param_groups"]
    assert after["state"].keys() == before_sd["state"].keys()
    for index, entry in before_sd["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][index][key], value)


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr="fast"), "lr"),
    (dict(eps=-1.0), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(betas=(1.0, 0.999)), "betas[0]"), (dict(betas=(0.9, -0.1)), "betas[1]"),
    (dict(betas=(0.9,)), "betas"), (dict(betas="ab"), "betas"),
    (dict(amsgrad="yes"), "amsgrad"), (dict(maximize=1), "maximize"),
    (dict(check_finite="warn"), "check_finite"),
])
def test_invalid_hyperparameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        numadam.Adam([np.zeros(3)], **kwargs)


def test_invalid_group_override_names_the_group():
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr"):
        numadam.Adam([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "lr": -1}])


@pytest.mark.parametrize("param,error,match", [
    (np.zeros(3, np.float16), ValueError, "unsupported dtype float16"),
    (np.zeros(3, np.int64), ValueError, "unsupported dtype int64"),
    (np.zeros((4, 4))[:, ::2], ValueError, "not C-contiguous"),
    (np.zeros((4, 4)).T, ValueError, "not C-contiguous"),
    ([1.0, 2.0], TypeError, "must be a NumPy array"),
])
def test_invalid_parameters(param, error, match):
    with pytest.raises(error, match=match):
        numadam.Adam([param])


def test_read_only_parameter_is_refused():
    x = np.zeros(3)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        numadam.Adam([x])


def test_parameter_containers():
    with pytest.raises(TypeError, match="single array"):
        numadam.Adam(np.zeros(3))
    with pytest.raises(TypeError, match="set"):
        numadam.Adam({1.0})
    with pytest.raises(ValueError, match="empty"):
        numadam.Adam([])
    x = np.zeros(3)
    with pytest.raises(ValueError, match="more than one"):
        numadam.Adam([x, x])
    opt = numadam.Adam([x])
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [x]})
    with pytest.raises(TypeError, match="set"):
        opt.add_param_group({"params": {np.zeros(2).tobytes()}})
    with pytest.raises(TypeError, match="'params'"):
        opt.add_param_group([np.zeros(2)])
    assert len(opt.param_groups) == 1


def test_a_sparse_parameter_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse"):
        numadam.Adam([sparse.csr_matrix(np.eye(3))])


def _bad_grads(grads):
    """(description, grads, error, message) for each way a gradient can be wrong."""
    wrong_shape = list(grads)
    wrong_shape[2] = np.ones(6, np.float32)
    wrong_dtype = list(grads)
    wrong_dtype[2] = np.ones(7, np.float64)
    strided = list(grads)
    strided[2] = np.ones(14, np.float32)[::2]
    not_array = list(grads)
    not_array[2] = [1.0] * 7
    return [
        ("shape", wrong_shape, ValueError, r"grads\[2\] has shape \(6,\)"),
        ("dtype", wrong_dtype, ValueError, r"grads\[2\] has dtype float64"),
        ("contiguity", strided, ValueError, "not C-contiguous"),
        ("type", not_array, TypeError, "must be a NumPy array"),
        ("count", grads[:2], ValueError, "got 2 gradients for 3 parameters"),
        ("container", np.stack([np.ones(3)] * 3), TypeError, "list of arrays"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_gradients_leave_everything_untouched(case):
    params, grads = _problem()
    opt = numadam.Adam(params, lr=0.1, amsgrad=True)
    opt.step(grads)                                   # state exists
    snapshot = _snapshot(opt, params)
    _, bad, error, match = _bad_grads(grads)[case]
    with pytest.raises(error, match=match):
        opt.step(bad)
    _assert_unchanged(opt, params, snapshot)
    opt.step(grads)                                   # and the optimizer still works
    assert opt.state[params[0]]["step"] == 2


def test_memory_error_in_a_later_bucket_changes_nothing():
    """The state of every bucket is made before any bucket steps: running out
    of memory for the second dtype's state must not leave the first bucket's
    parameters one step ahead of the rest."""
    params, grads = _problem()
    opt = numadam.Adam(params, lr=0.1, amsgrad=True)
    assert len(opt._buckets) == 2
    snapshot = _snapshot(opt, params)
    later = opt._buckets[1]

    def out_of_memory(amsgrad):
        raise MemoryError("no room for the state")

    later.allocate = out_of_memory
    with pytest.raises(MemoryError, match="no room"):
        opt.step(grads)
    _assert_unchanged(opt, params, snapshot)
    assert all(b.state is None for b in opt._buckets)
    del later.allocate                                # memory is back
    opt.step(grads)
    fresh_params, _ = _problem()
    fresh = numadam.Adam(fresh_params, lr=0.1, amsgrad=True)
    fresh.step(grads)
    for p, q in zip(params, fresh_params):
        np.testing.assert_array_equal(p, q)
    assert opt.state[params[0]]["step"] == 1


def test_sparse_gradient_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    params, grads = _problem()
    opt = numadam.Adam(params)
    grads[0] = sparse.csr_matrix(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="sparse"):
        opt.step(grads)
    assert len(opt.state) == 0


def test_parameter_made_read_only_after_construction():
    params, grads = _problem()
    opt = numadam.Adam(params)
    opt.step(grads)
    snapshot = _snapshot(opt, params)
    params[2].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step(grads)
    _assert_unchanged(opt, params, snapshot)


def test_group_hyperparameters_edited_to_bad_values():
    params, grads = _problem()
    opt = numadam.Adam(params)
    opt.step(grads)
    snapshot = _snapshot(opt, params)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="lr must be"):
        opt.step(grads)
    opt.param_groups[0]["lr"] = 1e-3
    _assert_unchanged(opt, params, snapshot)
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        opt.step(grads)
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="needs max_exp_avg_sq"):
        opt.step(grads)
    opt.param_groups[0]["amsgrad"] = False
    _assert_unchanged(opt, params, snapshot)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_guard_raise(bad):
    params, grads = _problem()
    opt = numadam.Adam(params, check_finite="raise")
    opt.step(grads)
    snapshot = _snapshot(opt, params)
    grads[2] = grads[2].copy()
    grads[2][5] = bad
    with pytest.raises(FloatingPointError, match="parameter 2"):
        opt.step(grads)
    _assert_unchanged(opt, params, snapshot)


def test_nonfinite_guard_skip_and_large_buckets():
    params = [np.zeros(100_000, np.float32), np.zeros(3, np.float32)]
    opt = numadam.Adam(params, check_finite="skip")
    grads = [np.ones(100_000, np.float32), np.ones(3, np.float32)]
    grads[0][77_777] = np.nan                       # found by the parallel scan
    opt.step(grads)
    assert opt.skipped_steps == 1 and len(opt.state) == 0
    assert not params[0].any() and not params[1].any()
    grads[0][77_777] = 1.0
    opt.step(grads)
    assert opt.skipped_steps == 1 and opt.state[0]["step"] == 1
    assert params[0].min() < 0


def test_without_the_guard_nan_propagates_as_in_torch():
    x = np.zeros(4)
    opt = numadam.Adam([x])
    opt.step([np.array([1.0, np.nan, 1.0, 1.0])])
    assert np.isnan(x[1]) and np.isfinite(x[[0, 2, 3]]).all()


def test_step_without_gradients():
    opt = numadam.Adam([np.zeros(3)])
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.step()


@pytest.mark.parametrize("key,value,words", [
    ("amsgrad", 0, "amsgrad must be True or False"),
    ("maximize", 0, "maximize must be True or False"),
    ("decoupled_weight_decay", 0, "decoupled_weight_decay must be True or False"),
    ("weight_decay", False, "weight_decay must be a real number"),
    ("eps", np.False_, "eps must be a real number"),
])
def test_edits_equal_to_the_old_value_but_of_another_type_are_validated(key, value, words):
    # 0 == False and False == 0.0: comparing values alone lets these through,
    # and the checkpoint they end up in is then refused by load.
    params, grads = _problem()
    opt = numadam.Adam(params, eps=0.0)
    opt.step(grads)
    snapshot = _snapshot(opt, params)
    old = opt.param_groups[0][key]
    assert value == old
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=words):
        opt.step(grads)
    opt.param_groups[0][key] = old
    _assert_unchanged(opt, params, snapshot)


@pytest.mark.parametrize("make", [
    lambda x: [x, x[:4]],                       # a view inside another parameter
    lambda x: [x[2:], x[:3]],                   # two views sharing one element
    lambda x: [x[:3].reshape(3, 1), x],
    lambda x: [{"params": [x[:5]]}, {"params": [x[4:]]}],     # across groups
], ids=["view-inside", "views-sharing-one", "reshaped", "across-groups"])
def test_overlapping_parameters_are_refused(make):
    x = np.arange(8.0)
    with pytest.raises(ValueError, match="shares memory with"):
        numadam.Adam(make(x))
    np.testing.assert_array_equal(x, np.arange(8.0))


def test_overlap_through_add_param_group_changes_nothing():
    buf = np.zeros(10, np.float32)
    opt = numadam.Adam([buf[:6]], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[1\] shares memory"):
        opt.add_param_group({"params": [np.zeros(3), buf[5:]]})
    assert len(opt.param_groups) == 1 and len(opt._slots) == 1
    opt.add_param_group({"params": [buf[6:]]})   # adjacent, not overlapping
    opt.step([np.ones(6, np.float32), np.ones(4, np.float32)])
    np.testing.assert_allclose(buf, -0.1, rtol=1e-6)


def test_disjoint_views_and_empty_views_are_accepted():
    buf = np.ones(12)
    opt = numadam.Adam([buf[:4], buf[4:].reshape(2, 4), buf[:0], buf[3:3]], lr=0.1)
    opt.step([np.ones(4), np.ones((2, 4)), np.ones(0), np.ones(0)])
    np.testing.assert_allclose(buf, 0.9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 8), st.booleans()),
                min_size=1, max_size=5))
def test_overlap_is_refused_exactly_when_np_shares_memory_says_so(views):
    # Views of two buffers (so that equal offsets in different buffers never clash),
    # grouped one per group or all in one: refused iff some pair shares memory.
    buffers = [np.zeros(32), np.zeros(32)]
    params = [buffers[other][start:start + length] for start, length, other in views]
    overlapping = any(np.shares_memory(a, b) for i, a in enumerate(params)
                      for b in params[i + 1:])
    for groups in ([params], [[p] for p in params]):
        try:
            numadam.Adam([{"params": g} for g in groups])
        except ValueError as error:
            assert overlapping and "shares memory" in str(error)
        else:
            assert not overlapping
