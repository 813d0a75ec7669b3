"""Compressed optimizer state and bfloat16 parameters: the contract.

Every step of every registry configuration, in every storage format, is
checked bit for bit against an independent reference: the stored state
decoded with :mod:`numadam.formats.codec`, one step of a full-precision
float32 optimizer, the new state encoded again, and the new float32
parameters rounded to bfloat16 by ml_dtypes (nearest even) or by adding the
counter-based draw of :mod:`numadam.formats.bf16` (stochastic rounding).
"""

import copy
import pickle

import ml_dtypes
import numpy as np
import pytest
from numba import njit

import numadam
import numadam.formats
import optim_configs as oc
from helpers import assert_bits_equal, build
from numadam.formats import MIN_8BIT, bf16, codec, stochastic

BF16 = np.dtype(ml_dtypes.bfloat16)
# Two parameters big enough for 8-bit state and one small one, which keeps
# float32 state. The second's size is not a multiple of the 256-element
# block; it comes last in every 8-bit bucket of the registry's layouts (see
# test_attack_formats.py's test_8bit_state_of_a_parameter_after_a_partial_block).
SHAPES = [(16, 256), (36, 125), (3, 16)]
# State that can be negative uses the signed map (the design's list).
SIGNED = {"exp_avg", "momentum_buffer", "grad_avg"}
# (parameter dtype, stochastic rounding)
PARAMS = {"float32": (np.float32, False), "float32_sr": (np.float32, True),
          "bf16": (BF16, False), "bf16_sr": (BF16, True)}
SEED = 1234567


# ------------------------------------------------------------------ helpers
def params_of(dtype):
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, s).astype(np.float32).astype(dtype) for s in SHAPES]


def grads_of(name, step, params, scale=1.0):
    """Step ``step``'s gradients in group order (None where withheld)."""
    config = oc.CONFIGS[name]
    return [(scale * oc.gradient(oc.index(name), step, k, params[k].shape, np.float32))
            .astype(params[k].dtype) if oc.has_gradient(config, step, k) else None
            for k in oc.param_order(config)]


def perturb(opt, seed):
    """Random, not round, hyperparameters in every group of ``opt``."""
    rng = np.random.default_rng(seed)
    for group in opt.param_groups:
        group["lr"] *= rng.uniform(0.5, 2.0)
        if "betas" in group:
            group["betas"] = tuple(1 - (1 - b) * rng.uniform(0.5, 1.5) for b in group["betas"])
        for key in ("alpha", "momentum"):
            if group.get(key):
                group[key] = 1 - (1 - group[key]) * rng.uniform(0.5, 1.5)
        for key in ("weight_decay", "dampening", "lr_decay", "eps"):
            if group.get(key):
                group[key] *= rng.uniform(0.5, 1.5)


def make(name, variant, fmt, perturbed=True):
    dtype, sr = PARAMS[variant]
    opt, params = build(name, "float32", params=params_of(dtype), state_format=fmt,
                        stochastic_rounding=sr, seed=SEED)
    if perturbed:
        perturb(opt, oc.index(name))
    return opt, params


def decoded(state_dict):
    """``state_dict`` with every stored array decoded to float32 values."""
    state = {}
    for index, entry in state_dict["state"].items():
        out = {}
        for key, value in entry.items():
            if key.endswith("_absmax") or value is None:
                continue
            if key == "step":
                out[key] = value
            elif value.dtype == np.uint8:
                out[key] = codec.decode8(value, entry[key + "_absmax"], key in SIGNED)
            elif value.dtype == np.uint16:
                out[key] = codec.bf16_values(value)
            else:
                assert value.dtype == np.float32, (index, key, value.dtype)
                out[key] = value.copy()
        state[index] = out
    return {"state": state, "param_groups": state_dict["param_groups"]}


def encoded(entry, fmt, skey=None):
    """The stored arrays of a full-precision float32 state dict entry; with
    the parameter's stream key ``skey``, rounded stochastically (state row
    ``r`` drawing under ``state_key(skey, r)``)."""
    out = {}
    rows = [key for key in entry if key != "step"]
    for key, value in entry.items():
        if key == "step":
            out[key] = value
            continue
        rkey = None if skey is None else stochastic.state_key(np.uint64(skey), rows.index(key))
        if fmt == "bfloat16":
            out[key] = codec.bf16_bits(value, rkey)
        elif fmt == "8bit" and value.size >= MIN_8BIT:
            out[key], out[key + "_absmax"] = codec.encode8(value, key in SIGNED, rkey)
        else:
            out[key] = value
    return out


@njit(cache=False)
def _noise(key, step, out):
    skey = bf16.stream_key(key, step)
    for i in range(out.size):
        out[i] = bf16.noise16(skey, i)


def stochastic_bits(values, seed, index, step):
    """bfloat16 bits of finite float32 ``values``: the draw of parameter
    ``index`` at ``step`` added to the dropped half, then truncated."""
    noise = np.empty(values.size, np.uint64)
    _noise(np.uint64(bf16.param_key(seed, index)), np.int64(step), noise)
    bits = values.reshape(-1).view(np.uint32).astype(np.uint64) + noise
    return (bits >> np.uint64(16)).astype(np.uint16).reshape(values.shape)


def reference_step(name, opt, params, grads, counts, sr):
    """The parameters and state dict entries one step of ``opt`` must give:
    a full float32 optimizer stepped from the decoded state, re-encoded.
    ``counts``: per group-order index, the steps that parameter has taken
    (this one included): the draw's step where ``sr`` (stochastic rounding
    under :data:`SEED`)."""
    fmt = opt.state_format
    before = opt.state_dict()
    assert before.get("state_format", "full") == fmt
    copies = [p.astype(np.float32) for p in params]
    # Stochastic rounding leaves float32 parameters alone; it only makes
    # SGD's state dict carry the step counts.
    ref, _ = build(name, "float32", params=copies, stochastic_rounding=sr)
    ref.load_state_dict(decoded(before))
    ref.step([None if g is None else g.astype(np.float32) for g in grads])
    order = oc.param_order(oc.CONFIGS[name])
    expected = []
    for position, k in enumerate(order):
        if params[k].dtype == np.float32:
            expected.append(copies[k])
        elif sr and grads[position] is not None:
            expected.append(stochastic_bits(copies[k], SEED, position,
                                            counts[position]).view(BF16))
        else:
            expected.append(copies[k].astype(BF16))
    state = {}
    for i, entry in ref.state_dict()["state"].items():
        if not (sr and fmt != "full"):
            state[i] = encoded(entry, fmt)
        elif grads[i] is None:
            state[i] = before["state"][i]       # not stepped: the stored arrays as they were
        else:
            key = bf16.stream_key(np.uint64(bf16.param_key(SEED, i)), counts[i])
            state[i] = encoded(entry, fmt, key)
    return [(order[i], e) for i, e in enumerate(expected)], state


def assert_state_equal(actual, expected, what=""):
    assert actual.keys() == expected.keys(), (what, actual.keys(), expected.keys())
    for index, entry in expected.items():
        got = actual[index]
        assert got.keys() == entry.keys(), (what, index, got.keys(), entry.keys())
        for key, value in entry.items():
            if key == "step":
                assert got[key] == value, (what, index)
            else:
                assert_bits_equal(got[key], value, f"{what} state[{index}][{key!r}]")


def snapshot(opt, params):
    """Copies of every parameter's and stored state array's bits."""
    return [p.copy() for p in params], opt.state_dict()


def assert_same(a, b, what=""):
    (pa, sa), (pb, sb) = a, b
    for k, (x, y) in enumerate(zip(pa, pb)):
        assert_bits_equal(x, y, f"{what} param {k}")
    assert sa.get("state_format") == sb.get("state_format")
    assert sa["param_groups"] == sb["param_groups"]
    assert_state_equal(sa["state"], sb["state"], what)


def run(name, opt, params, first, last):
    for step in range(first, last + 1):
        opt.step(grads_of(name, step, params))


# ------------------------------------------------------------ 1. exactness
# Full state of float32 parameters is the golden parity tests' subject.
EXACT = [(fmt, variant) for fmt in ("bfloat16", "8bit", "full") for variant in PARAMS
         if (fmt, variant) != ("full", "float32")]


@pytest.mark.parametrize("fmt, variant", EXACT)
@pytest.mark.parametrize("name", list(oc.CONFIGS))
def test_every_step_equals_the_decoded_full_precision_step(name, fmt, variant):
    opt, params = make(name, variant, fmt)
    order = oc.param_order(oc.CONFIGS[name])
    counts = [0] * len(order)
    for step in range(1, 5):
        if step == 3:               # a schedule's move: the lr-only fast path
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.7
        grads = grads_of(name, step, params)
        counts = [c + (g is not None) for c, g in zip(counts, grads)]
        expected_params, expected_state = reference_step(name, opt, params, grads, counts,
                                                         PARAMS[variant][1])
        opt.step(grads)
        for k, value in expected_params:
            assert_bits_equal(params[k], value, f"step {step} param {k}")
        assert_state_equal(opt.state_dict()["state"], expected_state, f"step {step}")


def test_the_reference_sees_8bit_state_really_quantised():
    """The exactness test's 8-bit cases run the codes, not float32 state:
    the big parameters' state dict arrays are uint8 with an absmax per block,
    the small one's float32."""
    opt, params = make("amsgrad", "bf16_sr", "8bit")
    run("amsgrad", opt, params, 1, 2)
    state = opt.state_dict()["state"]
    for index in (0, 1):
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert state[index][key].dtype == np.uint8
            assert state[index][key + "_absmax"].shape == (codec.nblocks(params[index].size),)
    assert state[2]["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in state[2]


# ------------------------------------------------- 2. thread independence
THREAD_CONFIGS = ["amsgrad_adamw_maximize", "sgd_nesterov_weight_decay",
                  "adagrad_groups_schedule_missing_grads", "rmsprop_centered_momentum_wd"]


def _run_with(settings, name, variant, fmt):
    saved = (numadam.config.threads, numadam.config.min_task, numadam.config.serial_below)
    try:
        (numadam.config.threads, numadam.config.min_task,
         numadam.config.serial_below) = settings
        opt, params = make(name, variant, fmt)
        run(name, opt, params, 1, 3)
        return snapshot(opt, params)
    finally:
        numadam.config.threads, numadam.config.min_task, numadam.config.serial_below = saved


@pytest.mark.parametrize("variant", ["float32", "bf16_sr"])
@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("name", THREAD_CONFIGS)
def test_bits_do_not_depend_on_threads_or_task_sizes(name, fmt, variant):
    serial = _run_with((1, 1 << 14, 1 << 30), name, variant, fmt)
    # min_task 700 and 1000: tasks end inside parameters (and inside blocks,
    # before the 8-bit split rounds them up to whole blocks).
    for settings in [(2, 700, 0), (2, 1000, 0), (1, 700, 0), (2, 1 << 14, 0)]:
        assert_same(_run_with(settings, name, variant, fmt), serial, str(settings))


# -------------------------------------------------------------- 3. resume
RESUME_CONFIGS = ["adam", "amsgrad", "sgd_plain", "sgd_momentum_dampening",
                  "adagrad_plain", "rmsprop_centered"]


def _resumed(name, variant, fmt, how, tmp_path):
    opt, params = make(name, variant, fmt)
    run(name, opt, params, 1, 3)
    if how == "state_dict":
        new, params2 = make(name, variant, fmt, perturbed=False)
        for p, q in zip(params2, params):
            p[...] = q
        new.load_state_dict(opt.state_dict())
    elif how == "checkpoint":
        opt.save(tmp_path / "ckpt.npz")
        new, params2 = make(name, variant, fmt, perturbed=False)
        for p, q in zip(params2, params):
            p[...] = q
        new.load(tmp_path / "ckpt.npz")
    elif how == "deepcopy":
        new, params2 = copy.deepcopy((opt, params))
    else:
        new, params2 = pickle.loads(pickle.dumps((opt, params)))
    run(name, new, params2, 4, 6)
    return snapshot(new, params2)


@pytest.mark.parametrize("how", ["state_dict", "checkpoint", "deepcopy", "pickle"])
@pytest.mark.parametrize("variant", ["float32", "bf16_sr"])
@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("name", RESUME_CONFIGS)
def test_a_resumed_run_equals_the_uninterrupted_one(name, fmt, variant, how, tmp_path):
    opt, params = make(name, variant, fmt)
    run(name, opt, params, 1, 6)
    assert_same(_resumed(name, variant, fmt, how, tmp_path), snapshot(opt, params), how)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_saves_step_counts_only_where_stochastic_rounding_draws_by_them(momentum):
    for sr in (False, True):
        p = np.ones(MIN_8BIT, BF16)
        opt = numadam.SGD([p], lr=0.1, momentum=momentum, stochastic_rounding=sr)
        opt.step([np.ones_like(p)])
        opt.step([np.ones_like(p)])
        entry = opt.state_dict()["state"].get(0, {})
        # Without stochastic rounding, torch's layout: SGD keeps no step.
        assert ("step" in entry) is sr and entry.get("step", 2) == 2


# -------------------------------------------------- 4. stochastic rounding
def _sgd_bf16(values, seed, lr=1.0, **kwargs):
    p = np.asarray(values, np.float32).astype(BF16)
    return numadam.SGD([p], lr=lr, stochastic_rounding=True, seed=seed, **kwargs), p


def test_stochastic_rounding_is_unbiased():
    # 1 + 0.3 ulp: rounds up with probability 0.3. 8192 elements x 16 seeds.
    ulp = 2.0 ** -7
    n, seeds = 8192, 16
    means = []
    for seed in range(seeds):
        opt, p = _sgd_bf16(np.ones(n), seed)
        opt.step([np.full(n, -0.3 * ulp, np.float32).astype(BF16)])
        means.append(p.astype(np.float64).mean())
    mean = float(np.mean(means))
    stderr = ulp * np.sqrt(0.3 * 0.7 / (n * seeds))
    assert abs(mean - (1 + 0.3 * ulp)) < 4 * stderr, (mean, stderr)
    # Rounding is not the identity: both neighbours occur.
    assert set(np.unique(p.astype(np.float32))) == {1.0, 1.0 + ulp}


def test_seeds_steps_and_parameters_draw_differently_and_a_seed_repeats():
    grad = np.full(4096, -0.5 * 2.0 ** -7, np.float32).astype(BF16)

    def bits(seed, step=0):
        """One step from the same values, as step ``step + 1``."""
        opt, p = _sgd_bf16(np.ones(4096), seed)
        q = np.ones(4096, np.float32).astype(BF16)
        opt.add_param_group({"params": [q]})
        if step:
            sd = opt.state_dict()
            sd["state"] = {0: {"step": step}, 1: {"step": step}}
            opt.load_state_dict(sd)
        opt.step([grad, grad])
        return p.view(np.uint16).copy(), q.view(np.uint16).copy()

    a, b = bits(7), bits(7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], bits(8)[0])
    assert not np.array_equal(a[0], a[1]), "two parameters drew the same bits"
    assert not np.array_equal(bits(7, step=1)[0], a[0])
    assert np.array_equal(bits(7, step=1)[0], bits(7, step=1)[0])
    assert not np.array_equal(bits(2 ** 63 - 1)[0], a[0])


def test_tiny_updates_accumulate_only_with_stochastic_rounding():
    # 0.05 ulp a step: round-to-nearest drops every one; stochastic rounding
    # moves the parameter by about 100 x 0.05 ulp = 5 ulp in expectation.
    ulp = 2.0 ** -7
    grad = np.full(4096, -0.05 * ulp, np.float32).astype(BF16)
    p_nearest = np.ones(4096, np.float32).astype(BF16)
    nearest = numadam.SGD([p_nearest], lr=1.0)
    sr, p_sr = _sgd_bf16(np.ones(4096), 3)
    for _ in range(100):
        nearest.step([grad])
        sr.step([grad])
    assert np.all(p_nearest.astype(np.float32) == 1.0)
    moved = p_sr.astype(np.float64).mean() - 1.0
    assert 4 * ulp < moved < 6 * ulp, moved / ulp


# -------------------------------------------------------------- 5. formats
@pytest.mark.parametrize("fmt, per_param", [("full", 8), ("bfloat16", 4), ("8bit", 2.1)])
def test_state_bytes_per_parameter(fmt, per_param):
    p = np.zeros(10 ** 6, np.float32)
    opt = numadam.Adam([p], lr=1e-3, state_format=fmt)
    assert opt.state_nbytes == 0
    opt.step([np.ones_like(p)])
    if fmt == "8bit":
        assert 2 < opt.state_nbytes / p.size <= per_param
    elif fmt == "bfloat16":
        # Rows of 1 MiB and more are padded apart (compressed_bucket.py).
        assert per_param <= opt.state_nbytes / p.size <= per_param * 1.01
    else:
        assert opt.state_nbytes == per_param * p.size
    assert opt.state_format == fmt


def test_8bit_keeps_float32_state_below_the_threshold():
    small = np.zeros(MIN_8BIT - 1, np.float32)
    big = np.zeros(MIN_8BIT, np.float32)
    opt = numadam.Adam([small, big], state_format="8bit")
    opt.step([np.ones_like(small), np.ones_like(big)])
    state = opt.state_dict()["state"]
    assert state[0]["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in state[0]
    assert state[1]["exp_avg"].dtype == np.uint8 and state[1]["exp_avg_absmax"].size == 16
    assert opt.state_nbytes == 2 * 4 * small.size + 2 * (big.size + 4 * 16)


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
def test_state_view_is_the_decoded_state_dict_and_writes_encode(fmt):
    opt, params = make("rmsprop_centered_momentum_wd", "bf16", fmt)
    run("rmsprop_centered_momentum_wd", opt, params, 1, 2)
    sd, dec = opt.state_dict(), decoded(opt.state_dict())
    for index, p in enumerate(params):
        view = opt.state[p]
        for key, value in dec["state"][index].items():
            if key != "step":
                assert_bits_equal(view[key], value, f"{index} {key}")
                # Compressed state has no float32 view to write through.
                compressed = sd["state"][index][key].dtype != np.float32
                assert view[key].flags.writeable is not compressed
    big = params[0]
    with pytest.raises(ValueError):
        opt.state[big]["square_avg"][0] = 1.0
    values = np.linspace(0, 3, big.size, dtype=np.float32).reshape(big.shape)
    opt.state[big]["square_avg"] = values
    stored = opt.state_dict()["state"][0]
    expected = encoded({"square_avg": values}, fmt)
    for key, value in expected.items():
        assert_bits_equal(stored[key], value, key)
    # The other parameters' state is untouched by the write.
    assert_bits_equal(opt.state_dict()["state"][1]["square_avg"], sd["state"][1]["square_avg"],
                      "untouched")


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
def test_beta2_0999_is_not_rounded_to_one(fmt):
    # A constant gradient: exp_avg_sq = (1 - 0.999**t) g**2. Were beta2 1.0,
    # it would stay 0 (and Adam divide by eps); were it bfloat16's 0.99609375,
    # it would reach 1 - 0.996**t: after 50 steps 0.18 against 0.049.
    p = np.zeros(MIN_8BIT, np.float32)
    opt = numadam.Adam([p], lr=1e-3, betas=(0.9, 0.999), state_format=fmt)
    for _ in range(50):
        opt.step([np.ones_like(p)])
    got = float(np.mean(opt.state[p]["exp_avg_sq"]))
    assert abs(got - (1 - 0.999 ** 50)) < 0.01 * (1 - 0.999 ** 50), got


def test_8bit_blocks_of_zeros_and_of_a_constant_decode_exactly():
    # A block of zeros has absmax 0 and decodes to zeros; a positive constant
    # block decodes exactly to its value (code 255 is the map's 1.0).
    opt = numadam.SGD([np.zeros(MIN_8BIT, np.float32)], momentum=0.5, state_format="8bit")
    p = opt.param_groups[0]["params"][0]
    g = np.zeros(MIN_8BIT, np.float32)
    g[256:512] = 0.75
    opt.step([g])
    buf = opt.state[p]["momentum_buffer"]
    assert np.all(buf[:256] == 0) and np.all(buf[256:512] == 0.75) and np.all(buf[512:] == 0)
    stored = opt.state_dict()["state"][0]
    assert np.all(stored["momentum_buffer"][256:512] == 255)
    assert list(stored["momentum_buffer_absmax"][:3]) == [0, 0.75, 0]


@pytest.mark.parametrize("src, dst", [("full", "bfloat16"), ("full", "8bit"),
                                      ("bfloat16", "8bit"), ("8bit", "bfloat16")])
def test_converted_state_dicts_hold_what_the_kernels_store(src, dst):
    """convert_state_dict encodes as the kernels do: the converted state
    loads, and the optimizer's state dict gives it back bit for bit."""
    opt, params = make("amsgrad", "float32", src)
    run("amsgrad", opt, params, 1, 3)
    converted = numadam.formats.convert_state_dict(opt.state_dict(), dst)
    expected = {i: encoded(e, dst) for i, e in decoded(opt.state_dict())["state"].items()}
    assert_state_equal(converted["state"], expected, "converted")
    other, _ = make("amsgrad", "float32", dst)
    other.load_state_dict(converted)
    assert_state_equal(other.state_dict()["state"], expected, "loaded")


def test_formats_is_reachable_from_the_package_without_importing_numba():
    import subprocess
    import sys
    code = ("import sys, numadam; f = numadam.formats; "
            "assert f.FORMATS == ('full', 'bfloat16', '8bit'); "
            "assert 'numba' not in sys.modules, 'numadam.formats imported numba'; "
            "assert callable(f.convert_state_dict)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
