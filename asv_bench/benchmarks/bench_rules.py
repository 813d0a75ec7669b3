"""SGD with momentum, Adagrad and RMSprop: step time, and bandwidth against
the streaming kernel that moves the same bytes."""

import numadam
from numadam.bench import rules
from numadam.rules import CLASSES

from .common import MAX_SIZE, SIZES, arrays, stream_fraction

RULES = {"SGD": ("sgd", rules.SGD_HYPER), "Adagrad": ("adagrad", rules.ADAGRAD_HYPER),
         "RMSprop": ("rmsprop", rules.RMSPROP_HYPER)}
# Every registered rule's class but Adam's (bench_step.py times those), with
# the settings above where there are some and its defaults otherwise: a new
# rule is timed here as soon as it is registered.
STEP_CLASSES = [cls for cls in CLASSES if cls not in ("Adam", "AdamW")]
HYPER = {cls: hyper for cls, (_, hyper) in RULES.items()}


class TimeRuleStep:
    """One step on one flat array (10 elements: the fixed cost of a call)."""

    params = (SIZES, ["float32", "float64"], STEP_CLASSES)
    param_names = ["size", "dtype", "cls"]
    timeout = 300

    def setup(self, size, dtype, cls):
        params = arrays([size], dtype, 1)
        self.grads = arrays([size], dtype, 2)
        self.opt = getattr(numadam, cls)(params, **HYPER.get(cls, {}))
        self.opt.step(self.grads)   # compiles (or loads from cache) and allocates the state
        self.opt.step(self.grads)

    def time_step(self, size, dtype, cls):
        self.opt.step(self.grads)


class TrackRuleBandwidth:
    """The streaming kernel's time (3 reads, 2 writes per element, the traffic
    of each rule here) over numadam's step time: 1.0 is the machine's
    streaming bandwidth."""

    params = ([n for n in (100_000, 1_000_000, 10_000_000) if n <= MAX_SIZE] or [MAX_SIZE],
              list(RULES))
    param_names = ["size", "cls"]
    unit = "fraction of streaming bandwidth"
    timeout = 300

    def setup(self, size, cls):
        rule = rules.RULES[RULES[cls][0]]
        self.step = rule.contenders[0].setup([size], "float32", False)
        self.stream = rule.stream.setup([size], "float32", False)
        for fn in (self.step, self.stream, self.step, self.stream):
            fn()

    def track_stream_fraction(self, size, cls):
        return stream_fraction(self.step, self.stream)
