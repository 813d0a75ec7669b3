"""``python -m numadam bench``: numadam against what users run today.

Every scenario builds its contenders (see :mod:`numadam.bench.contenders`),
warms them up, then takes one timing sample of each contender per round, the
order rotating from round to round, so that drift of the machine (other
processes, frequency changes) spreads over all contenders instead of
favouring one. Scenarios too big to keep every contender in memory at once
build each contender afresh in every round instead. The table reports
medians over rounds.

Effective bandwidth counts the traffic of an ideal single pass: for Adam 7
array accesses per element (4 reads, 3 writes; 9 with AMSGrad), 28 bytes per
float32 element; for SGD with momentum, Adagrad and RMSprop 5 (3 reads, 2
writes). "% stream" compares with the in-process streaming kernel that moves
exactly that traffic, at the same size and in the same run; a
figure that no step can reach (a baseline slowed down by other processes) or
samples spread widely are flagged with a warning under the table.

The "fit" scenario times whole iterations of a fitting loop whose gradient is
a matrix product on NumPy's threaded BLAS (see
:func:`numadam.bench.contenders.fit_gradient`): with numadam, with a NumPy
Adam, and the gradient and numadam's step alone, so that it shows whether
numadam's threads slow the user's own code down.

The "sgd", "adagrad" and "rmsprop" scenarios time one rule each, at the
sweep's sizes and ``--big``, against the 3-read, 2-write streaming kernel, an
in-place NumPy loop and torch (fused where torch has a fused kernel), and a
10-element step of numadam and torch.

The "clipping" scenario (only with ``--sections clipping``) times Adam's
step at the sweep's sizes and ``--big``: plain, with ``max_grad_norm`` (and
``clip_value``) fused, and after a separate NumPy clip pass (the norm in
float32 or in float64, a multiply into a buffer, then numadam's plain step).

The "compressed" scenario (only with ``--sections compressed``, at the
``--sizes`` given) times Adam's step over float32 parameters with full,
bfloat16 and 8-bit state, and over bfloat16 parameters with bfloat16 state,
each against the streaming kernel of its own format's traffic (see
:mod:`numadam.bench.compressed`).
"""

import gc
import json
import os
import platform
import sys
import time
from collections import namedtuple

import numpy as np

import numadam

from numadam.bench import compressed as bz
from numadam.bench import contenders as bc
from numadam.bench import rules as br
from numadam.cpu.pool import thread_count

__all__ = ["add_arguments", "main"]

DEFAULT_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)   # the sweep's and the fit's
QUICK_SIZES = (10**3, 10**5, 10**6)
SWEEP = ("numadam", "stream 4r/3w kernel", "NumPy naive", "NumPy in-place",
         "torch for-loop", "torch foreach", "torch fused", "optax adam jit")
TINY = ("numadam", "numadam step() owned grads", "torch fused", "optax adam jit",
        "bare njit call (no-op)")
# The fit scenario: whole iterations of a loop whose gradient runs on NumPy's
# threaded BLAS, and the gradient and each update timed alone, so that the
# table shows what numadam adds to a user's loop beyond its own step (and,
# as a control, what the same loop adds to a NumPy Adam's step).
FIT = ("numadam loop", "NumPy Adam loop", "gradient only", "numadam", "NumPy Adam step")
SECTIONS = ("sweep", "big", "tiny", "mixed", "fit") + tuple(br.RULES)
# Run when asked for (--sections clipping): at 1e8 its contenders do not fit
# in memory together and are built afresh in every round.
# compressed: runs at --sizes only, so that 1e8 is timed only when asked for.
EXTRA_SECTIONS = ("clipping", "compressed")
# A contender at more than this multiple of the streaming kernel's speed (or
# an in-process kernel past it) means a sample of the baseline was hit by
# other work on the machine, not that numadam outran memory.
PLAUSIBLE_STREAM_FRACTION = 1.3
# Samples whose interquartile range exceeds this fraction of their median.
NOISY_SPREAD = 0.5
MEMORY_BUDGET = 3 << 30     # bytes of contender state kept alive at once


def mixed_sizes(count=200, low=100, high=100_000, seed=0):
    """``count`` sizes spread log-uniformly over [low, high] (2.8 million in all)."""
    sizes = np.geomspace(low, high, count).round().astype(np.int64)
    np.random.default_rng(seed).shuffle(sizes)
    return [int(n) for n in sizes]


# ------------------------------------------------------------------ timing
def _time_calls(fn, number):
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def _calibrate(fn, target):
    """Calls per sample so that one sample lasts about ``target`` seconds."""
    number = 1
    while True:
        elapsed = _time_calls(fn, number)
        if elapsed >= target or number >= 1 << 20:
            return number
        number = min(1 << 20, number * max(2, min(100, int(target / max(elapsed, 1e-9)))))


class _Progress:
    def __init__(self, total, stream):
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def __call__(self, text):
        self.done += 1
        line = f"[{self.done}/{self.total}] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _fits(contenders, sizes, dtype):
    """Whether every contender's arrays fit in memory at once."""
    per_element = sum(c.arrays_per_element for c in contenders)
    return per_element * sum(sizes) * np.dtype(dtype).itemsize <= MEMORY_BUDGET


def _set_up(contender, sizes, dtype, amsgrad, missing):
    """The contender's step function, called once to warm it up (JIT, caches),
    or None (and the reason in ``missing``) when its library is absent."""
    try:
        fn = contender.setup(sizes, dtype, amsgrad)
    except bc.Unavailable as why:
        missing[contender.name] = str(why)
        return None
    fn()
    return fn


def measure(contenders, sizes, dtype, amsgrad, rounds, target, progress, label):
    """Median seconds per step of each contender (``None``: unavailable, with why)."""
    samples = {c.name: [] for c in contenders}
    missing = {}
    if _fits(contenders, sizes, dtype):
        steps = {}
        for c in contenders:
            progress(f"{label}: set up {c.name}")
            fn = _set_up(c, sizes, dtype, amsgrad, missing)
            if fn is None:
                continue
            fn()
            steps[c.name] = (fn, _calibrate(fn, target))
        live = [c for c in contenders if c.name in steps]
        progress(f"{label}: {rounds} interleaved rounds")
        for r in range(rounds):
            for c in live[r % len(live):] + live[:r % len(live)] if live else ():
                fn, number = steps[c.name]
                samples[c.name].append(_time_calls(fn, number) / number)
        del steps
    else:
        per_visit = max(2, rounds // 3)
        for r in range(3):
            for c in contenders[r:] + contenders[:r]:
                if c.name in missing:
                    continue
                progress(f"{label}: {c.name} (one at a time, pass {r + 1}/3)")
                fn = _set_up(c, sizes, dtype, amsgrad, missing)
                if fn is None:
                    continue
                samples[c.name].extend(_time_calls(fn, 1) for _ in range(per_visit))
                del fn
                gc.collect()
    gc.collect()
    return {c.name: (float(np.median(samples[c.name])) if samples[c.name] else None,
                     missing.get(c.name), _spread(samples[c.name])) for c in contenders}


def _spread(samples):
    """Interquartile range over median of ``samples`` (None for fewer than 3)."""
    if len(samples) < 3:
        return None
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / median) if median > 0 else None


# ---------------------------------------------------------------- scenarios
def _rows(section, sizes, dtype, amsgrad, results, baseline, stream_name="stream 4r/3w kernel",
          stream_time=None, accesses=None, per_call=False):
    n = sum(sizes)
    itemsize = np.dtype(dtype).itemsize
    nbytes = (accesses * itemsize if accesses else bc.stream_traffic(itemsize, amsgrad)) * n
    base = results.get(baseline, (None,))[0]
    if section == "fit":    # iterations of a loop, not a pass over memory
        nbytes = 0
    if stream_time is None:
        stream_time = results.get(stream_name, (None,))[0]
    rows = []
    for name, (seconds, why, spread) in results.items():
        rows.append(dict(
            section=section, elements=n, arrays=len(sizes), dtype=str(np.dtype(dtype)),
            amsgrad=amsgrad, contender=name, seconds=seconds, skipped=why, spread=spread,
            gbps=nbytes / seconds / 1e9 if seconds and nbytes else None,
            stream_fraction=(stream_time / seconds if seconds and stream_time and nbytes
                             else None),
            vs_numadam=seconds / base if seconds and base else None))
        if per_call:    # the fixed cost of a call, not a pass over memory
            rows[-1]["per_call"] = True
    return rows


# One measurement of the plan: its contenders timed together at ``sizes``;
# ``stream`` names the streaming kernel that "% stream" compares with and
# ``accesses`` the array accesses per element (None: Adam's).
_Measurement = namedtuple("_Measurement", "section label contenders sizes baseline stream "
                          "accesses per_call", defaults=("stream 4r/3w kernel", None, False))


def _plan(args):
    """A :data:`_Measurement` for every measurement."""
    pick = [bc.CONTENDERS[name] for name in SWEEP if name in args.contenders]
    plan = []
    if "sweep" in args.sections:
        for n in args.sizes:
            plan.append(("sweep", f"{n:.0e} x1", pick, [n], "numadam"))
    if "big" in args.sections:
        names = ("numadam", "stream 4r/3w kernel", "torch fused")
        plan.append(("big", f"{args.big:.0e} x1", [bc.CONTENDERS[x] for x in names],
                     [args.big], "numadam"))
    if "tiny" in args.sections:
        plan.append(("tiny", "10 x1", [bc.CONTENDERS[x] for x in TINY], [10], "numadam"))
    if "mixed" in args.sections:
        sizes = mixed_sizes()
        names = ("numadam", "torch fused", "NumPy in-place")
        many = [bc.CONTENDERS[x] for x in names] + [bc.numadam_flat]
        plan.append(("mixed", f"{len(sizes)} mixed", many, sizes, "numadam"))
        plan.append(("mixed", "same total x1", [bc.CONTENDERS[x] for x in names],
                     [sum(sizes)], "numadam"))
    if "fit" in args.sections:
        for n in args.sizes:
            plan.append(("fit", f"{n:.0e} x1", [bc.CONTENDERS[x] for x in FIT], [n],
                         "numadam loop"))
    if "clipping" in args.sections:
        for n in dict.fromkeys([*args.sizes, args.big]):
            plan.append(("clipping", f"{n:.0e} x1", list(bc.CLIPPING), [n], "numadam"))
    if "compressed" in args.sections:
        for n in args.sizes:
            plan.append(("compressed", f"{n:.0e} x1", list(bz.CONTENDERS), [n],
                         bz.STEPS["full"].name, bz.STREAMS["full"].name))
    for name, rule in br.RULES.items():
        if name not in args.sections:
            continue
        baseline = rule.contenders[0].name
        for n in dict.fromkeys([*args.sizes, args.big]):
            plan.append((name, f"{n:.0e} x1", list(rule.contenders), [n], baseline,
                         rule.stream.name, rule.accesses))
        plan.append((name, "10 x1", list(rule.tiny), [10], baseline, rule.stream.name,
                     rule.accesses, True))
    return [_Measurement(*m) for m in plan]


def run(args, out=sys.stdout, err=sys.stderr):
    plan = _plan(args)
    steps = sum(len(m.contenders) + 1 if _fits(m.contenders, m.sizes, args.dtype)
                else 3 * len(m.contenders) for m in plan)
    progress = _Progress(steps, err)
    rows = []
    flat_numadam = None
    for section, label, contenders, sizes, baseline, stream, accesses, per_call in plan:
        results = measure(contenders, sizes, args.dtype, args.amsgrad, args.rounds,
                          args.target, progress, f"{section} {label}")
        if section == "mixed" and len(sizes) > 1:
            flat_numadam = results.get(bc.numadam_flat.name, (None,))[0]
        if section == "mixed" and len(sizes) == 1:
            results = {f"{k} (one flat array)": v for k, v in results.items()}
            baseline = "numadam (one flat array)"
        rows.extend(_rows(section, sizes, args.dtype, args.amsgrad, results, baseline,
                          stream_name=stream, accesses=accesses, per_call=per_call))
    progress.close()
    _fit_summary(rows)
    bz.annotate(rows)
    if flat_numadam:
        # The mixed scenario's question: how far are 200 arrays from one flat one?
        many = [r for r in rows if r["section"] == "mixed" and r["arrays"] > 1
                and r["contender"] != bc.numadam_flat.name]
        for r in many:
            if r["seconds"]:
                r["vs_flat_numadam"] = r["seconds"] / flat_numadam
    return rows


def _fit_summary(rows):
    """Add to each fit scenario's "numadam loop" row what the targets compare:
    the loop against the NumPy Adam loop, and against the gradient plus
    numadam's step, each timed alone (``vs_parts``: 1.0 is no interference);
    and the NumPy Adam loop's own ``vs_parts``, the control."""
    by_size = {}
    for r in rows:
        if r["section"] == "fit" and r["seconds"]:
            by_size.setdefault(r["elements"], {})[r["contender"]] = r
    for named in by_size.values():
        loop, numpy_loop = named.get("numadam loop"), named.get("NumPy Adam loop")
        gradient, step = named.get("gradient only"), named.get("numadam")
        if loop and numpy_loop:
            loop["vs_numpy_loop"] = loop["seconds"] / numpy_loop["seconds"]
        if loop and gradient and step:
            loop["vs_parts"] = loop["seconds"] / (gradient["seconds"] + step["seconds"])
        numpy_step = named.get("NumPy Adam step")
        if numpy_loop and gradient and numpy_step:
            numpy_loop["vs_parts"] = numpy_loop["seconds"] / (gradient["seconds"] +
                                                              numpy_step["seconds"])


def warnings_for(rows):
    """Lines that flag figures not to be trusted: a baseline that another
    process slowed down (a contender implausibly faster than the streaming
    kernel), or samples spread too widely for their median to mean much."""
    out = []
    for r in rows:
        where = f"{r['section']} {r['elements']:.0e} {r['contender']}"
        fraction = r.get("stream_fraction")
        if fraction and fraction > PLAUSIBLE_STREAM_FRACTION:
            out.append(f"warning: {where} ran at {100 * fraction:.0f}% of the streaming "
                       "kernel's speed, which moves the same bytes: that baseline is "
                       "implausible (the machine was busy while it ran); rerun on a quiet "
                       "machine or with more --rounds")
        spread = r.get("spread")
        if spread and spread > NOISY_SPREAD:
            out.append(f"warning: {where}: samples spread over {100 * spread:.0f}% of "
                       "their median (interquartile range): the machine was busy")
    return out


# ------------------------------------------------------------------ output
def _fmt_time(seconds):
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows):
    head = ("scenario", "elements", "arrays", "contender", "time/step", "GB/s", "% stream",
            "x numadam")
    body = []
    for r in rows:
        if r["skipped"]:
            body.append((r["section"], str(r["elements"]), str(r["arrays"]), r["contender"],
                         "skipped: " + r["skipped"], "", "", ""))
            continue
        small = r["section"] in ("tiny", "fit") or r.get("per_call")
        body.append((r["section"], str(r["elements"]), str(r["arrays"]), r["contender"],
                     _fmt_time(r["seconds"]), "-" if small else _fmt(r["gbps"], ".1f"),
                     "-" if small else _fmt(r["stream_fraction"] and
                                            100 * r["stream_fraction"], ".0f"),
                     _fmt(r["vs_numadam"], ".2f")))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(lines)


def environment():
    import numba
    versions = {"numadam": numadam.__version__, "numba": numba.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    for name in ("torch", "jax", "optax"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(versions=versions, cpu=cpu, cpus=os.cpu_count(),
                numba_threads=numba.get_num_threads(), numadam_threads=thread_count(),
                platform=platform.platform())


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    sweep = [r for r in rows if r["section"] == "sweep" and r["gbps"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["contender"] for r in sweep):
        pts = [(r["elements"], r["gbps"]) for r in sweep if r["contender"] == name]
        ax.plot(*zip(*pts), marker="o", label=name,
                linestyle="--" if name.startswith("stream") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("elements (one array)")
    ax.set_ylabel("effective GB/s (28 B/element float32)")
    ax.set_title("Adam step throughput")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot saved to {path}"


# --------------------------------------------------------------------- CLI
def _size_list(text):
    return [int(float(x)) for x in text.split(",") if x]


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and rounds; well under a minute")
    parser.add_argument("--sizes", type=_size_list, help="comma-separated sizes, e.g. 1e3,1e6")
    parser.add_argument("--big", type=lambda s: int(float(s)),
                        help="size of the one-big-array scenario, also timed for each rule "
                        "(default 1e8; 1e7 with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--amsgrad", action="store_true")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (median over them)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"any of {','.join(SECTIONS + EXTRA_SECTIONS)} (comma-separated; "
                        f"default: all but {','.join(EXTRA_SECTIONS)})")
    parser.add_argument("--contenders", help="comma-separated names for the sweep "
                        f"(default: all of {', '.join(SWEEP)})")
    parser.add_argument("--plot", metavar="FILE.png", help="save throughput against size")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def main(args):
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.big = args.big or (10**7 if args.quick else 10**8)
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.target = 0.002 if args.quick else 0.01
    args.sections = [s for s in args.sections.split(",") if s]
    args.contenders = args.contenders.split(",") if args.contenders else list(SWEEP)
    unknown = [s for s in args.sections if s not in SECTIONS + EXTRA_SECTIONS]
    unknown += [c for c in args.contenders if c not in SWEEP]
    if unknown:
        raise SystemExit(f"numadam bench: unknown section or contender: {', '.join(unknown)}")
    env = environment()
    print(f"numadam bench: {env['cpu']}, {env['cpus']} CPUs, {env['numadam_threads']} numadam "
          f"threads, {env['numba_threads']} Numba threads; {args.dtype}, "
          f"amsgrad={args.amsgrad}, median of {args.rounds} "
          "interleaved rounds")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    sys.stdout.flush()
    start = time.perf_counter()
    rows = run(args)
    print(format_table(rows))
    print("GB/s: effective, at 7 accesses of the dtype per element for Adam (9 with "
          "AMSGrad), 5 for sgd, adagrad and rmsprop. % stream: against the streaming kernel "
          "with the same traffic (4r/3w; 3r/2w for sgd, adagrad, rmsprop) at the same size, "
          "this run. x numadam: time / numadam's time (mixed: against the same layout; fit: "
          "against the numadam loop; sgd, adagrad, rmsprop: against numadam's same rule).")
    if any(r["section"] == "compressed" for r in rows):
        print("compressed: GB/s and % stream at each format's own bytes per element and "
              "against its own streaming kernel; x numadam against the full-state step.")
    for r in rows:
        if "vs_flat_numadam" in r:
            print(f"mixed: {r['contender']} over {r['arrays']} arrays takes "
                  f"{r['vs_flat_numadam']:.2f}x numadam's time on one flat array")
        if "vs_parts" in r and r["contender"] == "numadam loop":
            control = next((c["vs_parts"] for c in rows if c["section"] == "fit"
                            and c["elements"] == r["elements"] and "vs_parts" in c
                            and c["contender"] == "NumPy Adam loop"), None)
            print(f"fit {r['elements']:.0e}: the numadam loop takes "
                  f"{_fmt(r.get('vs_numpy_loop'), '.2f')}x the NumPy Adam loop's time and "
                  f"{r['vs_parts']:.2f}x the gradient's plus numadam's step's, each timed "
                  "alone (1.00: numadam adds its step and nothing more; the NumPy Adam "
                  f"loop: {_fmt(control, '.2f')}x its parts)")
    for line in bz.summary(rows):
        print(line)
    warnings = warnings_for(rows)
    for line in warnings:
        print(line)
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.plot:
        print(plot(rows, args.plot))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, rows=rows, warnings=warnings), f, indent=1)
    return 0

