"""State: lazily created, viewable, exported and re-imported all or nothing."""

import numpy as np
import pytest

import numadam
import optim_configs as oc
from helpers import assert_bits_equal, build, run


@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", list(oc.CONFIGS))
def test_resume_from_state_dict_is_exact(name, dtype, tmp_path):
    """k steps, save, load into a fresh optimizer over copies, n - k more steps
    == n uninterrupted steps, bit for bit; through a dict and through a file."""
    k, n = 73, 150
    straight, params = build(name, dtype)
    run(straight, name, dtype, 1, n)

    first, first_params = build(name, dtype)
    run(first, name, dtype, 1, k)
    first.save(tmp_path / "ckpt.npz")
    for via_file in (False, True):
        copies = [p.copy() for p in first_params]
        resumed, copies = build(name, dtype, params=copies)
        if via_file:
            resumed.load(tmp_path / "ckpt.npz")
        else:
            resumed.load_state_dict(first.state_dict())
        run(resumed, name, dtype, k + 1, n)
        for j, (p, q) in enumerate(zip(copies, params)):
            assert_bits_equal(p, q, f"param {j} (file={via_file})")
        a, b = resumed.state_dict(), straight.state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for index, entry in b["state"].items():
            assert list(a["state"][index]) == list(entry)     # every key, torch's order
            assert a["state"][index].get("step") == entry.get("step")
            for key in entry:
                if key != "step":
                    assert_bits_equal(a["state"][index][key], entry[key], f"{index} {key}")


def test_state_is_lazy_and_live():
    x, y = np.zeros((2, 3)), np.zeros(4, np.float32)
    opt = numadam.Adam([x, y], amsgrad=True)
    assert len(opt.state) == 0
    with pytest.raises(KeyError, match="no state yet"):
        opt.state[x]
    opt.step([np.ones((2, 3)), None])
    assert list(opt.state) == [0]
    st = opt.state[x]
    assert st["step"] == 1 and isinstance(st["step"], int)
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert st["exp_avg"].shape == (2, 3) and st["exp_avg"].dtype == np.float64
    np.testing.assert_allclose(st["exp_avg"], 0.1)
    assert opt.state[0]["step"] == 1                # by index too
    st["exp_avg"][...] = 7.0                        # live views into the buffers
    assert opt.state_dict()["state"][0]["exp_avg"][0, 0] == 7.0
    st["step"] = 10
    assert opt.state[x]["step"] == 10
    with pytest.raises(KeyError):
        opt.state[np.zeros(3)]
    with pytest.raises(KeyError):
        opt.state[y]                                # never had a gradient


def test_state_dict_holds_copies_in_torch_layout():
    x = np.zeros(3)
    opt = numadam.AdamW([{"params": [x]}, {"params": [np.zeros(2)], "lr": 0.5}])
    opt.step([np.ones(3), np.ones(2)])
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][1]["params"] == [1]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert sd["param_groups"][0]["decoupled_weight_decay"] is True
    assert sd["param_groups"][0]["weight_decay"] == 1e-2
    sd["state"][0]["exp_avg"][...] = 99
    assert opt.state[0]["exp_avg"][0] != 99


def _trained(amsgrad=False):
    params = [np.linspace(0, 1, 6).reshape(2, 3), np.ones(4, np.float32)]
    opt = numadam.Adam(params, lr=0.1, amsgrad=amsgrad)
    for _ in range(3):
        opt.step([np.full((2, 3), 0.3), np.full(4, -0.2, np.float32)])
    return opt, params


def _bad_state_dicts():
    opt, _ = _trained()
    good = opt.state_dict()

    def edit(fn):
        sd = _trained()[0].state_dict()
        fn(sd)
        return sd

    return [
        ("groups", edit(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0]))),
         "2 parameter groups"),
        ("count", edit(lambda sd: sd["param_groups"][0]["params"].pop()), "has 1 parameters"),
        ("shape", edit(lambda sd: sd["state"][0].update(exp_avg=np.zeros(6))), "shape"),
        ("dtype", edit(lambda sd: sd["state"][1].update(exp_avg_sq=np.zeros(4))), "dtype"),
        ("missing", edit(lambda sd: sd["state"][0].pop("exp_avg_sq")), "no 'exp_avg_sq'"),
        ("unknown", edit(lambda sd: sd["state"][0].update(momentum=1)), "does not keep"),
        ("step", edit(lambda sd: sd["state"][0].update(step=-1)), "step"),
        ("step2", edit(lambda sd: sd["state"][0].update(step=2.5)), "whole number"),
        ("step3", edit(lambda sd: sd["state"][0].update(step=2 ** 64)), "2\\*\\*63"),
        ("step4", edit(lambda sd: sd["state"][0].update(step=np.uint64(2 ** 63))), "2\\*\\*63"),
        ("step5", edit(lambda sd: sd["state"][0].update(step=1e300)), "2\\*\\*63"),
        ("lr", edit(lambda sd: sd["param_groups"][0].update(lr=-1)), "lr"),
        ("nolr", edit(lambda sd: sd["param_groups"][0].pop("lr")), "no 'lr'"),
        ("amsgrad", edit(lambda sd: sd["param_groups"][0].update(amsgrad=True)),
         "max_exp_avg_sq"),
        ("id", edit(lambda sd: sd["state"].update({5: sd["state"][0]})), "no parameter"),
        ("layout", {"state": good["state"]}, "param_groups"),
    ]


@pytest.mark.parametrize("case", range(16))
def test_load_state_dict_that_does_not_fit_changes_nothing(case):
    opt, params = _trained()
    before = opt.state_dict()
    name, sd, match = _bad_state_dicts()[case]
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"], name
    for index, entry in before["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][index][key], value)


def test_max_exp_avg_sq_of_another_shape_is_refused():
    """(3, 2) AMSGrad state into a (2, 3) parameter: same size, other shape."""
    opt, _ = _trained(amsgrad=True)
    sd = opt.state_dict()
    sd["state"][0]["max_exp_avg_sq"] = sd["state"][0]["max_exp_avg_sq"].reshape(3, 2)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"max_exp_avg_sq.*shape \(3, 2\)"):
        opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"],
                                  before["state"][0]["max_exp_avg_sq"])


def test_adamw_keeps_decoupled_decay_when_loading_an_adam_state_dict():
    """As torch's AdamW.__setstate__: an Adam state dict loaded into AdamW
    decays the AdamW way; Adam loading an AdamW state dict decouples too."""
    params = [np.ones(3)]
    adam = numadam.Adam([p.copy() for p in params], weight_decay=0.5)
    adam.step([np.ones(3)])
    adamw = numadam.AdamW([p.copy() for p in params])
    adamw.load_state_dict(adam.state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True
    assert adamw.param_groups[0]["weight_decay"] == 0.5
    # And it steps that way: with a zero gradient, decoupled decay leaves the
    # moments alone (L2 decay would feed 0.5 * p into them).
    before = adamw.state_dict()["state"][0]
    adamw.step([np.zeros(3)])
    after = adamw.state_dict()["state"][0]
    np.testing.assert_allclose(after["exp_avg"], 0.9 * before["exp_avg"], rtol=1e-12)

    back = numadam.Adam([p.copy() for p in params])
    back.load_state_dict(adamw.state_dict())
    assert back.param_groups[0]["decoupled_weight_decay"] is True


def test_older_state_dict_gets_defaults_for_later_hyperparameters():
    opt, params = _trained()
    sd = opt.state_dict()
    for key in ("amsgrad", "maximize", "decoupled_weight_decay"):
        del sd["param_groups"][0][key]
    sd["param_groups"][0]["lr"] = 0.25                 # saved values win over current
    fresh = numadam.AdamW([p.copy() for p in params], amsgrad=True, maximize=True)
    fresh.load_state_dict(sd)
    group = fresh.param_groups[0]
    # The values that reproduce what the writer did, not this optimizer's settings.
    assert group["amsgrad"] is False and group["maximize"] is False
    assert group["decoupled_weight_decay"] is True and group["lr"] == 0.25


def test_load_switches_amsgrad_layout():
    src, params = _trained(amsgrad=True)
    dst = numadam.Adam([p.copy() for p in params])
    dst.load_state_dict(src.state_dict())
    assert dst.param_groups[0]["amsgrad"] is True
    assert "max_exp_avg_sq" in dst.state[0]
    dst.step([np.ones((2, 3)), np.ones(4, np.float32)])
    assert dst.state[0]["step"] == 4


def test_empty_state_dict_resets_state():
    opt, params = _trained()
    fresh = numadam.Adam([p.copy() for p in params])
    opt.load_state_dict(fresh.state_dict())
    assert len(opt.state) == 0
    opt.step([np.ones((2, 3)), np.ones(4, np.float32)])
    assert opt.state[1]["step"] == 1
