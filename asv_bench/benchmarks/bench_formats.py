"""Compressed optimizer state: Adam's step in each state format, its speed
against the streaming kernel of its own traffic and against the full-state
step, and the state's bytes per parameter.

A format that this numadam does not offer (``state_format`` refused, or
bfloat16 parameters without ``ml_dtypes``) is skipped: ``setup`` raises
``NotImplementedError``, which asv reports as n/a.
"""

from numadam.bench import compressed
from numadam.bench.contenders import Unavailable
from numadam.bench.streams import STREAMS

from .common import MAX_SIZE, stream_fraction

FORMAT_SIZES = [n for n in (100_000, 10_000_000, 100_000_000) if n <= MAX_SIZE]
FORMATS = list(compressed.FORMATS)


def _step(size, fmt):
    """A warmed-up Adam step of ``fmt`` over ``size`` float32 (or, for "bf16
    params", bfloat16) parameters."""
    try:
        step = compressed.STEPS[fmt].setup([size], "float32", False)
    except Unavailable as why:
        raise NotImplementedError(str(why)) from None
    step()
    return step


class TimeFormatStep:
    """One Adam step in each state format."""

    params = (FORMAT_SIZES, FORMATS)
    param_names = ["size", "format"]
    timeout = 300

    def setup(self, size, fmt):
        self.step = _step(size, fmt)

    def time_step(self, size, fmt):
        self.step()


class TrackFormatBandwidth:
    """The format's streaming kernel's time over its step's time: 1.0 is the
    machine's streaming bandwidth for that format's bytes."""

    params = (FORMAT_SIZES, FORMATS)
    param_names = ["size", "format"]
    unit = "fraction of the format's streaming bandwidth"
    timeout = 300

    def setup(self, size, fmt):
        self.step = _step(size, fmt)
        self.stream = STREAMS[fmt].setup([size], "float32", False)
        self.stream()

    def track_vs_own_stream(self, size, fmt):
        return stream_fraction(self.step, self.stream)


class TrackFormatSpeedup:
    """The full-state step's time over the format's step's, interleaved."""

    params = (FORMAT_SIZES, FORMATS[1:])
    param_names = ["size", "format"]
    unit = "x full state"
    timeout = 300

    def setup(self, size, fmt):
        self.step = _step(size, fmt)
        self.full = _step(size, "full")

    def track_vs_full(self, size, fmt):
        return stream_fraction(self.step, self.full, rounds=7)


class TrackStateBytes:
    """Bytes of optimizer state per parameter (``opt.state_nbytes``)."""

    params = (FORMAT_SIZES, FORMATS)
    param_names = ["size", "format"]
    unit = "bytes per parameter"

    def setup(self, size, fmt):
        compressed.state_bytes.clear()
        _step(size, fmt)
        name = compressed.STEPS[fmt].name
        if (name, size) not in compressed.state_bytes:
            raise NotImplementedError("this numadam's optimizers have no state_nbytes")
        self.nbytes = compressed.state_bytes[name, size]

    def track_state_bytes(self, size, fmt):
        return self.nbytes
