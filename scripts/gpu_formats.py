"""Compressed state on a GPU, for scripts/gpu_check.py: exactness and timings.

* parity: one configuration of each rule of tests/optim_configs.py (every
  rule with ``--smoke``'s tiny budget; all of them otherwise), float32
  parameters, ``state_format="bfloat16"`` and ``"8bit"``: the GPU's
  parameters and stored state (bfloat16 bits; 8-bit codes and absmax) are
  bit-identical to numadam's CPU update. The shapes put an 8-bit block
  boundary, a partial last block, a parameter under the 8-bit threshold and
  one of a single element in one optimizer.
* timing: Adam's ``opt.step([g])`` at ``n`` float32 elements with full,
  bfloat16 and 8-bit state, and each one's speed-up over full state (the
  issue's targets: 1.2x for bfloat16, 1.3x for 8-bit at 1e8).
"""

import numpy as np
from numba import cuda

import numadam
import optim_configs as oc

# The 8-bit bucket holds (64, 72) (18 whole blocks) then 4100 (a partial
# last block); 300 and 1 are under MIN_8BIT and keep full state.
SHAPES = [(64, 72), (4100,), (300,), (1,)]
# --smoke (the simulator runs a Python thread per CUDA thread): one 8-bit
# parameter with a partial block, and one under the threshold.
SMOKE_SHAPES = [(4100,), (5,)]
FORMATS = ("bfloat16", "8bit")


def _configs(smoke):
    """Configurations to check: the first of each rule under ``smoke``."""
    names, seen = [], set()
    for name, config in oc.CONFIGS.items():
        if "groups" in config:          # they index the registry's shapes
            continue
        if smoke and config["cls"] in seen:
            continue
        seen.add(config["cls"])
        names.append(name)
    return names


def _same(cpu, gpu, host, dev):
    """Differing parameters and stored state arrays, by name."""
    bad = [f"param {k}" for k, (h, d) in enumerate(zip(host, dev))
           if not np.array_equal(h.view(np.uint32), d.copy_to_host().view(np.uint32))]
    sc, sg = cpu.state_dict()["state"], gpu.state_dict()["state"]
    for i, entry in sc.items():
        for key, value in entry.items():
            got = sg.get(i, {}).get(key)
            if key == "step":
                same = got == value
            else:
                same = (isinstance(got, np.ndarray) and got.dtype == value.dtype
                        and np.array_equal(got.view(np.uint8), value.view(np.uint8)))
            if not same:
                bad.append(f"{i} {key}")
    return bad


def check_parity(record, reference_class, steps, smoke, launcher_name):
    """Record one parity row per configuration and format."""
    rng = np.random.default_rng(7)
    shapes = SMOKE_SHAPES if smoke else SHAPES
    for name in _configs(smoke):
        config = oc.CONFIGS[name]
        cls = getattr(numadam, config["cls"])
        for fmt in FORMATS:
            params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            host = [p.copy() for p in params]
            dev = [cuda.to_device(p) for p in params]
            cpu = reference_class(cls)(host, state_format=fmt, **config["kwargs"])
            gpu = cls(dev, state_format=fmt, **config["kwargs"])
            for t in range(steps):
                gs = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 2, s)).astype(np.float32)
                      for s in shapes]
                if t == 1:
                    gs[1] = None    # a parameter without a gradient for one step
                cpu.step(gs)
                gpu.step([None if g is None else cuda.to_device(g) for g in gs])
            bad = _same(cpu, gpu, host, dev)
            record("format parity", f"{name} float32 {fmt}, {launcher_name} launcher",
                   "bit-exact" if not bad else f"differ: {', '.join(bad[:6])}",
                   f"{steps} steps", ok=not bad)


def time_formats(record, event_ms, n, reps):
    """Adam's step at ``n`` float32 elements with each state format."""
    rng = np.random.default_rng(3)
    chunk = rng.standard_normal(1 << 16).astype(np.float32)
    p = cuda.to_device(np.resize(chunk, n))
    g = cuda.to_device(np.resize(chunk[::-1] * np.float32(1e-3), n))
    # bytes moved per element: p, g read and p written (12), then each of
    # two state rows read and written
    traffic = {"full": 12 + 16, "bfloat16": 12 + 8, "8bit": 12 + 4 + 16 / 256}
    times = {}
    for fmt in ("full",) + FORMATS:
        opt = numadam.Adam([p], lr=1e-6, state_format=fmt)
        opt.step([g])
        times[fmt] = ms = event_ms(lambda: opt.step([g]), reps)
        note = f"{ms:.3f} ms, {traffic[fmt] * n / ms / 1e9:.2f} TB/s effective"
        if fmt != "full":
            speedup = times["full"] / ms
            target = 1.2 if fmt == "bfloat16" else 1.3
            note += (f", {speedup:.2f}x full state; target >= {target}x "
                     + ("MET" if speedup >= target else "MISSED"))
        record("format timing", f"adam {n} f32 {fmt} state opt.step([g])",
               f"{ms:.3f} ms", note + f"; state {opt.state_nbytes / n:.3f} B/element")
        opt = None
