"""The bench's ``compressed`` section: Adam's step in each state format.

At each size, in one interleaved run, Adam's step over float32 parameters
with full, bfloat16 and 8-bit state (rounded to nearest, and stochastically:
``sr``), over bfloat16 parameters and gradients with bfloat16 state
(stochastic rounding), and each format's streaming
kernel (:mod:`numadam.bench.streams`). Every row's GB/s counts its own
format's traffic and its "% stream" compares it with its own format's
kernel. A format that ``numadam.Adam`` does not accept (a ``TypeError``
naming ``state_format``), or bfloat16 parameters without ``ml_dtypes``,
shows as skipped with the reason.
"""

import functools

import numpy as np

import numadam
from numadam.bench.contenders import BETA1, BETA2, EPS, LR, Contender, Unavailable, make_arrays
from numadam.bench.streams import STREAMS, TRAFFIC, bf16_bits

__all__ = ["FORMATS", "CONTENDERS", "STEPS", "annotate", "summary", "state_bytes"]

FORMATS = tuple(TRAFFIC)
# The steps: each format, and the compressed states rounded stochastically
# (same traffic and streaming kernel as their format).
STEP_FORMATS = ("full", "bfloat16", "8bit", "bfloat16 sr", "8bit sr", "bf16 params")
SECTION = "compressed"
# Bytes of state per parameter of each step contender, by (name, elements),
# read from ``opt.state_nbytes`` when the optimizer has it.
state_bytes = {}


def _numadam(sizes, dtype, amsgrad, fmt):
    """The step of ``fmt`` (float32 parameters whatever ``dtype``, no AMSGrad)."""
    params = make_arrays(sizes, np.float32, 1)
    grads = make_arrays(sizes, np.float32, 2)
    kwargs = {}
    if fmt == "bf16 params":
        kwargs = dict(state_format="bfloat16", stochastic_rounding=True, seed=0)
    elif fmt.endswith(" sr"):
        kwargs = dict(state_format=fmt[:-3], stochastic_rounding=True, seed=0)
    elif fmt != "full":
        kwargs = dict(state_format=fmt)
    if fmt == "bf16 params":
        try:
            import ml_dtypes
        except ImportError:
            raise Unavailable("ml_dtypes is not installed") from None
        params = [bf16_bits(p).view(ml_dtypes.bfloat16) for p in params]
        grads = [bf16_bits(g).view(ml_dtypes.bfloat16) for g in grads]
    try:
        opt = numadam.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, **kwargs)
    except TypeError as why:
        if "state_format" not in str(why):
            raise
        raise Unavailable("numadam.Adam does not accept state_format yet") from None
    step = functools.partial(opt.step, grads)
    step()      # allocates the state
    if hasattr(opt, "state_nbytes"):
        state_bytes[STEPS[fmt].name, sum(sizes)] = opt.state_nbytes / sum(sizes)
    return step


STEPS = {fmt: Contender(name, functools.partial(_numadam, fmt=fmt), arrays)
         for fmt, name, arrays in (("full", "numadam full state", 4),
                                   ("bfloat16", "numadam bfloat16 state", 3),
                                   ("8bit", "numadam 8-bit state", 2.5),
                                   ("bfloat16 sr", "numadam bfloat16 state, sr", 3),
                                   ("8bit sr", "numadam 8-bit state, sr", 2.5),
                                   ("bf16 params", "numadam bf16 params + state", 2))}
CONTENDERS = tuple(STEPS.values()) + tuple(STREAMS.values())
_FORMAT_OF = {c.name: fmt for fmt in FORMATS for c in (STEPS[fmt], STREAMS[fmt])}
_FORMAT_OF.update({STEPS[fmt].name: fmt[:-3] for fmt in STEP_FORMATS if fmt.endswith(" sr")})


def _by_size(rows):
    """``{elements: {contender: row}}`` of the section's rows."""
    by_size = {}
    for r in rows:
        if r["section"] == SECTION:
            by_size.setdefault(r["elements"], {})[r["contender"]] = r
    return by_size


def annotate(rows):
    """Give the section's rows their own format's traffic (``gbps``,
    ``bytes_per_element``), its streaming kernel's time over theirs
    (``stream_fraction``) and ``state_bytes_per_param`` where known
    (``vs_numadam`` stays time over the full-state step's)."""
    for n, named in _by_size(rows).items():
        for name, r in named.items():
            fmt = _FORMAT_OF[name]
            r["bytes_per_element"] = TRAFFIC[fmt]
            stream_seconds = named[STREAMS[fmt].name]["seconds"]
            if r["seconds"]:
                r["gbps"] = TRAFFIC[fmt] * n / r["seconds"] / 1e9
                r["stream_fraction"] = (stream_seconds / r["seconds"] if stream_seconds
                                        else None)
            if (name, n) in state_bytes:
                r["state_bytes_per_param"] = state_bytes[name, n]


def _ratio(seconds, slow, fast):
    a, b = seconds.get(slow), seconds.get(fast)
    return f"{a / b:.2f}" if a and b else "-"


def summary(rows):
    """One line per size with the ratios of the speed contract: the bfloat16
    step's speed as a fraction of its streaming kernel's; the full-state
    step's time over each compressed step's; the full-state kernel's time over
    each compressed kernel's (the most any step of that format can gain); and
    the state's bytes per parameter."""
    lines = []
    for n, named in _by_size(rows).items():
        t = {name: r["seconds"] for name, r in named.items()}
        steps = {fmt: STEPS[fmt].name for fmt in STEP_FORMATS}
        streams = {fmt: STREAMS[fmt].name for fmt in FORMATS}
        text = [f"bf16 step at {_ratio(t, streams['bfloat16'], steps['bfloat16'])} of its "
                "stream's speed",
                "full step / " + ", ".join(f"{fmt} {_ratio(t, steps['full'], steps[fmt])}x"
                                           for fmt in STEP_FORMATS[1:]),
                "full stream / " + ", ".join(
                    f"{fmt} {_ratio(t, streams['full'], streams[fmt])}x"
                    for fmt in FORMATS[1:])]
        nbytes = [f"{fmt} {named[steps[fmt]]['state_bytes_per_param']:.3g}"
                  for fmt in STEP_FORMATS if "state_bytes_per_param" in named[steps[fmt]]]
        text.append("state B/param " + (", ".join(nbytes) or "- (no opt.state_nbytes)"))
        lines.append(f"compressed {n:.0e}: " + "; ".join(text))
    return lines
