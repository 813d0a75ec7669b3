"""Run-time knobs, read at every call (never baked into compiled code)."""

from dataclasses import dataclass
from typing import Optional

__all__ = ["config"]


@dataclass
class Config:
    """Tuning knobs of the CPU backend; edit ``numadam.config`` to change them.

    Attributes
    ----------
    serial_below : int
        A bucket (the arrays of one group sharing a dtype) with fewer elements
        than this is updated on the calling thread. Handing tasks to numadam's
        worker threads costs about 13 us (median round trip of empty tasks on
        2 threads), and on a shared 2-core machine a 1e5-element step took
        78 us on one thread against 134 us on two: below this size the
        threads cost more than they save.
    min_task : int
        The fewest elements a parallel task gets; a bucket is cut into at most
        one task per thread.
    threads : int or None
        The most threads one step uses (the caller and numadam's own worker
        threads, see README "How fast"); ``None``: ``numba.get_num_threads()``,
        so ``NUMBA_NUM_THREADS`` and ``numba.set_num_threads`` apply.
    """

    serial_below: int = 1 << 17
    min_task: int = 1 << 14
    threads: Optional[int] = None


config = Config()
