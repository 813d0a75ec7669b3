"""numadam's own worker threads for the CPU kernels.

A big bucket is cut into contiguous tasks, run by the calling thread and a
small persistent pool of Python threads, each task a serial ``nogil`` kernel
call (see :class:`_Job` for who runs which). Between steps the workers sleep
in a blocking queue get (a futex wait): they use no CPU, so nothing competes
with the user's own code, notably a threaded BLAS that computes the gradient.
Candidates measured on the bench's fit loop (a matrix product on OpenBLAS's
threads, then the step) at 1e5 elements, in ms per iteration, on a shared
machine: Numba's pool 15.6; with ``OMP_WAIT_POLICY=passive`` 0.47,
``GOMP_SPINCOUNT=0`` 0.40, ``NUMBA_NUM_THREADS=1`` 0.62, the ``workqueue``
layer 0.58; these threads 0.15 (BENCHMARKS.md, "Fit loop").

Numba's ``parallel=True`` kernels run on its threading layer instead, which
here is libgomp (OpenMP): after every parallel region its workers keep
spinning (``GOMP_SPINCOUNT``, 300,000 spins by default) before they sleep.
On a 2-core machine, a fit loop whose gradient was ``(X*X) @ C`` (OpenBLAS,
2 threads, 1e5 float32 elements) then took 8.2 ms per iteration against
0.10 ms for the gradient and 0.06 ms for the step alone: the spinning OpenMP
worker and OpenBLAS's worker (which also spins after its call) took each
other's cores until the scheduler preempted them, and per-thread CPU time
showed the OpenMP worker busy for 1.7 of 2.6 s of wall time. The threading
layer and its spin policy are global to the process (``OMP_WAIT_POLICY`` is
read once when libgomp loads, ``numba.config.THREADING_LAYER`` affects every
user of Numba), so numadam leaves them alone and uses these threads instead.

Tasks are deterministic (task ``i`` always covers the same elements) and the
update is elementwise, so neither the pool nor its size changes a bit of the
result. When two Python threads step at once, the second one finds the pool
busy and runs its tasks one after another on its own thread.
"""

import _signal
import os
import threading
from queue import SimpleQueue

import numba

from numadam.core.config import config

__all__ = ["task_bounds", "start_workers", "run_tasks", "thread_count", "uninterrupted"]

TASKS_PER_THREAD = 4


def thread_count():
    """Threads a parallel step may use: ``config.threads`` or Numba's count."""
    return config.threads or numba.get_num_threads()


def task_bounds(total, min_task=None, threads=None):
    """``(ntasks, chunk)``: the cut of ``total`` elements into tasks.

    ``TASKS_PER_THREAD`` tasks per thread and none under ``min_task``
    elements; ``chunk`` (the elements of every task but the last) is rounded
    up to 16 elements to keep task boundaries on cache lines.
    """
    min_task = config.min_task if min_task is None else min_task
    threads = thread_count() if threads is None else threads
    ntasks = max(1, min(threads * TASKS_PER_THREAD, total // max(min_task, 1)))
    chunk = ((total + ntasks - 1) // ntasks + 15) // 16 * 16
    return ntasks, chunk


class _Job:
    """The tasks of one call, shared by the caller and the workers.

    Thread ``p`` of ``nthreads`` owns a contiguous block of tasks and runs
    them in order, so in a quiet process each thread touches the same memory
    at every step (the pages it first touched). A thread that is done with
    its block takes the unclaimed tasks of others, last first: a worker that
    the OS has not scheduled yet (a busy machine, a BLAS thread still
    spinning) costs the step nothing, since the caller runs its tasks.
    """

    def __init__(self, task, ntasks, nthreads):
        self.task = task
        self.ntasks = ntasks
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)
        self.claimed = bytearray(ntasks)
        self.own_next = [p * ntasks // nthreads for p in range(nthreads)]
        self.own_end = self.own_next[1:] + [ntasks]
        self.unclaimed = ntasks
        self.running = 0
        self.error = None

    def _claim(self, p):
        with self.lock:
            if not self.unclaimed:
                return -1
            index = -1
            while self.own_next[p] < self.own_end[p]:
                i = self.own_next[p]
                self.own_next[p] += 1
                if not self.claimed[i]:
                    index = i
                    break
            if index < 0:
                index = self.claimed.rindex(0)
            self.claimed[index] = 1
            self.unclaimed -= 1
            self.running += 1
            return index

    def work(self, p):
        """Run tasks as thread ``p``, its own block first, until none is left."""
        while True:
            index = self._claim(p)
            if index < 0:
                return
            try:
                self.task(index)
            except BaseException as error:     # re-raised on the calling thread
                with self.lock:
                    self.error = self.error or error
            finally:
                with self.lock:
                    self.running -= 1
                    if not self.running:
                        self.finished.notify_all()

    def wait(self):
        """Block until no task is running, then re-raise the first error.

        An exception raised in the waiting thread meanwhile (Ctrl-C on the
        main thread) is held until then: returning earlier would leave
        workers writing the arrays while the caller goes on.
        """
        interrupted = None
        with self.lock:
            while self.running:
                try:
                    self.finished.wait()
                except BaseException as error:   # wait() re-acquired the lock
                    interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted
        if self.error is not None:
            raise self.error


class _Pool:
    def __init__(self):
        self._reset()

    def _reset(self):
        self.lock = threading.Lock()    # one call at a time wakes the workers
        self.growing = threading.Lock()
        self.queues = []

    def start(self, nthreads):
        """Start the workers a call on ``nthreads`` threads needs (the caller
        is one); a ``RuntimeError`` where the OS refuses a thread."""
        if len(self.queues) >= nthreads - 1:
            return
        with self.growing:
            while len(self.queues) < nthreads - 1:
                queue = SimpleQueue()
                threading.Thread(target=self._serve, args=(queue, len(self.queues) + 1),
                                 name="numadam-worker", daemon=True).start()
                self.queues.append(queue)

    def _serve(self, queue, p):
        while True:
            queue.get().work(p)          # sleeps in the kernel, never spins

    def run(self, task, ntasks, nthreads):
        """Call ``task(i)`` for every ``i < ntasks`` on at most ``nthreads``
        threads (the caller is one) and return when all are done. A task that
        raises does not stop the others (each covers its own elements); the
        first exception is re-raised here once every task has finished."""
        nthreads = min(nthreads, ntasks)
        if nthreads <= 1 or not self.lock.acquire(blocking=False):
            # One thread, or another thread is stepping with the pool: run
            # here (the tasks and so the results are the same).
            for index in range(ntasks):
                task(index)
            return
        try:
            self.start(nthreads)
            job = _Job(task, ntasks, nthreads)
            for queue in self.queues[:nthreads - 1]:
                queue.put(job)
            try:
                job.work(0)
            finally:
                job.wait()
        finally:
            self.lock.release()


_pool = _Pool()
# A forked child has none of its parent's threads: it starts a pool of its own.
os.register_at_fork(after_in_child=_pool._reset)


def start_workers(ntasks, nthreads=None):
    """Start the workers that :func:`run_tasks` of ``ntasks`` tasks will use
    and return its thread count (``nthreads``: :func:`thread_count`). A step
    calls it before it touches an array, so that an OS that refuses a thread
    (a ``RuntimeError``) fails the step before its step count advances."""
    nthreads = min(thread_count() if nthreads is None else nthreads, ntasks)
    _pool.start(nthreads)
    return nthreads


def run_tasks(task, ntasks, nthreads=None):
    """Run ``task(0) ... task(ntasks - 1)`` on the caller and the pool
    (``nthreads``: :func:`thread_count`); see :class:`_Job`."""
    _pool.run(task, ntasks, thread_count() if nthreads is None else nthreads)


def uninterrupted(call, *args):
    """``call(*args)`` with Ctrl-C (SIGINT's Python handler) held until it returns.

    A step runs Python code between its tasks, where a signal handler may
    raise: a ``KeyboardInterrupt`` there would leave the step count advanced
    and some tasks not run (38 of 60 steps of 4e6 elements interrupted at
    random times, without this). Held back, it is raised once the step is
    whole, by the handler that was installed. Only the main thread runs
    signal handlers. ``_signal`` rather than ``signal``: the latter converts
    handlers to enums through a caught ``ValueError`` (10 us a pair of calls
    against 0.5 us); the whole costs a step 1.7 us.
    """
    if threading.current_thread() is not threading.main_thread():
        return call(*args)
    handler = _signal.getsignal(_signal.SIGINT)
    if not callable(handler):           # SIG_DFL, SIG_IGN or set outside Python
        return call(*args)
    caught = []
    _signal.signal(_signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        return call(*args)
    finally:
        _signal.signal(_signal.SIGINT, handler)
        if caught:
            handler(_signal.SIGINT, caught[0])
