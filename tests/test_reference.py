"""The kernels against the plain-NumPy float64 reference, and against themselves.

The reference (tests/naive.py) is the textbook algorithm, so agreement within
a tolerance shows the fast path computes each rule (and not just torch's quirks);
the thread/task tests show that how the work is split never changes a bit.
"""

import numpy as np
import pytest

import numadam
from internals import cpu_kernels as _cpu
from internals import TASKS_PER_THREAD
import optim_configs as oc
from helpers import assert_bits_equal, build, run, step_grads
from naive import DEFAULTS, NAIVE

# Observed after 200 steps, every rule: float64 agrees to 4e-16 (rounding
# only); float32 to 5e-6 of a parameter's scale (SGD, Adagrad, RMSprop: 1e-6).
# A wrong formula (e.g. eps inside the square root, a missing bias correction,
# dampening on the first momentum step) is off by far more than these bounds.
TOLERANCE = {"float64": 1e-14, "float32": 2e-5}


def _naive_for(name, dtype):
    config = oc.CONFIGS[name]
    index = oc.index(name)
    params = [p.astype(np.float64) for p in oc.initial_params(index, dtype)]
    groups = []
    for shapes, over in oc.layout(config):
        h = dict(DEFAULTS[config["cls"]])
        h.update(config["kwargs"])
        h.update(over)
        groups.append((shapes, h))
    return NAIVE[config["cls"]](params, groups, config["cls"]), params


@pytest.mark.parametrize("dtype", oc.DTYPES)
@pytest.mark.parametrize("name", list(oc.CONFIGS))
def test_kernels_follow_the_numpy_reference(name, dtype):
    config = oc.CONFIGS[name]
    naive, ref_params = _naive_for(name, dtype)
    opt, params = build(name, dtype)
    order = oc.param_order(config)
    schedule = config.get("schedule", {})
    for step in range(1, oc.STEPS + 1):
        if step in schedule:
            for (_, h), lr in zip(naive.groups, schedule[step]):
                h["lr"] = lr
        grads = step_grads(name, dtype, step)
        naive.step({k: (None if g is None else g.astype(np.float64))
                    for k, g in zip(order, grads)})
    run(opt, name, dtype, 1, oc.STEPS)
    for k, (p, ref) in enumerate(zip(params, ref_params)):
        scale = np.abs(ref).max()
        err = np.abs(p.astype(np.float64) - ref).max() / scale
        assert err < TOLERANCE[dtype], f"param {k}: relative error {err:.2e}"
        assert np.abs(ref - oc.initial_params(oc.index(name), dtype)[k]).max() \
            > 100 * TOLERANCE[dtype] * scale, "the run must move the parameters"


def _mixed_problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [1, 0, 3, 17, 1000, 5, 4096, 33, 70000, 2]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(5)]
    return params, grads


def _run_mixed(dtype, amsgrad, **config):
    saved = {key: getattr(numadam.config, key) for key in config}
    try:
        for key, value in config.items():
            setattr(numadam.config, key, value)
        params, grads = _mixed_problem(dtype)
        opt = numadam.AdamW(params, lr=0.01, amsgrad=amsgrad, weight_decay=0.1)
        for g in grads:
            opt.step(g)
        return params, opt.state_dict()
    finally:
        for key, value in saved.items():
            setattr(numadam.config, key, value)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dtype", oc.DTYPES)
def test_thread_count_and_task_split_do_not_change_a_bit(dtype, amsgrad, monkeypatch):
    reference = _run_mixed(dtype, amsgrad, serial_below=1 << 62)   # one thread, one task
    total = sum(p.size for p in reference[0])
    spans = []
    built = _cpu.kernels

    def recording_kernels(rule):
        real = built(rule)

        def recording(table, state, scal, lo, hi, flags, clip):
            spans.append((int(lo), int(hi)))
            real.step_task(table, state, scal, lo, hi, flags, clip)

        return real._replace(step_task=recording)

    monkeypatch.setattr(_cpu, "kernels", recording_kernels)
    variants = []
    # numadam.config.threads, not the machine's cores nor NUMBA_NUM_THREADS,
    # sets the split, so a one-core runner splits as much as a big machine.
    # Tasks of at least 1 element: boundaries fall inside arrays and between
    # them, and tiny arrays share a task; 1 thread makes one call over the
    # bucket (each nogil call costs a GIL handoff, see numadam.cpu.bucket).
    for threads in (1, 2, 3, 7):
        for min_task in (1, 5000):
            spans.clear()
            variants.append(_run_mixed(dtype, amsgrad, serial_below=0, min_task=min_task,
                                       threads=threads))
            cut = sorted(set(spans))
            ntasks = 1 if threads == 1 else min(TASKS_PER_THREAD * threads, total // min_task)
            assert len(cut) == ntasks, (threads, min_task)
            assert cut[0][0] == 0 and cut[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(cut, cut[1:])), cut
            assert len(spans) == len(cut) * 5     # every task of every step ran once
    for params, sd in variants:
        for k, (p, q) in enumerate(zip(params, reference[0])):
            assert_bits_equal(p, q, f"param {k}")
        for index, entry in reference[1]["state"].items():
            for key, value in entry.items():
                if key != "step":
                    assert_bits_equal(sd["state"][index][key], value, f"{index} {key}")


def test_bias_corrections_in_the_kernel_match_python_pow():
    """The kernels compute 1 - beta**t with libm's pow, as torch and Python do."""
    from internals import BC2_SQRT, NEG_STEP, NSCALARS, scalars_into
    out = np.empty(NSCALARS)
    for beta1, beta2 in [(0.9, 0.999), (0.3, 0.9), (0.95, 0.99999)]:
        for t in [1, 2, 3, 10, 97, 1000, 12345, 10**6]:
            scalars_into(out, t, t == 1, (0.01, beta1, beta2, 1e-8, 0.0))
            assert out[NEG_STEP] == -(0.01 / (1 - beta1 ** t))
            assert out[BC2_SQRT] == (1 - beta2 ** t) ** 0.5
