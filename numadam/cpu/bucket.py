"""The host bucket: NumPy parameters of one group and dtype, stepped by the
CPU kernels of the group's rule (its twin is :mod:`numadam.cuda.bucket`)."""

import numpy as np
from numba import typeof
from numba.core.dispatcher import Dispatcher

from numadam.core.bucket import BucketBase
from numadam.core.config import config
from numadam.cpu import kernels as _cpu
from numadam.cpu.kernels import LIVE, OFFSET, PTR_G, SIZE
from numadam.cpu.norm import square_sum_bins
from numadam.cpu.pool import run_tasks, start_workers, task_bounds, thread_count, uninterrupted

class Bucket(BucketBase):
    """Parameters ``params`` (global indices ``indices``) of group ``group_index``."""

    on_device = False   # DeviceBucket (numadam.cuda.bucket) has the same interface
    unready = False     # see ready()
    _serial_state = None    # the state array _serial was resolved for
    _serial = None          # the compiled step_serial for this bucket's argument types

    def __init__(self, rule, params, indices, group_index):
        params = list(params)
        super().__init__(rule, params, indices, group_index, params[0].dtype,
                         [_cpu.address(p) for p in params], [p.shape for p in params])
        self.like = np.empty(0, self.dtype)  # carries the dtype into kernels
        # The table's words, for writing one gradient address: an item
        # assignment through a memoryview costs 1,100 instructions against
        # 1,460 for NumPy's ``table[0, PTR_G] = a`` (callgrind).
        self.words = memoryview(self.table).cast("B").cast("q")
        self.grad_buffer = None
        self.kernels = _cpu.kernels(rule)   # compiled at their first call

    # ----------------------------------------------------------------- state
    def allocate(self, args, live=False):
        """Create the state under kernel args ``args``: zeros at the first
        step, as torch creates it lazily, or the rule's initial values at
        construction (``live``: every parameter has state from the start).

        ``np.zeros`` leaves the pages untouched until the kernel's threads
        write them, so each thread's share lands in its own memory.
        """
        values = self.rule.initial(args.values)
        self.state = self.initial_state(args, values)
        self.rows = args.rows
        if live:
            self.table[:, LIVE] = 1

    def view(self, k, row):
        """Parameter ``k``'s slice of state row ``row``, in the parameter's shape."""
        offset = self.table[k, OFFSET]
        return self.state[row, offset:offset + self.table[k, SIZE]].reshape(
            self.params[k].shape)

    host_view = view

    # ------------------------------------------------------------- gradients
    def zeros_like(self, row):
        """A zero gradient buffer for parameter ``row`` (for ``opt.grads``).

        Every buffer is a view into one contiguous array per bucket, so the
        kernel reads the owned gradients as one stream; 200 separately
        allocated arrays cost it about 10% more (each restarts the hardware
        prefetcher).
        """
        if self.grad_buffer is None:
            self.grad_buffer = np.zeros(self.total, self.dtype)
        lo = self.table[row, OFFSET]
        return self.grad_buffer[lo:lo + self.table[row, SIZE]].reshape(self.params[row].shape)

    def zero_owned_grads(self):
        """``opt.zero_grad()``: one fill of the bucket's gradient buffer."""
        if self.grad_buffer is not None:
            self.grad_buffer.fill(0)

    def use_gradients(self, addresses):
        """Point the table at the gradients of this step (``None``: owned ones)."""
        if addresses is None:
            if not self.uses_owned_grads:
                self.table[:, PTR_G] = self.owned_grad_addresses
                self.uses_owned_grads = True
        else:
            if len(addresses) == 1:  # a fraction of the cost of the slice assignment
                self.words[PTR_G] = addresses[0]
            else:
                self.table[:, PTR_G] = addresses
            self.uses_owned_grads = False

    def first_nonfinite(self, clip=None):
        """Row of the first parameter whose gradient is not all finite, or -1
        (``clip``: the gradients as the update reads them, see
        :func:`numadam.cpu.kernels.gradient`)."""
        table = self.table
        n = table.shape[0]
        total = int(table[n - 1, OFFSET] + table[n - 1, SIZE]) if n else 0
        if total < config.serial_below:
            row = _cpu.nonfinite_task(table, self.like, 0, total, clip)
        else:
            row = _nonfinite_on_threads(self, total, clip)
        return -1 if row == n else row

    def square_bins(self, clip):
        """Exact bins of the squares of this step's gradients read under
        ``clip`` (see :func:`numadam.cpu.norm.square_sum_bins`)."""
        return square_sum_bins(self.table, self.like, self.total, clip)

    # ------------------------------------------------------------------ step
    def ready(self):
        """Nothing to make ready beyond the state (``unready`` stays False)."""

    def step(self, args):
        """Run one update of the whole bucket with validated ``args``."""
        if self.total < config.serial_below:
            state = self.state
            if state is not self._serial_state:
                self._serial = _entry_point(self.kernels.step_serial, self.table, state,
                                            args.hyp, args.flags, None)
                self._serial_state = state
            self._serial(self.table, state, args.hyp, args.flags, None)
        else:
            _step_on_threads(self, args, None)

    def step_clipped(self, args, clip):
        """:meth:`step` reading the gradients under ``clip``, a tuple
        ``(lo, hi, scale)`` (see :func:`numadam.cpu.kernels.gradient`)."""
        if self.total < config.serial_below:
            self.kernels.step_serial(self.table, self.state, args.hyp, args.flags, clip)
        else:
            _step_on_threads(self, args, clip)


def _entry_point(kernel, *args):
    """The compiled overload of ``kernel`` for the types of ``args`` (compiled
    or loaded from the disk cache now if need be), callable without Numba's
    type dispatch.

    A Dispatcher call types every argument at every call: for ``step_serial``
    on a 10-element bucket that is 6,100 instructions against 3,700 for its
    compiled overload called directly (callgrind), most of it fingerprinting
    the ``hyp`` and ``flags`` tuples. The overload does not check its
    arguments' types, so it is resolved again whenever the state array is
    replaced; the table is the bucket's own, and validation makes ``hyp``
    floats and ``flags`` bools, so their types never change. A kernel that
    is not a Dispatcher (a test's wrapper) is called as it is.
    """
    if not isinstance(kernel, Dispatcher):
        return kernel
    return kernel.compile(tuple(typeof(arg) for arg in args))


# Module functions apart from Bucket.step and Bucket.first_nonfinite because
# a closure's cells are created on entry to the function that holds them:
# inside Bucket.step they cost the 10-element step 1,300 instructions (6.6%,
# callgrind) though it never runs on the threads.
def _step_on_threads(bucket, args, clip):
    """One step of ``bucket`` cut into tasks on numadam's threads, whole even
    when Ctrl-C comes during it (then raised after it)."""
    uninterrupted(_step_tasks, bucket, args, clip)


# On one thread a bucket is one kernel call, not its tasks in turn: every
# nogil call ends by taking the GIL back, which waits up to the switch
# interval (5 ms) while another Python thread is busy. A 4e6-element float32
# step beside a thread spinning in Python took 27 ms as 4 tasks and 9.7 ms as
# one call (4.1 ms with no other thread).
def _step_tasks(bucket, args, clip):
    ntasks, chunk = task_bounds(bucket.total)
    nthreads = start_workers(ntasks)
    table, state, total = bucket.table, bucket.state, bucket.total
    kernels, flags = bucket.kernels, args.flags
    scal = kernels.prepare_step(table, state, args.hyp)
    if nthreads == 1:
        kernels.step_task(table, state, scal, 0, total, flags, clip)
        return

    def task(index):
        lo = min(index * chunk, total)
        kernels.step_task(table, state, scal, lo, min(lo + chunk, total), flags, clip)

    run_tasks(task, ntasks, nthreads)


def _nonfinite_on_threads(bucket, total, clip):
    """:meth:`Bucket.first_nonfinite` over tasks on numadam's threads (the row
    count when every gradient is finite)."""
    table, like = bucket.table, bucket.like
    ntasks, chunk = task_bounds(total)
    if min(thread_count(), ntasks) == 1:
        return _cpu.nonfinite_task(table, like, 0, total, clip)
    first = [table.shape[0]] * ntasks

    def task(index):
        lo = min(index * chunk, total)
        first[index] = _cpu.nonfinite_task(table, like, lo, min(lo + chunk, total), clip)

    run_tasks(task, ntasks)
    return min(first)
