"""The fast paths of a step: a refused step leaves the next one as if it never ran.

``step([g])`` writes each checked gradient's address into the bucket tables
as it goes (numadam.core.optimizer), so a step refused after some words were
written must not leave a later ``step()`` reading them instead of the owned
buffers.
"""

import numpy as np
import pytest

import numadam


def _refuse_gradient(opt, arrays):
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.full(4, 1e6), np.zeros(3)])


def _refuse_hyperparameter(opt, arrays):
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.full(4, 1e6), np.full(4, 1e6)])
    opt.param_groups[0]["lr"] = 0.1


def _refuse_read_only(opt, arrays):
    arrays[1].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step([np.full(4, 1e6), np.full(4, 1e6)])
    arrays[1].flags.writeable = True


@pytest.mark.parametrize("refuse", [_refuse_gradient, _refuse_hyperparameter,
                                    _refuse_read_only])
@pytest.mark.parametrize("cls", ["Adam", "SGD", "Adagrad", "RMSprop"])
def test_owned_gradients_after_a_refused_step_with_gradients(cls, refuse):
    runs = []
    for refused in (False, True):
        arrays = [np.linspace(-1, 1, 4), np.linspace(2, 3, 4)]
        opt = getattr(numadam, cls)(arrays, lr=0.1)
        opt.grads[0][...] = [0.5, -0.25, 1.0, 2.0]
        opt.grads[1][...] = [-1.0, 0.125, 3.0, -0.5]
        opt.step()
        if refused:
            refuse(opt, arrays)
        opt.step()
        opt.step([g.copy() for g in opt.grads])
        opt.step()
        runs.append([a.view(np.uint64).copy() for a in arrays])
    for before, after in zip(*runs):
        np.testing.assert_array_equal(before, after)


# A schedule writes a new float into a real hyperparameter every step; the
# optimizer re-checks only the changed entries then. Each case: the class,
# its constructor arguments, the entry changed and the new value.
_REAL_EDITS = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01), "lr", 0.0375),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3), "weight_decay", 0.0625),
    ("Adam", dict(lr=1e-2), "eps", 1.3e-5),
    ("Adam", dict(lr=1e-2, amsgrad=True), "betas", (0.8125, 0.9971)),   # OneCycleLR's beta1
    ("SGD", dict(lr=0.1, momentum=0.9), "lr", 0.01234),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2), "dampening", 0.7),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01), "lr_decay", 0.3),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), "alpha", 0.93),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs, key, value", _REAL_EDITS)
def test_a_real_hyperparameter_edited_between_steps_steps_as_if_constructed(
        cls, kwargs, key, value, dtype):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(33).astype(dtype) for _ in range(4)]
    start = rng.standard_normal(33).astype(dtype)
    edited, fresh = start.copy(), start.copy()
    opt = getattr(numadam, cls)([edited], **kwargs)
    opt.step([grads[0]])
    opt.param_groups[0][key] = value
    for g in grads[1:]:
        opt.step([g])
    # the reference: one step with the old value, the rest with the new one
    ref = getattr(numadam, cls)([fresh], **kwargs)
    ref.step([grads[0]])
    state = ref.state_dict()
    state["param_groups"][0][key] = value
    ref2 = getattr(numadam, cls)([fresh], **{**kwargs, key: value})
    ref2.load_state_dict(state)
    for g in grads[1:]:
        ref2.step([g])
    assert np.array_equal(edited.view(np.uint8), fresh.view(np.uint8))
    assert opt.param_groups[0][key] == value


@pytest.mark.parametrize("cls, kwargs, key, value, match", [
    ("Adam", dict(lr=1e-2), "lr", -0.5, "lr"),
    ("Adam", dict(lr=1e-2), "weight_decay", float("nan"), "weight_decay"),
    ("Adam", dict(lr=1e-2), "eps", float("inf"), "eps"),
    ("Adam", dict(lr=1e-2), "betas", (0.9, 1.0), "betas"),
    ("Adam", dict(lr=1e-2), "betas", (float("nan"), 0.9), "betas"),
    # nesterov needs dampening 0: the rule's cross-field check still runs
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), "dampening", 0.5, "dampening"),
    # a real that decides which state exists takes the full path
    ("SGD", dict(lr=0.1), "momentum", 0.5, "momentum"),
])
def test_an_invalid_real_edit_is_refused_before_any_array_changes(cls, kwargs, key, value,
                                                                  match):
    p = np.linspace(-1, 1, 8)
    opt = getattr(numadam, cls)([p], **kwargs)
    opt.step([np.ones(8)])
    before = p.copy(), opt.state_dict()
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=match):
        opt.step([np.ones(8)])
    assert np.array_equal(p, before[0])
    for name, array in before[1]["state"].get(0, {}).items():
        assert np.array_equal(opt.state_dict()["state"][0][name], array)
