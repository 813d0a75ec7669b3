"""The CUDA backend on a real GPU: exactness, every adapter, and the issue's timings.

Run from the repository root on a machine with an NVIDIA GPU, numba-cuda,
CuPy and torch (the H200 device image has them; see the README's GPU section
for the command, including the numpy 2.4 wheel that numba-cuda 0.30.4 needs):

    PYTHONPATH=. python3 scripts/gpu_check.py [--out DIR] [--quick]

``--smoke`` runs every line with tiny sizes under NUMBA_ENABLE_CUDASIM=1
(tests/test_cuda_sim.py does, so the script cannot rot between GPU sessions).

Checks (any failure exits 1, after the table):
  * PTX: every rule's step kernel, float32 and float64: every multiply is
    mul.rn, so the only FMAs are the element's explicit ones
    (tests/cuda/ptx_check.py).
  * launchers: Numba's launcher (the default) and the opt-in driver launch
    (ctypes cuLaunchKernel, which reads a numba-cuda internal) each run the
    parity and adapter checks below; the driver launch is probed first, and
    where it fails the run goes on with Numba's launcher alone. The last
    "launch" row says whether the driver launch passed everything (the
    condition for making it the default).
  * parity: every configuration of tests/optim_configs.py (every rule: Adam,
    AdamW, AMSGrad, SGD, Adagrad, RMSprop), float32 and float64, on fresh
    random data, GPU bit-identical to numadam's CPU update (params and every
    state array, each step's result compared after the last step). RMSprop's
    CPU reference takes the correctly rounded square root, which is CUDA's;
    how far the RMSprop class itself (MKL's root on an AVX512 CPU) is from
    the GPU is reported beside it, not failed.
  * format parity: compressed state (bfloat16, 8-bit) of float32 parameters,
    one configuration of each rule or all of them, GPU parameters and stored
    state bit-identical to the CPU's (scripts/gpu_formats.py; Numba's
    launcher, the only one compressed state uses).
  * adapters: Numba device arrays (aligned, unaligned), CuPy (on a non-default
    stream), torch CUDA tensors (on a side stream), a raw
    __cuda_array_interface__ object, and numadam.cuda.flat_parameters; each
    bit-identical to the CPU.
Timings (printed against the issue's targets; a miss is reported, not failed):
  * import to first finished step in a fresh process, cold and warm kernel cache.
  * 2^28 float32: kernel-only (128/256/512 threads a block) and step()
    effective TB/s (28 B/element; 36 with AMSGrad) against a device-to-device
    copy measured in the same run, the element path (unaligned) for
    comparison, and streaming kernels with Adam's traffic and no arithmetic
    (scalar; 16-byte; two 16-byte groups a thread): the ceiling. step() of
    the other rules (their traffic: 12 B/element plus 8 per state row).
  * Adam's step() at 1e8 float32 with full, bfloat16 and 8-bit state, and the
    speed-ups over full state against the issue's targets (1.2x, 1.3x).
  * a 10-element step from Python: microseconds per call of step([g]) and
    step(), Numba / CuPy / torch arrays, driver and Numba launchers.
  * 200 arrays of 1e2..1e6 elements: numadam (torch tensors, owned grads,
    flat_parameters) vs torch Adam(fused=True), GPU and host time per step.
"""

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "cuda"),
                os.path.join(ROOT, "scripts")]

import numadam  # noqa: E402
import numadam.cuda.kernels  # noqa: E402
import numadam.cuda  # noqa: E402
import gpu_formats  # noqa: E402
import optim_configs as oc  # noqa: E402
from numba import cuda  # noqa: E402

ROWS = []          # (section, what, result, note)
FAILURES = []
LAUNCHERS = ["numba"]   # numadam.cuda.config.launcher values to check; probe adds "driver"
# Problem sizes; --smoke shrinks them so that CI can run this script under the
# CUDA simulator (every line runs; no figure means anything there).
SCALE = dict(n=1 << 28, n_formats=10 ** 8, chunk=1 << 20, reps=20, small_reps=2000, parity_steps=12,
             many=(1e2, 1e6, 200), shapes=[(4099,), (64, 129), (3, 1000), (1,)])
SMOKE = dict(n=1 << 10, n_formats=4096, chunk=1 << 8, reps=2, small_reps=3, parity_steps=2,
             many=(10, 100, 5), shapes=[(41,), (6, 13), (3, 10), (1,)])


def record(section, what, result, note="", ok=True):
    ROWS.append((section, what, result, note))
    if not ok:
        FAILURES.append(f"{section}: {what}: {result} {note}")
    print(f"[{section}] {what}: {result} {note}", flush=True)


def cuda_torch():
    """torch, where it is installed with CUDA and sees a GPU (else ImportError:
    a CPU-only torch, or any torch under the simulator, is reported "not run")."""
    import torch
    if not torch.cuda.is_available():
        raise ImportError(f"torch {torch.__version__} without a usable CUDA device")
    return torch


def differing(actual, expected):
    """Elements whose bits differ (all NaNs count as equal: the GPU's are canonical)."""
    a, e = np.asarray(actual).reshape(-1), np.asarray(expected).reshape(-1)
    same = (a.view(f"u{a.itemsize}") == e.view(f"u{e.itemsize}")) | (np.isnan(a) & np.isnan(e))
    return int((~same).sum())


def ulps(actual, expected):
    """The largest distance in units in the last place between finite elements
    (what the issue asks for where bits differ)."""
    a, e = np.asarray(actual).reshape(-1), np.asarray(expected).reshape(-1)
    finite = np.isfinite(a) & np.isfinite(e)
    if not finite.any():
        return 0

    def ordered(x):     # IEEE bits as integers that count ulps across zero
        i = x.view(f"i{x.itemsize}").astype(np.int64)
        return np.where(i < 0, np.iinfo(f"i{x.itemsize}").min - i, i)

    return int(np.abs(ordered(a[finite]) - ordered(e[finite])).max())


# ------------------------------------------------------------------ launch
@contextlib.contextmanager
def launcher(name):
    """numadam.cuda.config.launcher set to ``name`` for the block."""
    config = numadam.cuda.config
    before, config.launcher = config.launcher, name
    try:
        yield
    finally:
        config.launcher = before


def probe_driver_launch():
    """One small step through the opt-in driver launch, first: if it fails,
    the rest of the run checks Numba's launcher alone, so that the session
    still yields the kernels' exactness and bandwidth."""
    rng = np.random.default_rng(11)
    host = rng.standard_normal(37).astype(np.float32)
    grad = rng.standard_normal(37).astype(np.float32)
    x = cuda.to_device(host)
    cpu = numadam.Adam([host], lr=0.1)
    try:
        with launcher("driver"):
            opt = numadam.Adam([x], lr=0.1)
            for _ in range(3):
                opt.step([cuda.to_device(grad)])
                cpu.step([grad])
            cuda.synchronize()
        bad = differing(x.copy_to_host(), host)
        from numadam.cuda.kernels import SIMULATED
        record("launch", "driver launch (ctypes cuLaunchKernel)",
               "bit-exact" if bad == 0 else f"{bad} elements differ",
               "simulator: Numba's launcher ran" if SIMULATED else "", ok=bad == 0)
        if bad == 0:
            LAUNCHERS.append("driver")
    except Exception as error:
        record("launch", "driver launch (ctypes cuLaunchKernel)",
               f"error {type(error).__name__}: {error}", ok=False)
    if LAUNCHERS == ["numba"]:
        record("launch", "the rest of this run", "Numba's launcher only")


def report_driver_launch():
    """Whether the driver launch passed every check it ran (the last row)."""
    driver = [f for f in FAILURES if "driver" in f]
    if "driver" not in LAUNCHERS:
        verdict = "failed its probe: keep Numba's launcher the default"
    elif driver:
        verdict = f"{len(driver)} driver-launch checks failed: keep Numba's launcher the default"
    else:
        verdict = "passed every parity and adapter check, as Numba's launcher did"
    record("launch", "driver launch, overall", verdict)   # its failures are counted above


# ------------------------------------------------------------------ parity


def random_problem(rng, dtype, steps):
    params = [(rng.standard_normal(s)).astype(dtype) for s in SCALE["shapes"]]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 2, s)).astype(dtype)
              for s in SCALE["shapes"]] for _ in range(steps)]
    return params, grads


def groups_of(config, params):
    layout = config.get("groups") or [dict(shapes=list(range(len(SCALE["shapes"]))))]
    return [dict(params=[params[k] for k in g["shapes"]],
                 **{k: v for k, v in g.items() if k != "shapes"}) for g in layout]


def reference_class(cls):
    """The CPU class that computes what ``cls`` computes on a GPU: ``cls``
    itself, but for RMSprop, whose CPU square root emulates MKL's (on AVX512)
    where CUDA's is correctly rounded: its rule with the device's element."""
    import dataclasses

    from numadam.cuda.kernels import device_element
    element = device_element(cls.rule)
    if element is cls.rule.element:
        return cls
    rule = dataclasses.replace(cls.rule, name=cls.rule.name + "_device_root", element=element)
    return type(cls.__name__ + "DeviceRoot", (cls,), {"rule": rule})


def compare(cpu, gpu, host, dev):
    """``(differing elements, worst ulps)`` of parameters and every state array."""
    pairs = [(d.copy_to_host(), h) for d, h in zip(dev, host)]
    sc, sg = cpu.state_dict()["state"], gpu.state_dict()["state"]
    bad = 0
    for i, entry in sc.items():
        if entry.keys() != sg[i].keys():
            bad += 1
        for key, value in entry.items():
            if key != "step":
                pairs.append((sg[i][key], value))
            elif sg[i][key] != value:
                bad += 1
    bad += sum(differing(a, e) for a, e in pairs)
    return bad, max(ulps(a, e) for a, e in pairs)


def check_parity(launcher_name):
    steps = SCALE["parity_steps"]
    seed = int(time.time())
    print(f"parity seed {seed}", flush=True)
    rng = np.random.default_rng(seed)
    for name in oc.CONFIGS:
        config = dict(oc.CONFIGS[name])
        if "groups" in config:          # the registry's groups index its 3 shapes
            config["groups"] = [dict(g) for g in config["groups"]]
            last = len(SCALE["shapes"]) - 1
            config["groups"][0]["shapes"] = config["groups"][0]["shapes"] + [last]
        for dtype in oc.DTYPES:
            params, grads = random_problem(rng, dtype, steps)
            cls = getattr(numadam, config["cls"])
            reference = reference_class(cls)
            host = [p.copy() for p in params]
            dev = [cuda.to_device(p) for p in params]
            cpu = reference(groups_of(config, host), **config["kwargs"])
            gpu = cls(groups_of(config, dev), **config["kwargs"])
            if reference is not cls:
                own = [p.copy() for p in params]
                cpu_class = cls(groups_of(config, own), **config["kwargs"])
            layout = config.get("groups") or [dict(shapes=range(len(SCALE["shapes"])))]
            order = [k for g in layout for k in g["shapes"]]
            every = config.get("skip_every")
            for t in range(steps):
                gs = [None if every and k == 1 and (t + 1) % every == 0 else grads[t][k]
                      for k in order]
                cpu.step(gs)
                gpu.step([None if g is None else cuda.to_device(g) for g in gs])
                if reference is not cls:
                    cpu_class.step(gs)
            bad, worst = compare(cpu, gpu, host, dev)
            total = sum(p.size for p in params)
            record("parity", f"{name} {dtype}, {launcher_name} launcher",
                   "bit-exact" if bad == 0 else
                   f"{bad} of {total} elements differ, at most {worst} ulp",
                   f"{steps} steps" + ("" if reference is cls else
                                       ", CPU reference with the correctly rounded sqrt"),
                   ok=bad == 0)
            if reference is not cls:
                bad, worst = compare(cpu_class, gpu, own, dev)
                record("sqrt", f"{name} {dtype}, {launcher_name} launcher, against the "
                       f"{cls.__name__} class on this CPU",
                       "bit-exact" if bad == 0 else
                       f"{bad} of {total} elements differ, at most {worst} ulp",
                       "MKL's AVX512 root on the CPU, CUDA's correctly rounded one")


# ---------------------------------------------------------------- adapters
class InterfaceOnly:
    """A raw __cuda_array_interface__ (v3) object around another device array."""

    def __init__(self, base):
        self.base = base
        self.__cuda_array_interface__ = dict(base.__cuda_array_interface__)


def check_adapters(launcher_name):
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((33, 65)).astype(np.float32)
    gs = [rng.standard_normal((33, 65)).astype(np.float32) for _ in range(5)]
    expect = x0.copy()
    cpu = numadam.AdamW([expect], lr=1e-2, amsgrad=True)
    for g in gs:
        cpu.step([g])

    def run(kind, make, to_host, stream_ctx=None):
        kind = f"{kind}, {launcher_name} launcher"
        try:
            compare(kind, make, to_host, stream_ctx)
        except Exception as error:
            record("adapter", kind, f"error {type(error).__name__}: {error}", ok=False)

    def compare(kind, make, to_host, stream_ctx):
        x = make(x0)
        opt = numadam.AdamW([x], lr=1e-2, amsgrad=True)
        ctx = stream_ctx() if stream_ctx else None
        if ctx:
            ctx.__enter__()
        try:
            for g in gs:
                opt.step([make(g)])
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        cuda.synchronize()   # what a user does before reading from another stream
        bad = differing(to_host(x), expect)
        record("adapter", kind, "bit-exact" if bad == 0 else f"{bad} elements differ",
               ok=bad == 0)

    run("numba device array", cuda.to_device, lambda a: a.copy_to_host())

    def unaligned(a):       # one element into a buffer: not 16-byte aligned
        buffer = cuda.to_device(np.concatenate([[0], a.ravel()]).astype(a.dtype))
        return buffer[1:].reshape(a.shape)

    run("numba view, unaligned (element path)", unaligned, lambda a: a.copy_to_host())
    try:
        x = cuda.to_device(x0)
        bad_grad = gs[0].copy()
        bad_grad[7, 9] = np.nan
        guarded = numadam.Adam([x], lr=1e-2, check_finite="raise")
        try:
            guarded.step([cuda.to_device(bad_grad)])
            result = "no error raised"
        except FloatingPointError:
            result = "raised" if differing(x.copy_to_host(), x0) == 0 else "raised, x changed"
        record("adapter", f"check_finite='raise' on a NaN gradient, {launcher_name} launcher",
               result, ok=result == "raised")
    except Exception as error:
        record("adapter", f"check_finite, {launcher_name} launcher",
               f"error {type(error).__name__}: {error}", ok=False)
    flat = numadam.cuda.flat_parameters([(33, 65), 7])
    flat.params[0].copy_to_device(x0)
    gflat = numadam.cuda.flat_parameters([(33, 65), 7])
    opt = numadam.AdamW(flat.params, lr=1e-2, amsgrad=True)
    for g in gs:
        gflat.params[0].copy_to_device(g)
        opt.step(gflat.params)
    bad = differing(flat.params[0].copy_to_host(), expect)
    record("adapter", f"flat_parameters, {launcher_name} launcher",
           "bit-exact" if bad == 0 else f"{bad} differ", ok=bad == 0)
    try:
        import cupy
        stream = cupy.cuda.Stream(non_blocking=True)

        def on_stream():
            return stream

        run("cupy (non-blocking stream)", cupy.asarray, cupy.asnumpy, on_stream)
        run("raw __cuda_array_interface__",
            lambda a: InterfaceOnly(cupy.asarray(a)), lambda a: cupy.asnumpy(a.base))
    except ImportError as error:
        record("adapter", "cupy", "not run", str(error))
    try:
        torch = cuda_torch()
    except ImportError as error:
        record("adapter", "torch", "not run", str(error))
        return
    run("torch cuda tensor (side stream)", lambda a: torch.from_numpy(a).cuda(),
        lambda a: a.cpu().numpy(), lambda: torch.cuda.stream(torch.cuda.Stream()))


def check_example():
    """examples/gpu_least_squares.py on CuPy: it must fit, and says how fast."""
    try:
        import cupy
    except ImportError as error:
        record("example", "gpu_least_squares", "not run", str(error))
        return
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "gpu_least_squares", os.path.join(ROOT, "examples", "gpu_least_squares.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        out = example.main(cupy)
        record("example", "gpu_least_squares (CuPy, opt.grads)",
               f"relative error {out['error']:.1e}, {out['steps_per_second']:.0f} steps/s",
               ok=out["error"] < 1e-2)
    except Exception as error:
        record("example", "gpu_least_squares", f"error {type(error).__name__}: {error}",
               ok=False)


# ------------------------------------------------------------------ timing
def event_ms(fn, reps):
    start, end = cuda.event(), cuda.event()
    fn()
    cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def time_bandwidth(amsgrad=False):
    from numadam.cuda import kernels as _cuda_kernels
    n, reps = SCALE["n"], SCALE["reps"]
    rng = np.random.default_rng(1)
    chunk = rng.standard_normal(SCALE["chunk"]).astype(np.float32)
    p = cuda.to_device(np.tile(chunk, n // chunk.size))
    g = cuda.to_device(np.tile(chunk[::-1].copy(), n // chunk.size))
    dst = cuda.device_array(n, np.float32)
    copy_ms = event_ms(lambda: dst.copy_to_device(p), reps)
    copy_tbs = 8 * n / copy_ms / 1e9
    record("bandwidth", f"device-to-device copy {n} f32", f"{copy_tbs:.2f} TB/s",
           f"{copy_ms:.3f} ms")
    dst = None  # free it before the optimizer allocates its state
    opt = numadam.Adam([p], lr=1e-4, amsgrad=amsgrad)
    opt.step([g])
    bucket = opt._buckets[0]
    per = 36 if amsgrad else 28
    label = "amsgrad" if amsgrad else "adam"
    config = numadam.cuda.config

    args = _cuda_kernels.StepArgs(table=bucket._table_d, scal=bucket._scal_d,
                                  state=bucket.state, uniform=True, s=bucket._scalars,
                                  flags=(amsgrad, False, False))

    def kernel_only():
        _cuda_kernels.launch_step(bucket.kernels.step, args, cuda.default_stream(),
                                  config.threads_per_block)

    results = []
    for threads in (128, 256, 512):
        config.threads_per_block = threads
        results.append((f"kernel only, {threads} threads", event_ms(kernel_only, reps)))
    config.threads_per_block = 256
    results.append(("opt.step([g])", event_ms(lambda: opt.step([g]), reps)))
    for what, ms in results:
        tbs = per * n / ms / 1e9
        record("bandwidth", f"{label} {n} f32 {what}", f"{tbs:.2f} TB/s",
               f"{ms:.3f} ms, {tbs / copy_tbs:.0%} of copy; target >= 3.8 TB/s"
               + (" MET" if tbs >= 3.8 else " MISSED"))
    if not amsgrad:
        # The element path for comparison: a view one element in is not 16-byte
        # aligned, so every thread takes four scalar loads per array instead.
        p, g, opt, bucket = p[1:], g[1:], None, None
        opt = numadam.Adam([p], lr=1e-4)
        opt.step([g])
        ms = event_ms(lambda: opt.step([g]), reps)
        tbs = per * (n - 1) / ms / 1e9
        record("bandwidth", f"adam {n - 1} f32 unaligned (element path)", f"{tbs:.2f} TB/s",
               f"{ms:.3f} ms, {tbs / copy_tbs:.0%} of copy")


def time_rules_bandwidth():
    """step() of SGD, Adagrad and RMSprop with every state row they can have,
    2^28 float32: effective TB/s over their traffic."""
    n, reps = SCALE["n"], SCALE["reps"]
    p = cuda.to_device(np.full(n, 0.5, np.float32))
    g = cuda.to_device(np.full(n, 0.25, np.float32))
    for label, make in (("sgd momentum", lambda: numadam.SGD([p], lr=1e-4, momentum=0.9)),
                        ("adagrad", lambda: numadam.Adagrad([p], lr=1e-4)),
                        ("rmsprop centered momentum", lambda: numadam.RMSprop(
                            [p], lr=1e-4, centered=True, momentum=0.9))):
        opt = make()
        opt.step([g])
        ms = event_ms(lambda: opt.step([g]), reps)
        per = 4 * (3 + 2 * len(opt._buckets[0].rows))
        record("bandwidth", f"{label} {n} f32 opt.step([g])",
               f"{per * n / ms / 1e9:.2f} TB/s", f"{ms:.3f} ms, {per} B/element")
        opt = None     # free its state before the next one allocates


def _stream_kernels():
    """Kernels with Adam's traffic (read p, g, m, v; write p, m, v) and next to
    no arithmetic: what this access pattern can reach, to tell the memory
    system's limit from the step kernel's own cost."""
    from numadam.cuda.kernels import _row_load_vec as load, _row_store_vec as store

    @cuda.jit
    def scalar(p, g, m, v):         # one element a thread, as DESIGN.md's plain kernel
        i = cuda.grid(1)
        if i < p.shape[1]:
            a, b, c, d = p[0, i], g[0, i], m[0, i], v[0, i]
            m[0, i] = c + b
            v[0, i] = d + b
            p[0, i] = a + d

    @cuda.jit(device=True)
    def group(p, g, m, v, i):
        a, b, c, d = load(p, 0, i), load(g, 0, i), load(m, 0, i), load(v, 0, i)
        store(m, 0, i, (c[0] + b[0], c[1] + b[1], c[2] + b[2], c[3] + b[3]))
        store(v, 0, i, (d[0] + b[0], d[1] + b[1], d[2] + b[2], d[3] + b[3]))
        store(p, 0, i, (a[0] + d[0], a[1] + d[1], a[2] + d[2], a[3] + d[3]))

    @cuda.jit
    def vector(p, g, m, v):         # four elements a thread, 16-byte accesses
        i = cuda.grid(1) * 4
        if i < p.shape[1]:
            group(p, g, m, v, i)

    @cuda.jit
    def vector2(p, g, m, v):        # two such groups a thread, a block apart
        i = (cuda.blockIdx.x * 2 * cuda.blockDim.x + cuda.threadIdx.x) * 4
        j = i + cuda.blockDim.x * 4
        if j < p.shape[1]:
            a, b = load(p, 0, i), load(p, 0, j)
            c, d = load(g, 0, i), load(g, 0, j)
            e, f = load(m, 0, i), load(m, 0, j)
            x, y = load(v, 0, i), load(v, 0, j)
            store(m, 0, i, (e[0] + c[0], e[1] + c[1], e[2] + c[2], e[3] + c[3]))
            store(m, 0, j, (f[0] + d[0], f[1] + d[1], f[2] + d[2], f[3] + d[3]))
            store(v, 0, i, (x[0] + c[0], x[1] + c[1], x[2] + c[2], x[3] + c[3]))
            store(v, 0, j, (y[0] + d[0], y[1] + d[1], y[2] + d[2], y[3] + d[3]))
            store(p, 0, i, (a[0] + x[0], a[1] + x[1], a[2] + x[2], a[3] + x[3]))
            store(p, 0, j, (b[0] + y[0], b[1] + y[1], b[2] + y[2], b[3] + y[3]))
        elif i < p.shape[1]:
            group(p, g, m, v, i)

    return (("scalar, 1 element a thread", scalar, 1), ("16-byte, 4 elements a thread",
            vector, 4), ("16-byte, 2 x 4 elements a thread", vector2, 8))


def time_stream_kernels():
    n, reps = SCALE["n"], SCALE["reps"]
    arrays = [cuda.device_array((1, n), np.float32) for _ in range(4)]
    for a in arrays:
        numadam.cuda.kernels.fill(a.reshape(-1), 0.5, cuda.default_stream(), 256)
    threads = numadam.cuda.config.threads_per_block
    for label, kernel, per_thread in _stream_kernels():
        blocks = -(-n // (threads * per_thread))
        ms = event_ms(lambda: kernel[blocks, threads](*arrays), reps)
        tbs = 28 * n / ms / 1e9
        record("bandwidth", f"4-read/3-write stream {n} f32, {label}", f"{tbs:.2f} TB/s",
               f"{ms:.3f} ms; the ceiling for Adam's traffic")


def time_small_step():
    reps = SCALE["small_reps"]
    def us_per_call(call):
        for _ in range(min(50, reps)):
            call()
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e6

    kinds = [("numba", cuda.to_device)]
    try:
        import cupy
        kinds.append(("cupy", cupy.asarray))
    except ImportError:
        pass
    try:
        torch = cuda_torch()
        kinds.append(("torch", lambda a: torch.from_numpy(a).cuda()))
    except ImportError:
        pass
    for name in LAUNCHERS:
        with launcher(name):
            _time_small_steps(name, kinds, us_per_call)


def _time_small_steps(launcher_name, kinds, us_per_call):
    for kind, make in kinds:
        x = make(np.ones(10, np.float32))
        g = make(np.full(10, 0.5, np.float32))
        opt = numadam.Adam([x])
        owned = numadam.Adam([make(np.ones(10, np.float32))])
        owned.grads[0][:] = 0.5
        pair = [make(np.full(10, 0.5, np.float32)) for _ in range(2)]
        turn = [0]
        other = numadam.Adam([make(np.ones(10, np.float32))])

        def alternating():      # a new object and address each step
            turn[0] ^= 1
            other.step([pair[turn[0]]])

        for label, call in (("step([g]) same g", lambda: opt.step([g])),
                            ("step([g]) g alternating", alternating),
                            ("step() owned grads", owned.step)):
            us = us_per_call(call)
            record("latency", f"10-element {kind} {label}, {launcher_name} launcher",
                   f"{us:.1f} us", "target <= 10 us" + (" MET" if us <= 10 else " MISSED"))
        # The finiteness check goes through Numba's launcher and waits for
        # its answer: what it costs decides whether it should move to the
        # driver launch too.
        guarded = numadam.Adam([make(np.ones(10, np.float32))], check_finite="skip")
        us = us_per_call(lambda: guarded.step([g]))
        record("latency", f"10-element {kind} step([g]) check_finite='skip', "
               f"{launcher_name} launcher", f"{us:.1f} us", "no target; the check waits")


def time_many_arrays():
    """200 arrays of 1e2..1e6 elements (29 M): numadam against torch's fused Adam.

    Event time over back-to-back steps is throughput: where the host takes
    longer per step than the GPU, it measures the host. The host's own time
    per step is printed next to it.
    """
    torch = cuda_torch()
    sizes = np.geomspace(*SCALE["many"]).astype(np.int64)
    rng = np.random.default_rng(2)
    host = [rng.standard_normal(int(s)).astype(np.float32) for s in sizes]
    tp = [torch.from_numpy(h).cuda() for h in host]
    tg = [torch.from_numpy(h[::-1].copy()).cuda() for h in host]
    topt = torch.optim.Adam(tp, lr=1e-3, fused=True)
    for p, g in zip(tp, tg):
        p.grad = g

    def timed(fn, reps=min(50, SCALE["reps"] * 3)):
        fn()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        host_us = (time.perf_counter() - t0) / reps * 1e6
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / reps * 1e3, host_us

    t_torch, _ = timed(topt.step)
    record("many arrays", f"torch Adam(fused=True), {sizes.size} arrays, "
           f"{int(sizes.sum()) / 1e6:.1f} M elements",
           f"{t_torch:.0f} us")
    variants = []
    mp = [torch.from_numpy(h).cuda() for h in host]
    mopt = numadam.Adam(mp, lr=1e-3)
    variants.append(("numadam step(grads), torch tensors", lambda: mopt.step(tg)))
    op = [torch.from_numpy(h).cuda() for h in host]
    oopt = numadam.Adam(op, lr=1e-3)
    for mine, g in zip(oopt.grads, tg):
        mine.copy_(g)
    variants.append(("numadam step(), owned grads (torch)", oopt.step))
    flat = numadam.cuda.flat_parameters(list(sizes))
    gflat = numadam.cuda.flat_parameters(list(sizes))
    for view, h in zip(flat.params, host):
        view.copy_to_device(h)
    for view, h in zip(gflat.params, host):
        view.copy_to_device(h[::-1].copy())
    fopt = numadam.Adam(flat.params, lr=1e-3)
    variants.append(("numadam step(grads), flat_parameters", lambda: fopt.step(gflat.params)))
    for label, fn in variants:
        gpu_us, host_us = timed(fn)
        record("many arrays", label, f"{gpu_us:.0f} us per step, host {host_us:.0f} us",
               f"speed-up over torch {t_torch / gpu_us:.2f}x; target >= 2.5x"
               + (" MET" if t_torch / gpu_us >= 2.5 else " MISSED"))


FIRST_STEP = """
import time
t0 = time.perf_counter()
import numpy as np
import numadam
from numba import cuda
x = cuda.to_device(np.ones(10, np.float32))
opt = numadam.Adam([x])
opt.step([cuda.to_device(np.ones(10, np.float32))])
cuda.synchronize()
print(f"FIRST {time.perf_counter() - t0:.3f}")
"""


def time_first_step():
    """Import to first finished step in a fresh process, without and with the
    kernel in Numba's disk cache (the step kernel is cache=True)."""
    import glob
    import subprocess
    for folder in ("cuda", "cpu"):      # the step kernel, and the scalars' prepare_uniform
        for path in glob.glob(os.path.join(ROOT, "numadam", folder, "__pycache__",
                                           "kernels*.nb*")):
            os.remove(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for label in ("cold cache", "warm cache"):
        done = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("FIRST ")]
        warned = "cannot cache" in done.stderr.lower()
        record("first step", f"10 elements, fresh process, {label}",
               f"{float(lines[0].split()[1]):.2f} s" if lines else "failed",
               ("Numba could not cache the kernel; " if warned else "")
               + (done.stderr.strip().splitlines()[-1] if done.returncode else ""),
               ok=bool(lines) and done.returncode == 0)


def time_formats():
    gpu_formats.time_formats(record, event_ms, SCALE["n_formats"], SCALE["reps"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="folder for results.json")
    parser.add_argument("--quick", action="store_true", help="checks only, no timings")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, for a run under NUMBA_ENABLE_CUDASIM=1 (CI)")
    options = parser.parse_args()
    if options.smoke:
        SCALE.update(SMOKE)
        numadam.cuda.config.threads_per_block = 32   # the simulator runs a thread per thread
    import numba
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    versions = {"numba": numba.__version__, "numpy": np.__version__,
                "gpu": name.decode() if isinstance(name, bytes) else str(name)}
    print("versions:", versions, flush=True)
    if options.smoke:
        record("ptx", "sm_90 arithmetic", "not run (simulator)")
    else:
        import ptx_check
        status = ptx_check.main()
        record("ptx", "sm_90 arithmetic",
               {0: "ok", ptx_check.SKIP: "not run"}.get(status, "FAILED"), ok=status == 0)
    started = time.perf_counter()
    probe_driver_launch()
    for name in LAUNCHERS:
        with launcher(name):
            check_parity(name)
            check_adapters(name)
    report_driver_launch()
    gpu_formats.check_parity(record, reference_class, SCALE["parity_steps"], options.smoke,
                             "numba")
    check_example()
    record("time", "checks", f"{time.perf_counter() - started:.0f} s")
    if not options.quick:
        for section in (time_first_step, time_bandwidth, time_stream_kernels,
                        lambda: time_bandwidth(amsgrad=True), time_rules_bandwidth,
                        time_small_step,
                        time_many_arrays, time_formats):
            try:
                section()
            except ImportError as error:   # no torch or CuPy here
                record("timing", getattr(section, "__name__", "bandwidth"), "not run",
                       str(error))
            except Exception as error:  # a timing that cannot run is reported
                record("timing", getattr(section, "__name__", "bandwidth"),
                       f"error {type(error).__name__}: {error}", ok=False)
    print("\n| section | what | result | note |\n| --- | --- | --- | --- |")
    for row in ROWS:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if options.out:
        with open(os.path.join(options.out, "gpu_check.json"), "w") as f:
            json.dump(dict(versions=versions, rows=ROWS, failures=FAILURES), f, indent=1)
    if FAILURES:
        print("\nFAILED:\n  " + "\n  ".join(FAILURES))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
