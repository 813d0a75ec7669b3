"""Run-time knobs, read at every call (never baked into compiled code)."""

import operator
from dataclasses import dataclass
from typing import Optional

__all__ = ["config"]

# The least value of each knob; ``threads`` may also be None.
_LEAST = {"serial_below": 0, "min_task": 1, "threads": 1}


@dataclass
class Config:
    """Tuning knobs of the CPU backend; edit ``numadam.config`` to change them.

    Each knob is checked when it is set: a value that is not an integer
    (``bool`` and ``float`` included) is a ``TypeError`` and one below its
    least value a ``ValueError``, so a bad knob never reaches a step (a step
    that met one would fail after advancing its step count).

    Attributes
    ----------
    serial_below : int, at least 0
        A bucket (the arrays of one group sharing a dtype) with fewer elements
        than this is updated on the calling thread. Handing tasks to numadam's
        worker threads costs about 13 us (median round trip of empty tasks on
        2 threads), and on a shared 2-core machine a 1e5-element step took
        78 us on one thread against 134 us on two: below this size the
        threads cost more than they save.
    min_task : int, at least 1
        The fewest elements a parallel task gets (a bucket's last task may
        get fewer); a bucket is cut into at most four tasks per thread.
    threads : int at least 1, or None
        The most threads one step uses (the caller and numadam's own worker
        threads, see README "How fast"); ``None``: ``numba.get_num_threads()``
        in the stepping thread, so ``NUMBA_NUM_THREADS`` applies, and
        ``numba.set_num_threads`` does in the thread that called it (Numba's
        setting is per thread; a new thread starts at ``NUMBA_NUM_THREADS``). The
        worker threads started for the largest value used stay (asleep) until
        the process exits.
    """

    serial_below: int = 1 << 17
    min_task: int = 1 << 14
    threads: Optional[int] = None

    def __setattr__(self, name, value):
        if name in _LEAST and not (name == "threads" and value is None):
            if isinstance(value, bool):
                raise TypeError(f"numadam.config.{name} must be an integer, got {value!r}")
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"numadam.config.{name} must be an integer, got "
                                f"{value!r}") from None
            if value < _LEAST[name]:
                raise ValueError(f"numadam.config.{name} must be at least {_LEAST[name]}"
                                 f"{' or None' if name == 'threads' else ''}, got {value}")
        super().__setattr__(name, value)


config = Config()
