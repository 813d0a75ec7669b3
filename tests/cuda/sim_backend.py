"""The CUDA backend under the simulator (run by tests/test_cuda_sim.py).

Run only with ``NUMBA_ENABLE_CUDASIM=1``: numba reads it at import. The
simulator runs the kernels as Python and each rule's element math as its
CPU-compiled ``element`` (see ``numadam/cuda/kernels.py``), so these tests
check the device plumbing (tables, addressing, state rows, launches, streams
of work, state on the device, checkpoints, adapters and their errors) bit for
bit against the CPU path, for every rule; the device's own arithmetic is
checked by ``scripts/gpu_check.py`` on a GPU.

RMSprop's reference on the CPU is its rule with the correctly rounded square
root (:func:`numadam.cuda.kernels.device_element`), which is the one CUDA
computes; the CPU class emulates MKL's AVX512 root instead, and the two
differ in the last bit for some elements (see
``test_rmsprop_on_the_device_takes_cudas_square_root``).
"""

import dataclasses

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numba import cuda  # noqa: E402
from numba.core import config as numba_config  # noqa: E402

import numadam  # noqa: E402
import numadam.cuda  # noqa: E402
import optim_configs as oc  # noqa: E402
from helpers import assert_bits_equal, build, step_grads  # noqa: E402
from internals import device_element  # noqa: E402

if not numba_config.ENABLE_CUDASIM:
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run through tests/test_cuda_sim.py)",
                allow_module_level=True)

STEPS = 8
# The simulator evaluates the finiteness check g - g in NumPy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")
CASES = [(name, dtype) for name in oc.CONFIGS for dtype in oc.DTYPES]
# One configuration of each rule with every state row it can have.
RULE_CASES = ["amsgrad_adamw_maximize", "sgd_nesterov_weight_decay", "sgd_plain",
              "adagrad_lr_decay_initial_accumulator_weight_decay",
              "rmsprop_centered_momentum_wd", "rmsprop_centered"]


@pytest.fixture(autouse=True)
def tiny_blocks():
    numadam.cuda.config.threads_per_block = 32   # several blocks for 96 elements
    yield
    numadam.cuda.config.threads_per_block = 256


def _to_device(grads):
    return [None if g is None else cuda.to_device(g) for g in grads]


class DeviceRootRMSprop(numadam.RMSprop):
    """RMSprop on the CPU with the square root CUDA computes (correctly rounded)."""

    rule = dataclasses.replace(numadam.RMSprop.rule, name="rmsprop_device_root",
                               element=device_element(numadam.RMSprop.rule))


def _reference(name, dtype, params=None):
    """Configuration ``name`` on the CPU, as the device computes it."""
    if oc.CONFIGS[name]["cls"] != "RMSprop":
        return build(name, dtype, params=params)
    if params is None:
        params = oc.initial_params(oc.index(name), dtype)
    groups = [dict(params=[params[k] for k in shapes], **over)
              for shapes, over in oc.layout(oc.CONFIGS[name])]
    return DeviceRootRMSprop(groups, **oc.CONFIGS[name]["kwargs"]), params


def _pair(name, dtype):
    """The same configuration on the CPU and on the (simulated) device."""
    cpu, host_params = _reference(name, dtype)
    device_params = [cuda.to_device(p) for p in host_params]
    dev, _ = build(name, dtype, params=device_params)
    return cpu, host_params, dev, device_params


def _run(opt, name, dtype, first, last, device):
    schedule = oc.CONFIGS[name].get("schedule", {})
    for step in range(first, last + 1):
        if step in schedule:
            for group, lr in zip(opt.param_groups, schedule[step]):
                group["lr"] = lr
        grads = step_grads(name, dtype, step)
        opt.step(_to_device(grads) if device else grads)


def _same(cpu_params, device_params, cpu, dev, what):
    for k, (a, b) in enumerate(zip(cpu_params, device_params)):
        assert_bits_equal(b.copy_to_host(), a, f"{what} param {k}")
    sa, sb = cpu.state_dict(), dev.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for index, entry in sa["state"].items():
        for key, value in entry.items():
            if key == "step":
                assert sb["state"][index]["step"] == value
            else:
                assert isinstance(sb["state"][index][key], np.ndarray)
                assert_bits_equal(sb["state"][index][key], value, f"{what} {index} {key}")


@pytest.mark.parametrize("name,dtype", CASES)
def test_every_config_matches_the_cpu_bit_for_bit(name, dtype):
    cpu, hp, dev, dp = _pair(name, dtype)
    _run(cpu, name, dtype, 1, STEPS, False)
    _run(dev, name, dtype, 1, STEPS, True)
    _same(hp, dp, cpu, dev, name)
    assert all(b.on_device for b in dev._buckets)


def test_owned_gradients_and_zero_grad():
    cpu, hp, dev, dp = _pair("adamw", "float32")
    for step in range(1, 4):
        grads = step_grads("adamw", "float32", step)
        for mine, g in zip(cpu.grads, grads):
            mine[...] = g
        for mine, g in zip(dev.grads, grads):
            mine.copy_to_device(g)
        cpu.step()
        dev.step()
    _same(hp, dp, cpu, dev, "owned grads")
    dev.zero_grad()
    assert all(not g.copy_to_host().any() for g in dev.grads)


def test_owned_gradients_are_aligned_views_of_one_buffer(monkeypatch):
    """opt.grads on the device: views into one buffer per bucket, laid out as
    the state (so 16-byte aligned for the vector path); zero_grad is one fill."""
    from internals import cuda_kernels as _cuda_kernels
    fills = _count_calls(monkeypatch, _cuda_kernels, "fill")
    vector = _count_calls(monkeypatch, _cuda_kernels, "_load_vec")
    _fresh_kernels(monkeypatch)
    sizes = [5, 7, 13]
    dev = numadam.Adam([cuda.to_device(np.ones(n, np.float32)) for n in sizes], lr=0.1)
    bucket = dev._buckets[0]
    base = bucket.grad_buffer  # none yet
    assert base is None
    grads = dev.grads
    base = bucket.grad_buffer._ary.ctypes.data
    offsets = [g._ary.ctypes.data - base for g in grads]
    assert offsets == [4 * int(o) for o in bucket.table[:, 2]] == [0, 32, 64]
    for g, n in zip(grads, sizes):
        g.copy_to_device(np.full(n, 0.5, np.float32))
    dev.step()
    assert len(vector) == 2 * (1 + 1 + 3)     # p and g of every full group of four
    before = len(fills)
    dev.zero_grad()
    assert len(fills) == before + 1
    assert not any(g.copy_to_host().any() for g in grads)


@pytest.mark.parametrize("name", RULE_CASES)
@pytest.mark.parametrize("direction", ["gpu_to_cpu", "cpu_to_gpu"])
def test_checkpoint_resumes_bit_for_bit_across_devices(direction, name, tmp_path):
    dtype = "float64"
    cpu, hp, dev, dp = _pair(name, dtype)
    _run(cpu, name, dtype, 1, 4, False)
    _run(dev, name, dtype, 1, 4, True)
    source, source_params = (dev, dp) if direction == "gpu_to_cpu" else (cpu, hp)
    path = tmp_path / "ckpt.npz"
    source.save(path)
    # Resume on the other side from the same parameters.
    if direction == "gpu_to_cpu":
        params = [p.copy_to_host() for p in dp]
        resumed, params = _reference(name, dtype, params=params)
    else:
        params = [cuda.to_device(p) for p in hp]
        resumed, _ = build(name, dtype, params=params)
    resumed.load(path)
    if direction == "cpu_to_gpu":
        # (plain SGD's checkpoint holds no state array: its state comes at the step)
        assert all(isinstance(b.state, type(dp[0])) for b in resumed._buckets
                   if b.state is not None or name != "sgd_plain")
    _run(source, name, dtype, 5, 7, direction == "gpu_to_cpu")
    _run(resumed, name, dtype, 5, 7, direction == "cpu_to_gpu")
    for k, (a, b) in enumerate(zip(source_params, params)):
        a = a if isinstance(a, np.ndarray) else a.copy_to_host()
        b = b if isinstance(b, np.ndarray) else b.copy_to_host()
        assert_bits_equal(b, a, f"{direction} param {k}")


@pytest.mark.parametrize("name", RULE_CASES)
def test_state_dicts_cross_devices_for_every_rule(name):
    """A device optimizer's state dict loads into a CPU one and the other way
    round, with every state array of the rule; both then continue as the
    optimizer they came from."""
    dtype = "float32"
    cpu, hp, dev, dp = _pair(name, dtype)
    _run(cpu, name, dtype, 1, 3, False)
    _run(dev, name, dtype, 1, 3, True)
    _same(hp, dp, cpu, dev, name)
    keys = {key for entry in dev.state_dict()["state"].values() for key in entry}
    rows = {row for bucket in dev._buckets for row in bucket.rows}
    assert rows <= keys and rows == {row for b in cpu._buckets for row in b.rows}
    cpu2, hp2 = _reference(name, dtype, params=[p.copy() for p in hp])
    cpu2.load_state_dict(dev.state_dict())
    dp2 = [cuda.to_device(p) for p in hp]
    dev2, _ = build(name, dtype, params=dp2)
    dev2.load_state_dict(cpu.state_dict())
    for opt, device in ((cpu, False), (cpu2, False), (dev, True), (dev2, True)):
        _run(opt, name, dtype, 4, 6, device)
    _same(hp, dp2, cpu, dev2, f"{name} cpu to gpu")
    _same(hp2, dp, cpu2, dev, f"{name} gpu to cpu")


def test_rmsprop_on_the_device_takes_cudas_square_root():
    """CUDA's sqrt is correctly rounded; the CPU class emulates MKL's AVX512
    root, which differs in the last bit for some inputs. The simulated kernel
    runs the element with the correctly rounded root and matches the CPU
    rule built with it, bit for bit; on an AVX512 host it differs from the
    CPU class somewhere (the difference the README states)."""
    from internals import rules_rmsprop as rmsprop
    assert device_element(numadam.Adam.rule) is numadam.Adam.rule.element
    assert device_element(rmsprop.RULE) is not rmsprop.RULE.element
    rng = np.random.default_rng(11)
    kwargs = dict(lr=0.003, alpha=0.9, momentum=0.5, centered=True)
    for dtype in oc.DTYPES:
        host = [rng.standard_normal(1024).astype(dtype)]
        device = [cuda.to_device(host[0])]
        mkl = [host[0].copy()]
        opts = (DeviceRootRMSprop(host, **kwargs), numadam.RMSprop(device, **kwargs),
                numadam.RMSprop(mkl, **kwargs))
        for _ in range(3):
            g = rng.standard_normal(1024).astype(dtype)
            opts[0].step([g])
            opts[1].step([cuda.to_device(g)])
            opts[2].step([g])
        _same(host, device, opts[0], opts[1], f"rmsprop {dtype}")
        differ = not np.array_equal(mkl[0].view(np.uint8), host[0].view(np.uint8))
        assert differ == rmsprop._AVX512, dtype


def test_adagrad_state_is_on_the_device_from_construction():
    """torch creates Adagrad's ``sum`` in the constructor, filled with
    initial_accumulator_value: so does the device optimizer, on the device."""
    host = [np.linspace(-1, 1, 9).astype(np.float32), np.ones(3, np.float32)]
    device = [cuda.to_device(h) for h in host]
    cpu = numadam.Adagrad(host, lr=0.1, initial_accumulator_value=0.37)
    dev = numadam.Adagrad(device, lr=0.1, initial_accumulator_value=0.37)
    assert len(dev.state) == 2 and dev._buckets[0].rows == ("sum",)
    value = dev.state[device[1]]["sum"]
    assert not isinstance(value, np.ndarray)
    assert_bits_equal(value.copy_to_host(), np.full(3, 0.37, np.float32), "sum")
    _same(host, device, cpu, dev, "adagrad at construction")
    g = [np.full(9, 0.5, np.float32), np.full(3, -2.0, np.float32)]
    cpu.step(g)
    dev.step(_to_device(g))
    _same(host, device, cpu, dev, "adagrad after a step")


def test_sgd_without_momentum_has_no_state_rows_on_the_device():
    """Plain SGD keeps only the step count, as torch; its device state has no
    rows and the kernel touches none."""
    host = [np.linspace(-1, 1, 13)]
    device = [cuda.to_device(host[0])]
    cpu, dev = numadam.SGD(host, lr=0.1), numadam.SGD(device, lr=0.1)
    for step in range(3):
        g = [np.cos(np.arange(13.0) + step)]
        cpu.step(g)
        dev.step(_to_device(g))
    bucket = dev._buckets[0]
    assert bucket.rows == () and bucket.state.shape == (0, bucket.total)
    assert dev.state_dict()["state"] == cpu.state_dict()["state"]
    _same(host, device, cpu, dev, "plain sgd")


def test_state_views_live_on_the_device_and_can_be_written():
    x = cuda.to_device(np.linspace(-1, 1, 10).astype(np.float32))
    opt = numadam.Adam([x], lr=0.1)
    opt.step([cuda.to_device(np.ones(10, np.float32))])
    state = opt.state[x]
    assert state["step"] == 1
    assert np.allclose(state["exp_avg"].copy_to_host(), 0.1)
    state["exp_avg"] = np.full(10, 2.0, np.float32)
    assert np.all(opt.state_dict()["state"][0]["exp_avg"] == 2.0)
    # Any rule's state row, here RMSprop's third one.
    opt = numadam.RMSprop([x], momentum=0.5, centered=True)
    opt.step([cuda.to_device(np.ones(10, np.float32))])
    assert list(opt.state[x]) == ["step", "square_avg", "momentum_buffer", "grad_avg"]
    opt.state[x]["grad_avg"] = np.full(10, 3.0, np.float32)
    assert np.all(opt.state_dict()["state"][0]["grad_avg"] == 3.0)
    assert np.all(opt.state_dict()["state"][0]["momentum_buffer"] != 3.0)


def test_nonfinite_gradients_change_nothing():
    x = cuda.to_device(np.ones(40, np.float32))
    opt = numadam.Adam([x], check_finite="raise")
    opt.step([cuda.to_device(np.ones(40, np.float32))])
    before = (x.copy_to_host(), opt.state_dict())
    bad = np.ones(40, np.float32)
    bad[33] = np.inf
    with pytest.raises(FloatingPointError, match="parameter 0"):
        opt.step([cuda.to_device(bad)])
    assert_bits_equal(x.copy_to_host(), before[0], "param")
    assert opt.state_dict()["state"][0]["step"] == 1
    opt.check_finite = "skip"
    opt.step([cuda.to_device(bad)])
    assert opt.skipped_steps == 1


def test_mixing_host_and_device_in_a_group_is_an_error():
    with pytest.raises(TypeError, match=r"\['params'\]\[1\] is a NumPy \(host\) array"):
        numadam.Adam([cuda.to_device(np.zeros(3)), np.zeros(3)])
    # Host and device arrays in separate groups are fine.
    numadam.Adam([{"params": [np.zeros(3)]}, {"params": [cuda.to_device(np.zeros(3))]}])


def test_bad_device_gradients_are_errors_before_anything_changes():
    x = cuda.to_device(np.ones(6, np.float32))
    opt = numadam.Adam([x])
    with pytest.raises(TypeError, match="host"):
        opt.step([np.ones(6, np.float32)])
    with pytest.raises(ValueError, match="shape"):
        opt.step([cuda.to_device(np.ones(5, np.float32))])
    with pytest.raises(ValueError, match="dtype"):
        opt.step([cuda.to_device(np.ones(6, np.float64))])
    assert 0 not in opt.state
    assert_bits_equal(x.copy_to_host(), np.ones(6, np.float32), "untouched")


def test_non_contiguous_device_parameter_is_rejected():
    x = cuda.to_device(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        numadam.Adam([x[:, ::2]])


def test_flat_parameters_are_views_of_one_buffer():
    flat = numadam.cuda.flat_parameters([(3, 4), 5, (2, 2)], np.float64, fill=0.5)
    assert [p.shape for p in flat.params] == [(3, 4), (5,), (2, 2)]
    base = flat.buffer._ary.ctypes.data
    # Each view starts on a 16-byte boundary; the padding is zero, not ``fill``.
    assert [p._ary.ctypes.data - base for p in flat.params] == [0, 96, 144]
    assert flat.buffer.copy_to_host()[17] == 0
    grads = numadam.cuda.flat_parameters([(3, 4), 5, (2, 2)], np.float64)
    grads.buffer.copy_to_device(np.linspace(-1, 1, 22))
    host = [np.full(s, 0.5) for s in [(3, 4), (5,), (2, 2)]]
    cpu, dev = numadam.Adam(host, lr=0.1), numadam.Adam(flat.params, lr=0.1)
    for _ in range(3):
        cpu.step([g.copy_to_host() for g in grads.params])
        dev.step(grads.params)
    assert len(dev._buckets) == 1
    for a, b in zip(host, flat.params):
        assert_bits_equal(b.copy_to_host(), a, "flat")


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counting(*args):
        calls.append(None)    # a count: holding the arguments would keep them alive
        return original(*args)

    monkeypatch.setattr(module, name, counting)
    return calls


def _fresh_kernels(monkeypatch):
    """Kernels built from now on (until the test ends) see the module's
    functions as patched: each rule's are built with a copy of its globals."""
    import functools

    from internals import cuda_kernels as _cuda_kernels
    monkeypatch.setattr(_cuda_kernels, "kernels",
                        functools.lru_cache(maxsize=None)(_cuda_kernels.kernels.__wrapped__))


ODD_SIZES = [1, 5, 7, 13, 64, 11]


@pytest.mark.parametrize("dtype", oc.DTYPES)
def test_odd_sizes_and_unaligned_views_match_the_cpu(dtype, monkeypatch):
    """Partial vector groups, padding between parameters, and arrays that are
    not 16-byte aligned (a view one element in) take the element path; the
    rest the 16-byte path; every bit matches the CPU either way."""
    from internals import cuda_kernels as _cuda_kernels
    vector = _count_calls(monkeypatch, _cuda_kernels, "_load_vec")
    element = _count_calls(monkeypatch, _cuda_kernels, "_load")
    _fresh_kernels(monkeypatch)
    rng = np.random.default_rng(3)
    host = [rng.standard_normal(n).astype(dtype) for n in ODD_SIZES]
    base = cuda.to_device(np.concatenate([[0.0], host[-1]]).astype(dtype))
    device = [cuda.to_device(h) for h in host[:-1]] + [base[1:]]   # the last one is unaligned
    cpu = numadam.AdamW(host, lr=0.01, weight_decay=0.1, amsgrad=True)
    dev = numadam.AdamW(device, lr=0.01, weight_decay=0.1, amsgrad=True)
    bucket = dev._buckets[0]
    assert bucket.table[:, 2].tolist() == [0, 4, 12, 20, 36, 100] and bucket.total == 112
    for _ in range(4):
        grads = [rng.standard_normal(n).astype(dtype) for n in ODD_SIZES]
        cpu.step(grads)
        dev.step(_to_device(grads))
    _same(host, device, cpu, dev, "odd sizes")
    # Per step: 1+1+3+16 groups of four are vector (p and g each), the rest elements.
    assert len(vector) == 4 * 2 * (1 + 1 + 3 + 16)
    assert len(element) == 4 * 2 * (1 + 1 + 3 + 1 + 11)


def _random_rule(rng):
    """A random optimizer class and random hyperparameters for it (every flag,
    every state row; values that are not round numbers)."""
    def maybe(value, p=0.5):
        return float(value) if rng.random() < p else 0.0

    lr, maximize = float(rng.uniform(1e-3, 0.1)), bool(rng.random() < 0.3)
    cls = [numadam.Adam, numadam.AdamW, numadam.SGD, numadam.Adagrad,
           numadam.RMSprop][rng.integers(0, 5)]
    if cls in (numadam.Adam, numadam.AdamW):
        kwargs = dict(betas=(float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.9, 0.9999))),
                      eps=float(rng.uniform(1e-9, 1e-6)), amsgrad=bool(rng.random() < 0.5),
                      weight_decay=maybe(rng.uniform(0, 0.1)))
    elif cls is numadam.SGD:
        momentum = maybe(rng.uniform(0.1, 0.95), 0.7)
        nesterov = momentum > 0 and rng.random() < 0.5    # torch: nesterov needs dampening 0
        kwargs = dict(momentum=momentum, nesterov=bool(nesterov),
                      dampening=0.0 if nesterov else maybe(rng.uniform(0, 0.5)),
                      weight_decay=maybe(rng.uniform(0, 0.1)))
    elif cls is numadam.Adagrad:
        kwargs = dict(lr_decay=maybe(rng.uniform(0, 0.05)), weight_decay=maybe(rng.uniform(0, 0.1)),
                      initial_accumulator_value=maybe(rng.uniform(0, 0.5)),
                      eps=float(rng.uniform(1e-11, 1e-6)))
    else:
        kwargs = dict(alpha=float(rng.uniform(0.8, 0.999)), eps=float(rng.uniform(1e-9, 1e-6)),
                      weight_decay=maybe(rng.uniform(0, 0.1)),
                      momentum=maybe(rng.uniform(0.1, 0.95)), centered=bool(rng.random() < 0.5))
    return cls, dict(lr=lr, maximize=maximize, **kwargs)


@pytest.mark.parametrize("seed", range(24))
def test_random_layouts_match_the_cpu(seed):
    """Random shapes (empty and 0-d included), dtypes, offsets into a buffer
    (aligned or not), rules, hyperparameters and missing gradients: every bit
    of parameters and state equals the CPU's."""
    rng = np.random.default_rng(1000 + seed)
    dtype = rng.choice(oc.DTYPES)
    shapes = [() if rng.random() < 0.1 else tuple(rng.integers(0, 9, rng.integers(1, 3)))
              for _ in range(rng.integers(1, 7))]
    host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    device = []
    for h in host:
        shift = int(rng.integers(0, 4))             # 0: aligned, else an element path
        buffer = cuda.to_device(np.concatenate([np.zeros(shift, dtype), h.reshape(-1)]))
        device.append(buffer[shift:].reshape(h.shape))
    cls, kwargs = _random_rule(rng)
    reference = DeviceRootRMSprop if cls is numadam.RMSprop else cls
    cpu, dev = reference(host, **kwargs), cls(device, **kwargs)
    for _ in range(5):
        grads = [None if rng.random() < 0.2 else rng.standard_normal(s).astype(dtype)
                 for s in shapes]
        cpu.step(grads)
        dev.step(_to_device(grads))
    _same(host, device, cpu, dev, f"seed {seed}")


def test_state_dicts_move_between_padded_and_packed_layouts():
    """The device pads each parameter's state to a multiple of four; state
    dicts carry none of it, in either direction."""
    rng = np.random.default_rng(4)
    host = [rng.standard_normal(n) for n in ODD_SIZES]
    grads = [[rng.standard_normal(n) for n in ODD_SIZES] for _ in range(5)]
    device = [cuda.to_device(h) for h in host]
    cpu, dev = numadam.Adam(host, lr=0.02), numadam.Adam(device, lr=0.02)
    for g in grads[:2]:
        cpu.step(g)
        dev.step(_to_device(g))
    cpu2 = numadam.Adam([h.copy() for h in host], lr=0.02)
    cpu2.load_state_dict(dev.state_dict())
    dev2 = numadam.Adam([cuda.to_device(h) for h in host], lr=0.02)
    dev2.load_state_dict(cpu.state_dict())
    for g in grads[2:]:
        for opt in (cpu, cpu2):
            opt.step(g)
        for opt in (dev, dev2):
            opt.step(_to_device(g))
    for opt in (cpu2, dev2):
        for a, b in zip(cpu.state_dict()["state"].values(), opt.state_dict()["state"].values()):
            assert a["step"] == b["step"] == 5
            for key in ("exp_avg", "exp_avg_sq"):
                assert_bits_equal(b[key], a[key], key)


def test_the_device_table_follows_gradient_addresses():
    """The table is uploaded only when an address changes; alternating two
    gradient buffers, dropping one and switching to opt.grads must all reach
    the kernel."""
    rng = np.random.default_rng(5)
    host = [rng.standard_normal(n).astype(np.float32) for n in (6, 9)]
    device = [cuda.to_device(h) for h in host]
    cpu, dev = numadam.Adam(host, lr=0.1), numadam.Adam(device, lr=0.1)
    a = [rng.standard_normal(n).astype(np.float32) for n in (6, 9)]
    b = [rng.standard_normal(n).astype(np.float32) for n in (6, 9)]
    da, db = _to_device(a), _to_device(b)
    bucket = dev._buckets[0]
    schedule = [(a, da), (a, da), (b, db), (a, da), ([None, b[1]], [None, db[1]]),
                (b, db), ("owned", "owned"), (a, da)]
    uploads = []
    for host_grads, dev_grads in schedule:
        if host_grads == "owned":
            for mine, g in zip(dev.grads, b):
                mine.copy_to_device(g)
            host_grads, dev_grads = b, None
        dirty = bucket._table_dirty or bucket._grad_column != (
            [0 if g is None else g._ary.ctypes.data for g in dev_grads] if dev_grads else None)
        uploads.append(dirty)
        cpu.step(host_grads)
        dev.step(dev_grads)
        assert not bucket._table_dirty
    assert uploads == [True, False, True, True, True, True, True, True]
    _same(host, device, cpu, dev, "addresses")


def test_a_gradient_seen_at_the_last_step_is_not_validated_again(monkeypatch, one_device):
    """CuPy and Numba arrays cannot change their memory, so the same object
    with the same shape is taken as validated; anything else is checked."""
    import gc
    import weakref

    from internals import cuda_bucket as _cuda_bucket
    checked = _count_calls(monkeypatch, _cuda_bucket, "gradient_info")
    host = [np.ones(6), np.ones(3)]
    cpu = numadam.Adam([h.copy() for h in host], lr=0.1)
    dev = numadam.Adam([cuda.to_device(h) for h in host], lr=0.1)
    g = [cuda.to_device(np.arange(6.0)), cuda.to_device(np.arange(3.0))]
    for _ in range(3):
        dev.step(g)
        cpu.step([x.copy_to_host() for x in g])
    assert len(checked) == 2                      # once each, at the first step
    g[1] = cuda.to_device(np.full(3, 2.0))        # a new object is checked
    dev.step(g)
    cpu.step([x.copy_to_host() for x in g])
    assert len(checked) == 3
    _same(cpu._buckets[0].params, dev._buckets[0].params, cpu, dev, "cached gradients")
    with pytest.raises(ValueError, match="shape"):  # and a wrong one refused, as always
        dev.step([g[0], cuda.to_device(np.ones(4))])
    g[0]._ary.shape = (2, 3)      # as CuPy's ``a.shape = ...`` reshapes in place
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        dev.step(g)
    g[0]._ary.shape = (6,)
    # The optimizer holds no reference that keeps a gradient alive.
    ref = weakref.ref(g[0])
    del g
    gc.collect()
    assert ref() is None
    # Objects whose memory can change behind them are checked at every step.
    raw = np.ones(6)
    other = numadam.Adam([InterfaceOnly(np.ones(6))])
    before = len(checked)
    for _ in range(2):
        other.step([InterfaceOnly(raw, readonly=True)])
    assert len(checked) == before + 2


def test_the_stream_of_an_array(monkeypatch):
    """Version 3 reports a stream; torch (version 2) means torch's current stream."""
    import types

    from internals import interface_stream

    class Tensor:
        device = types.SimpleNamespace(index=0)

    Tensor.__module__ = "torch"
    current = {"handle": 0}
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
        current_stream=lambda device: types.SimpleNamespace(cuda_stream=current["handle"])))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert interface_stream(object(), {"version": 3, "stream": 77}) == 77
    assert interface_stream(object(), {"version": 3}) is None
    assert interface_stream(object(), {"version": 2}) is None
    assert interface_stream(Tensor(), {"version": 2}) is None      # torch's default stream
    current["handle"] = 0x5000
    assert interface_stream(Tensor(), {"version": 2}) == 0x5000
    # torch's raw accessor, where it has one, is asked instead (with the ordinal).
    fake_torch._C = types.SimpleNamespace(_cuda_getCurrentRawStream=lambda i: 0x6000 + i)
    assert interface_stream(Tensor(), {"version": 2}) == 0x6000


@pytest.fixture
def driver_launch_on_the_simulator(monkeypatch):
    """The driver launch path (opted into: Numba's launcher is the default),
    with the two libcuda calls replaced: a launch decodes the argument buffer
    through its pointers, as the driver would, and runs the kernel on what it
    finds; an upload copies host memory."""
    import ctypes

    from internals import cuda_bucket as _cuda_bucket
    from internals import cuda_kernels as _cuda_kernels
    from internals import cuda_launch as _cuda_launch
    from internals import device_address

    record = {"launches": 0, "uploads": 0}

    class Kernel:
        def __init__(self, rule, dtype):
            self.signature = _cuda_kernels.step_signature(rule, dtype)
            self.step = _cuda_kernels.kernels(rule).step

        def handles(self, device):
            return 0, 0

    class Recording(_cuda_launch.LaunchArgs):
        def upload(self, address, host_array, stream_handle):
            record["uploads"] += 1
            ctypes.memmove(address, host_array.ctypes.data, host_array.nbytes)

        def launch(self, blocks, threads, stream_handle):
            record["launches"] += 1
            known = {device_address(a): a for b in record["buckets"]
                     for a in (b._table_d, b._scal_d, b.state) if a is not None}
            pointers = iter(self.params)
            args = []
            for ty in self.driver_kernel.signature:
                values = [kind.from_address(next(pointers)).value
                          for kind in _cuda_launch.ctypes_fields(ty)]
                if isinstance(ty, nb_types.Array):
                    array = known[values[4]]
                    assert values[2:4] == [array.size, array.dtype.itemsize]
                    assert tuple(values[5:]) == tuple(array.shape) + tuple(array.strides)
                    args.append(array)
                elif isinstance(ty, nb_types.BaseTuple):
                    args.append(tuple(np.array(values, str(ty.dtype))))
                else:
                    args.append(values[0])
            args = _cuda_kernels.StepArgs(*args)
            assert stream_handle == 0
            assert blocks * threads * _cuda_kernels.VEC >= args.state.shape[1]
            _cuda_kernels.launch_step(self.driver_kernel.step, args, cuda.default_stream(),
                                      threads)

    monkeypatch.setattr(_cuda_kernels, "SIMULATED", False)
    monkeypatch.setattr(_cuda_bucket, "_DEFAULT_HANDLE", [0])
    monkeypatch.setattr(_cuda_bucket, "_driver_kernel", Kernel)
    monkeypatch.setattr(_cuda_launch, "LaunchArgs", Recording)
    monkeypatch.setattr(_cuda_launch, "_driver", lambda: None)
    monkeypatch.setattr(numadam.cuda.config, "launcher", "driver")
    return record


nb_types = __import__("numba").types


@pytest.mark.parametrize("name,dtype", CASES)
def test_the_driver_launch_passes_the_arguments_numba_would(name, dtype,
                                                            driver_launch_on_the_simulator):
    """Everything of the driver path but libcuda: the argument buffer, read
    back through its pointers, runs the kernel to the CPU's bits; the table is
    uploaded at the first step (and when an address changes), the
    per-parameter scalars when steps differ."""
    record = driver_launch_on_the_simulator
    cpu, hp, dev, dp = _pair(name, dtype)
    record["buckets"] = dev._buckets
    _run(cpu, name, dtype, 1, STEPS, False)
    _run(dev, name, dtype, 1, STEPS, True)
    _same(hp, dp, cpu, dev, name)
    # One launch a step for each bucket that has a gradient at that step.
    expected = sum(any(grads[i] is not None for i in bucket.indices)
                   for grads in (step_grads(name, dtype, s) for s in range(1, STEPS + 1))
                   for bucket in dev._buckets)
    assert expected >= STEPS
    assert record["launches"] == expected
    # At step 8 of the missing-gradient config, parameter 1 is a step behind.
    assert record["uploads"] >= len(dev._buckets) + ("missing" in name)


def _mixed_problem():
    """float32 and float64 parameters in one group: two buckets."""
    host = [np.linspace(-1, 1, 10, dtype=np.float32), np.linspace(0, 2, 7)]
    grads = [np.full(p.shape, 0.25, p.dtype) for p in host]
    return host, grads


@pytest.mark.parametrize("launcher", ["driver", "numba"])
def test_a_failed_launch_takes_its_step_back(launcher, driver_launch_on_the_simulator,
                                             monkeypatch):
    """A launch the driver refuses leaves the step counts (and everything
    else) as they were, so that the retry is the step it should have been."""
    from internals import cuda_kernels as _cuda_kernels
    from internals import cuda_launch as _cuda_launch
    if launcher == "numba":
        monkeypatch.setattr(numadam.cuda.config, "launcher", "numba")
        monkeypatch.setattr(_cuda_kernels, "SIMULATED", True)
    failures = []
    real_launch, real_step = _cuda_launch.LaunchArgs.launch, _cuda_kernels.launch_step

    def fail_once(real):
        def launch(*args):
            if failures:
                raise failures.pop()
            return real(*args)
        return launch

    monkeypatch.setattr(_cuda_launch.LaunchArgs, "launch", fail_once(real_launch))
    monkeypatch.setattr(_cuda_kernels, "launch_step", fail_once(real_step))
    host, grads = _mixed_problem()
    cpu = numadam.Adam([p.copy() for p in host], lr=0.1)
    params = [cuda.to_device(p) for p in host]
    dev = numadam.Adam(params, lr=0.1)
    driver_launch_on_the_simulator["buckets"] = dev._buckets
    cpu.step(grads)
    dev.step(_to_device(grads))
    failures.append(RuntimeError("cuLaunchKernel failed: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"))
    with pytest.raises(RuntimeError, match="OUT_OF_RESOURCES"):
        dev.step(_to_device(grads))       # the first bucket's launch fails
    assert [dev.state[p]["step"] for p in params] == [1, 1]
    for _ in range(3):
        cpu.step(grads)
        dev.step(_to_device(grads))
    _same([p for group in cpu.param_groups for p in group["params"]], params, cpu, dev,
          launcher)


def test_a_kernel_that_cannot_be_made_changes_no_bucket(driver_launch_on_the_simulator,
                                                        monkeypatch):
    """Kernels are compiled and launches built for every bucket before any
    bucket steps: the float64 kernel failing must not leave the float32
    parameters a step ahead."""
    from internals import cuda_bucket as _cuda_bucket
    make = _cuda_bucket._driver_kernel

    def float32_only(rule, dtype):
        if dtype == np.float64:
            raise RuntimeError("no float64 kernel")
        return make(rule, dtype)

    monkeypatch.setattr(_cuda_bucket, "_driver_kernel", float32_only)
    host, grads = _mixed_problem()
    params = [cuda.to_device(p) for p in host]
    dev = numadam.Adam(params, lr=0.1)
    driver_launch_on_the_simulator["buckets"] = dev._buckets
    with pytest.raises(RuntimeError, match="no float64 kernel"):
        dev.step(_to_device(grads))
    for p, h in zip(params, host):
        assert_bits_equal(p.copy_to_host(), h, "untouched")
    assert len(dev.state) == 0 and all(b.state is None for b in dev._buckets)
    assert driver_launch_on_the_simulator["launches"] == 0


class CompileRecorder:
    """A step kernel whose ``compile`` (which the simulator's kernels lack)
    calls ``on_compile``; launches go to the simulated kernel ``real``."""

    def __init__(self, real, on_compile):
        self.real = real
        self.compile = on_compile

    def __getitem__(self, launch_config):
        return self.real[launch_config]


def _replace_step_kernel(monkeypatch, on_compile):
    """Buckets made from now on get a :class:`CompileRecorder` step kernel."""
    from internals import cuda_kernels as _cuda_kernels
    real = _cuda_kernels.kernels
    monkeypatch.setattr(_cuda_kernels, "kernels", lambda rule: real(rule)._replace(
        step=CompileRecorder(real(rule).step, on_compile)))


def test_numbas_launcher_compiles_every_bucket_before_any_steps(
        driver_launch_on_the_simulator, monkeypatch):
    """With launcher = "numba" the kernel is compiled for each dtype (once a
    process) before any bucket steps; a failing compile changes nothing."""
    from internals import cuda_bucket as _cuda_bucket
    from internals import cuda_kernels as _cuda_kernels
    compiled = []

    def compile(signature):
        if signature[2].dtype == nb_types.float64:
            raise RuntimeError("NVVM failed on float64")
        compiled.append(signature)

    _replace_step_kernel(monkeypatch, compile)
    monkeypatch.setattr(_cuda_bucket, "_COMPILED", set())
    monkeypatch.setattr(numadam.cuda.config, "launcher", "numba")
    host, grads = _mixed_problem()
    params = [cuda.to_device(p) for p in host]
    dev = numadam.Adam(params, lr=0.1)
    with pytest.raises(RuntimeError, match="NVVM failed"):
        dev.step(_to_device(grads))
    assert len(dev.state) == 0
    for p, h in zip(params, host):
        assert_bits_equal(p.copy_to_host(), h, "untouched")
    assert compiled == [tuple(_cuda_kernels.step_signature(numadam.Adam.rule, np.float32))]
    only32 = numadam.Adam([cuda.to_device(host[0])], lr=0.1)
    only32.step(_to_device(grads[:1]))
    only32.step(_to_device(grads[:1]))
    assert len(compiled) == 1                         # once a process
    assert driver_launch_on_the_simulator["launches"] == 0


def test_the_default_launcher_is_numbas_and_never_touches_the_driver(monkeypatch):
    """Until scripts/gpu_check.py has passed on a GPU, the ctypes driver launch
    (which reads a numba-cuda internal) is opt-in: a default step on a real
    device (SIMULATED false) compiles and launches through Numba alone."""
    from internals import cuda_bucket as _cuda_bucket
    from internals import cuda_kernels as _cuda_kernels
    from internals import cuda_launch as _cuda_launch
    compiled, launched = [], []

    def refuse(*args):
        raise AssertionError("the driver launch was used")


    def launch_step(step, args, *rest):
        launched.append(args.state.dtype)
        real_launch_step(step, args, *rest)

    real_launch_step = _cuda_kernels.launch_step
    monkeypatch.setattr(_cuda_kernels, "SIMULATED", False)
    _replace_step_kernel(monkeypatch, compiled.append)
    monkeypatch.setattr(_cuda_kernels, "launch_step", launch_step)
    monkeypatch.setattr(_cuda_bucket, "_COMPILED", set())
    monkeypatch.setattr(_cuda_bucket, "_driver_kernel", refuse)
    monkeypatch.setattr(_cuda_launch, "LaunchArgs", refuse)
    monkeypatch.setattr(_cuda_launch, "_driver", refuse)
    assert numadam.cuda.config.launcher == "numba"
    host, grads = _mixed_problem()
    cpu = numadam.Adam([p.copy() for p in host], lr=0.1)
    params = [cuda.to_device(p) for p in host]
    dev = numadam.Adam(params, lr=0.1)
    for _ in range(2):
        cpu.step(grads)
        dev.step(_to_device(grads))
    assert compiled == [tuple(_cuda_kernels.step_signature(numadam.Adam.rule, dtype))
                        for dtype in (np.float32, np.float64)]
    assert len(launched) == 4                       # two buckets, two steps
    _same([p for group in cpu.param_groups for p in group["params"]], params, cpu, dev,
          "default launcher")


def test_a_driver_launch_that_cannot_be_set_up_says_what_to_do(
        driver_launch_on_the_simulator, monkeypatch):
    """Loading the kernel for the driver launch fails (say a numba-cuda whose
    internals moved): a RuntimeError naming the way out, nothing changed, and
    Numba's launcher then steps as usual."""
    from internals import cuda_bucket as _cuda_bucket
    from internals import cuda_kernels as _cuda_kernels
    make = _cuda_bucket._driver_kernel

    def unloadable(rule, dtype):
        kernel = make(rule, dtype)

        def handles(device):
            raise AttributeError("'CodeLibrary' object has no attribute 'get_cufunc'")
        kernel.handles = handles
        return kernel

    monkeypatch.setattr(_cuda_bucket, "_driver_kernel", unloadable)
    host, grads = _mixed_problem()
    params = [cuda.to_device(p) for p in host]
    dev = numadam.Adam(params, lr=0.1)
    with pytest.raises(RuntimeError, match="launcher = 'numba'") as caught:
        dev.step(_to_device(grads))
    assert isinstance(caught.value.__cause__, AttributeError)
    assert len(dev.state) == 0
    for p, h in zip(params, host):
        assert_bits_equal(p.copy_to_host(), h, "untouched")
    monkeypatch.setattr(numadam.cuda.config, "launcher", "numba")
    monkeypatch.setattr(_cuda_kernels, "SIMULATED", True)   # Numba's launcher, simulated
    dev.step(_to_device(grads))
    cpu = numadam.Adam([p.copy() for p in host], lr=0.1)
    cpu.step(grads)
    _same([p for group in cpu.param_groups for p in group["params"]], params, cpu, dev,
          "after the switch")


class FakeTorchTensor:
    """What numadam reads of a torch CUDA tensor, over a host array."""

    device = type("device", (), {"index": 0})()
    DTYPES = {np.dtype(np.float32): "torch.float32", np.dtype(np.float64): "torch.float64"}

    is_cuda = True
    interface_reads = 0

    def __init__(self, array, requires_grad=False):
        self.array = array
        self.contiguous = True
        self.requires_grad = requires_grad

    def numel(self):
        return self.array.size

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.DTYPES[self.array.dtype]     # interned strings: `is` works

    def data_ptr(self):
        return self.array.ctypes.data

    def is_contiguous(self):
        return self.contiguous

    @property
    def __cuda_array_interface__(self):     # torch's is version 2: no stream
        FakeTorchTensor.interface_reads += 1
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that "
                               "requires grad. Use var.detach().__cuda_array_interface__")
        strides = None if self.contiguous else (8 * self.array.shape[0],)
        return {"shape": self.array.shape, "typestr": self.array.dtype.str,
                "data": (self.array.ctypes.data, False), "version": 2, "strides": strides}


FakeTorchTensor.__module__ = "torch"


@pytest.fixture
def fake_torch(monkeypatch):
    import types

    from internals import cuda_adapters as _cuda_adapters
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(
        float32="torch.float32", float64="torch.float64",
        cuda=types.SimpleNamespace(
            current_stream=lambda device: types.SimpleNamespace(cuda_stream=0))))
    monkeypatch.setattr(_cuda_adapters, "_TORCH_DTYPES", {})
    monkeypatch.setattr(FakeTorchTensor, "interface_reads", 0)


def test_torch_tensors_are_read_through_torch_not_the_interface(fake_torch, one_device):
    """torch builds its interface in Python; a usable CUDA tensor is read
    through data_ptr/shape/dtype instead, anything else through the interface,
    which explains what is wrong."""
    host = np.linspace(0, 1, 6)
    cpu = numadam.Adam([host], lr=0.1)
    mine = np.linspace(0, 1, 6)
    dev = numadam.Adam([FakeTorchTensor(mine)], lr=0.1)
    FakeTorchTensor.interface_reads = 0             # the constructor may look once
    rng = np.random.default_rng(9)
    for _ in range(3):
        g = rng.standard_normal(6)
        cpu.step([g])
        dev.step([FakeTorchTensor(g.copy())])      # a new tensor every step
    assert FakeTorchTensor.interface_reads == 0
    assert_bits_equal(mine, host, "torch tensors")
    with pytest.raises(RuntimeError, match="requires grad"):
        dev.step([FakeTorchTensor(np.ones(6), requires_grad=True)])
    with pytest.raises(ValueError, match="dtype float32"):
        dev.step([FakeTorchTensor(np.ones(6, np.float32))])
    strided = FakeTorchTensor(np.ones(6))
    strided.contiguous = False
    with pytest.raises(ValueError, match="C-contiguous"):
        dev.step([strided])
    assert FakeTorchTensor.interface_reads == 2     # the float32 and the strided one
    assert_bits_equal(mine, host, "after refused steps")


def test_a_torch_gradient_is_rechecked_cheaply(monkeypatch, fake_torch, one_device):
    """The same torch tensor is trusted only while its data pointer, dtype and
    contiguity are those it was checked with: its storage can be swapped."""
    from internals import cuda_bucket as _cuda_bucket
    checked = _count_calls(monkeypatch, _cuda_bucket, "gradient_info")
    host = np.ones(6)
    cpu = numadam.Adam([host], lr=0.1)
    dev = numadam.Adam([cuda.to_device(np.ones(6))], lr=0.1)
    t = FakeTorchTensor(np.arange(6.0))
    for _ in range(3):
        dev.step([t])
        cpu.step([t.array.copy()])
    assert len(checked) == 1
    t.array = np.linspace(-1, 1, 6)       # tensor.set_(other storage): a new address
    dev.step([t])
    cpu.step([t.array.copy()])
    assert len(checked) == 2
    assert_bits_equal(dev._buckets[0].params[0].copy_to_host(), host, "torch gradient")
    t.array = t.array.view(np.float32)[:6]    # same address and shape, another dtype
    with pytest.raises(ValueError, match="dtype float32"):
        dev.step([t])
    t.array = np.ones(6)
    dev.step([t])
    t.contiguous = False                  # tensor.as_strided_(...)
    with pytest.raises(ValueError, match="C-contiguous"):
        dev.step([t])


def test_a_step_without_any_gradient_changes_nothing():
    host = [np.ones(5, np.float32)]
    dev = numadam.Adam([cuda.to_device(host[0])])
    dev.step([cuda.to_device(np.ones(5, np.float32))])
    before = dev._buckets[0].state.copy_to_host()
    dev.step([None])
    assert dev.state[0]["step"] == 1
    assert_bits_equal(dev._buckets[0].state.copy_to_host(), before, "state")


def test_cuda_config_is_validated():
    config = numadam.cuda.config
    with pytest.raises(ValueError, match="launcher"):
        config.launcher = "cupy"
    with pytest.raises(ValueError, match="threads_per_block"):
        config.threads_per_block = 100
    assert config.launcher == "numba"


class InterfaceOnly:
    """Exposes a host buffer through __cuda_array_interface__ alone.

    Under the simulator "device" memory is host memory, so the kernels can
    run on it: this exercises the adapter path that CuPy and torch take.
    """

    def __init__(self, array, *, readonly=False, strides=None, typestr=None, version=3):
        self.array = array
        self.__cuda_array_interface__ = {
            "shape": array.shape, "typestr": typestr or array.dtype.str,
            "data": (array.ctypes.data, readonly), "version": version,
            "strides": strides, "stream": None}


@pytest.fixture
def one_device(monkeypatch):
    from internals import cuda_adapters as _cuda_adapters
    monkeypatch.setattr(_cuda_adapters, "_device_of_pointer", lambda address: 0)


def test_interface_only_objects_are_updated_in_place(one_device):
    host = np.linspace(-1, 1, 24).reshape(4, 6)
    mine = host.copy()
    grad = np.cos(np.arange(24.0)).reshape(4, 6)
    cpu = numadam.AdamW([host], lr=0.05)
    dev = numadam.AdamW([InterfaceOnly(mine)], lr=0.05)
    for _ in range(3):
        cpu.step([grad])
        dev.step([InterfaceOnly(grad, readonly=True)])
    assert_bits_equal(mine, host, "interface-only")


def test_interface_errors(one_device):
    from internals import cuda_adapters as _cuda_adapters
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="read-only"):
        numadam.Adam([InterfaceOnly(a, readonly=True)])
    with pytest.raises(ValueError, match="C-contiguous"):
        numadam.Adam([InterfaceOnly(a, strides=(4, 12))])
    # Strides of axes of length 1 do not matter.
    numadam.Adam([InterfaceOnly(np.zeros((1, 4), np.float32), strides=(999, 4))])
    with pytest.raises(ValueError, match="unsupported dtype"):
        numadam.Adam([InterfaceOnly(np.zeros(3, np.int32))])
    info = _cuda_adapters.inspect(InterfaceOnly(a), "x")
    assert (info.address, info.shape, info.dtype, info.size) == (a.ctypes.data, (3, 4),
                                                                 np.dtype(np.float32), 12)


def test_two_devices_in_a_group_is_an_error(monkeypatch):
    from internals import cuda_adapters as _cuda_adapters
    a, b = np.zeros(3), np.zeros(3)
    monkeypatch.setattr(_cuda_adapters, "_device_of_pointer",
                        lambda address: 0 if address == a.ctypes.data else 1)
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] is on device 1"):
        numadam.Adam([InterfaceOnly(a), InterfaceOnly(b)])
    opt = numadam.Adam([InterfaceOnly(a)])
    with pytest.raises(ValueError, match="device 1"):
        opt.step([InterfaceOnly(b)])
