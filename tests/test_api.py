"""The torch-like surface: groups, in-place updates, owned gradients, closures."""

import doctest
import subprocess
import sys

import numpy as np
import pytest

import numadam


def test_updates_in_place_and_keeps_the_users_arrays():
    x = np.ones((2, 2, 3), np.float32)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones_like(x)])
    assert opt.param_groups[0]["params"][0] is x
    np.testing.assert_allclose(x, 0.9, rtol=1e-6)


def test_any_shape_equals_the_flat_update():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    flat = x.reshape(-1).copy()
    a, b = numadam.Adam([x], lr=0.01), numadam.Adam([flat], lr=0.01)
    for _ in range(5):
        g = rng.standard_normal((3, 4, 5))
        a.step([g])
        b.step([g.reshape(-1)])
    assert np.array_equal(x.reshape(-1), flat)


def test_scalar_and_empty_parameters():
    s, e = np.array(2.0), np.zeros((0, 3))
    opt = numadam.Adam([s, e], lr=0.5)
    opt.step([np.array(1.0), np.zeros((0, 3))])
    assert abs(s - 1.5) < 1e-7 and opt.state[e]["step"] == 1


def test_mixed_dtypes_in_one_group_match_separate_optimizers():
    a32, a64 = np.ones(5, np.float32), np.ones(3)
    b32, b64 = a32.copy(), a64.copy()
    mixed = numadam.AdamW([a32, a64], lr=0.1)
    one, two = numadam.AdamW([b32], lr=0.1), numadam.AdamW([b64], lr=0.1)
    for i in range(4):
        g32, g64 = np.full(5, i + 0.5, np.float32), np.full(3, -i - 0.5)
        mixed.step([g32, g64])
        one.step([g32])
        two.step([g64])
    assert np.array_equal(a32, b32) and np.array_equal(a64, b64)
    assert a32.dtype == np.float32


def test_adamw_defaults_and_decay():
    x = np.ones(4)
    opt = numadam.AdamW([x], lr=0.1)
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    opt.step([np.zeros(4)])                     # zero gradient: only the decay acts
    np.testing.assert_array_equal(x, 1 - 0.1 * 1e-2)
    y = np.ones(4)
    numadam.Adam([y], lr=0.1, weight_decay=1e-2).step([np.zeros(4)])
    assert not np.array_equal(y, x)             # L2: the decay goes through Adam


def test_groups_overrides_and_schedule():
    x, y = np.zeros(2), np.zeros(2)
    opt = numadam.Adam([{"params": [x]}, {"params": [y], "lr": 0.5}], lr=0.1)
    opt.step([np.ones(2), np.ones(2)])
    np.testing.assert_allclose(x, -0.1)
    np.testing.assert_allclose(y, -0.5)
    opt.param_groups[0]["lr"] = 0.0             # a schedule edits the group
    opt.step([np.ones(2), np.ones(2)])
    np.testing.assert_allclose(x, -0.1)


def test_lr_given_as_int_or_numpy_scalar():
    a, b, c = np.zeros(3), np.zeros(3), np.zeros(3)
    for x, lr in ((a, 1), (b, 1.0), (c, np.float32(1.0))):
        numadam.Adam([x], lr=lr).step([np.ones(3)])
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_add_param_group_after_steps():
    x, y = np.zeros(3), np.zeros(2, np.float32)
    opt = numadam.Adam([x], lr=0.1)
    g = opt.grads
    g[0][...] = 1.0
    opt.step()
    opt.add_param_group({"params": [y], "lr": 0.2})
    assert len(opt.grads) == 2 and opt.grads[1].dtype == np.float32
    opt.grads[1][...] = 1.0
    opt.step()
    assert opt.state[x]["step"] == 2 and opt.state[y]["step"] == 1
    np.testing.assert_allclose(y, -0.2, rtol=1e-6)


def test_owned_gradients_and_zero_grad():
    x = np.zeros(4)
    opt = numadam.Adam([x], lr=0.1)
    grads = opt.grads
    assert isinstance(grads, tuple) and grads[0].shape == (4,) and not grads[0].any()
    with pytest.raises(TypeError):
        grads[0] = np.ones(4)                   # buffers cannot be swapped out
    grads[0][...] = 2.0
    opt.step()
    np.testing.assert_allclose(x, -0.1)
    opt.zero_grad()
    assert not opt.grads[0].any()
    opt.step([np.ones(4)])                      # explicit gradients ...
    opt.step()                                  # ... then the owned (zero) ones again
    assert opt.state[x]["step"] == 3


def test_closure_is_called_once_and_its_loss_returned():
    x = np.array([3.0])
    opt = numadam.Adam([x], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        opt.grads[0][...] = 2 * x
        return float(x[0] ** 2)

    assert opt.step(closure=closure) == 9.0
    assert calls == [1] and x[0] < 3.0
    assert opt.step([np.ones(1)]) is None


def test_missing_gradient_leaves_parameter_and_state_alone():
    x, y = np.zeros(2), np.zeros(2)
    opt = numadam.Adam([x, y], lr=0.1)
    opt.step([np.ones(2), None])
    assert not y.any() and list(opt.state) == [0]
    opt.step([np.ones(2), np.ones(2)])
    assert opt.state[x]["step"] == 2 and opt.state[y]["step"] == 1
    np.testing.assert_allclose(y, -0.1)


def test_repr_lists_groups():
    text = repr(numadam.AdamW([np.zeros(2)], lr=0.3))
    assert "AdamW" in text and "lr: 0.3" in text and "Parameter Group 0" in text


def test_docstring_examples():
    from internals import rules
    for module in (numadam, *(rules.module(name) for name in rules.REGISTRY)):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0, module


def test_import_numadam_loads_no_gpu_or_mpi_stack():
    code = ("import sys, numadam; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cupy', 'mpi4py', 'torch', 'jax') or m.startswith('numba.cuda')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_a_callable_first_argument_is_the_closure():
    x = np.array([3.0])
    opt = numadam.Adam([x], lr=0.1)
    opt.grads

    def closure():
        opt.grads[0][...] = 2 * x
        return 9.0

    assert opt.step(closure) == 9.0             # torch's step(closure)
    assert opt.state[x]["step"] == 1 and x[0] < 3.0
    with pytest.raises(TypeError, match="closure twice"):
        opt.step(closure, closure=closure)
    assert opt.state[x]["step"] == 1


def test_zero_grad_set_to_none_zero_fills_the_owned_buffers():
    x = np.zeros(3)
    opt = numadam.Adam([x], lr=0.1)
    opt.grads[0][...] = 1.0
    buffer = opt.grads[0]
    for set_to_none in (True, False):
        opt.zero_grad(set_to_none=set_to_none)
        assert opt.grads[0] is buffer and not buffer.any()
        buffer[...] = 1.0
    opt.zero_grad(True)
    opt.step()                                  # still reads the (zero) buffers
    assert opt.state[x]["step"] == 1 and not x.any()


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict(fused=True),
                                   dict(fused=False), dict(foreach=None, fused=None),
                                   dict(capturable=False, differentiable=False),
                                   dict(fused=True, foreach=False)])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_torchs_implementation_flags_are_accepted_and_change_nothing(cls, flags):
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)
    plain = getattr(numadam, cls)([x], lr=0.1, weight_decay=0.1)
    flagged = getattr(numadam, cls)([y], lr=0.1, weight_decay=0.1, **flags)
    for t in range(3):
        g = np.full(5, 0.5 - t)
        plain.step([g])
        flagged.step([g])
    assert np.array_equal(x, y)
    assert plain.state_dict()["param_groups"] == flagged.state_dict()["param_groups"]


@pytest.mark.parametrize("flags,words", [
    (dict(fused=True, foreach=True), "cannot be used together"),
    (dict(capturable=True), "capturable=True is not supported"),
    (dict(differentiable=True), "differentiable=True is not supported"),
    (dict(foreach="yes"), "foreach must be True or False"),
    (dict(decoupled_weight_decay=1), "decoupled_weight_decay must be True or False"),
])
def test_torch_flags_that_cannot_be_honoured_are_refused(flags, words):
    with pytest.raises(ValueError, match=words):
        numadam.Adam([np.zeros(2)], **flags)


def test_adam_with_decoupled_weight_decay_is_adamw():
    x, y = np.linspace(-1, 1, 6), np.linspace(-1, 1, 6)
    adam = numadam.Adam([x], lr=0.1, weight_decay=0.3, decoupled_weight_decay=True)
    adamw = numadam.AdamW([y], lr=0.1, weight_decay=0.3)
    for t in range(4):
        g = np.full(6, 0.25 * t - 0.5)
        adam.step([g])
        adamw.step([g])
    assert np.array_equal(x, y)
    assert adam.param_groups[0]["decoupled_weight_decay"] is True
    assert numadam.Adam([np.zeros(1)]).param_groups[0]["decoupled_weight_decay"] is False
    with pytest.raises(TypeError):              # as torch's AdamW: not an argument
        numadam.AdamW([np.zeros(1)], decoupled_weight_decay=False)


def test_group_params_cannot_be_changed_in_place():
    x, y = np.zeros(2), np.zeros(2)
    opt = numadam.Adam([x], lr=0.1)
    params = opt.param_groups[0]["params"]
    for change in (lambda: params.append(y), lambda: params.extend([y]),
                   lambda: params.insert(0, y), lambda: params.__setitem__(0, y),
                   lambda: params.pop(), lambda: params.remove(x), params.clear,
                   lambda: params.__delitem__(0), lambda: params.__iadd__([y])):
        with pytest.raises(TypeError, match="cannot be changed"):
            change()
    assert list(params) == [x] and isinstance(params, list)
    opt.step([np.ones(2)])
    assert opt.state[x]["step"] == 1


def test_a_replaced_group_params_list_is_refused_before_anything_changes():
    x, y = np.zeros(2), np.zeros(2)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(2)])
    before = x.copy()
    kept = opt.param_groups[0]["params"]
    for other in ([y], [x, y], [], (y,), x):
        opt.param_groups[0]["params"] = other
        with pytest.raises(ValueError,
                           match=r"param_groups\[0\]\['params'\] was replaced by other"):
            opt.step([np.ones(2)])
        with pytest.raises(ValueError, match="was replaced by other"):
            opt.state_dict()
        assert np.array_equal(x, before) and not y.any() and opt.state[x]["step"] == 1
    opt.param_groups[0]["params"] = [x]         # the same arrays: the group's list is back
    opt.step([np.ones(2)])
    assert opt.param_groups[0]["params"] is kept and opt.state[x]["step"] == 2


def test_groups_added_or_removed_behind_the_optimizers_back_are_refused():
    x, y = np.zeros(2), np.zeros(3)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(2)])
    groups = opt.param_groups
    extra = dict(groups[0], params=[y])
    for change, undo in ((lambda: groups.append(extra), groups.pop),
                         (groups.pop, lambda: groups.append(kept)),
                         (lambda: setattr(opt, "param_groups", []),
                          lambda: setattr(opt, "param_groups", groups))):
        kept = groups[0]
        change()
        for call in (lambda: opt.step([np.ones(2)]), opt.state_dict,
                     lambda: opt.load_state_dict(sd),
                     lambda: opt.add_param_group({"params": [np.zeros(1)]})):
            sd = {"state": {}, "param_groups": opt.param_groups}
            with pytest.raises(ValueError, match="add_param_group"):
                call()
        undo()
        assert opt.state[x]["step"] == 1 and not y.any()
    opt.step([np.ones(2)])
    assert opt.state[x]["step"] == 2


@pytest.mark.parametrize("key", ["lr", "betas", "amsgrad", "decoupled_weight_decay"])
def test_a_deleted_hyperparameter_is_a_clear_error_before_anything_changes(key):
    x = np.zeros(2)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(2)])
    before = x.copy()
    value = opt.param_groups[0].pop(key)
    for call in (lambda: opt.step([np.ones(2)]), opt.state_dict):
        with pytest.raises(ValueError, match=rf"param_groups\[0\] has no '{key}'"):
            call()
    assert opt.state[x]["step"] == 1 and np.array_equal(x, before)
    opt.param_groups[0][key] = value
    opt.step([np.ones(2)])
    assert opt.state[x]["step"] == 2


def test_a_state_dict_holding_arrays_for_ids_says_what_ids_are():
    # opt.param_groups holds the arrays; a state dict holds their integer ids.
    x = np.ones(3)
    opt = numadam.Adam([x], lr=0.1)
    opt.step([np.ones(3)])
    before = opt.state_dict()
    bad = {"state": before["state"], "param_groups": opt.param_groups}
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\] of the state dict "
                                         "must hold parameter ids.*ndarray"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.state[x]["step"] == 1
