"""A bucket: the parameters of one group that share a dtype, with their state.

The bucket owns the state of its parameters in one array ``state`` of shape
``(rows, total)`` (rows ``exp_avg``, ``exp_avg_sq`` and, with AMSGrad,
``max_exp_avg_sq``) and the int64 ``table`` the kernels read (see
:mod:`numadam.cpu.kernels`). Per-parameter state as users see it
(``opt.state[p]["exp_avg"]``) is a view into ``state``.
"""

import numpy as np

from numadam.cpu import kernels as _cpu
from numadam.core.config import config
from numadam.cpu.kernels import NCOLS, OFFSET, PTR_G, PTR_P, SIZE, STEP
from numadam.cpu.pool import run_tasks, start_workers, task_bounds, thread_count, uninterrupted

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class BucketBase:
    """What host and device buckets share: the table, the step/live columns,
    the layout of the state rows."""

    def __init__(self, params, indices, group_index, dtype, addresses, shapes, align=1):
        """``align``: every parameter's state starts at a multiple of it (the
        device kernels' vector width); the columns in between are padding."""
        self.params = list(params)
        self.indices = list(indices)
        self.group_index = group_index
        self.dtype = dtype
        self.table = np.zeros((len(self.params), NCOLS), np.int64)
        offset = 0
        for k, (address, shape) in enumerate(zip(addresses, shapes)):
            size = int(np.prod(shape, dtype=np.int64))
            self.table[k, PTR_P] = address
            self.table[k, OFFSET] = offset
            self.table[k, SIZE] = size
            offset += -(-size // align) * align
        self.total = offset
        # (global index, shape, dtype) of each parameter: what a gradient must match.
        self.expected = [(i, tuple(shape), dtype) for i, shape in zip(self.indices, shapes)]
        self.state = None
        self.owned_grad_addresses = None
        self.uses_owned_grads = False

    def __reduce_ex__(self, protocol):
        # The table holds addresses: a copy would write into the original's arrays.
        raise TypeError(f"{type(self).__name__} holds memory addresses and cannot be "
                        "copied or pickled; copy or pickle the optimizer instead")

    def rows_for(self, amsgrad):
        return 3 if amsgrad else 2

    def check_amsgrad(self, amsgrad, where):
        """AMSGrad cannot be switched on once the state exists without it."""
        if amsgrad and self.state is not None and self.state.shape[0] < 3:
            raise ValueError(
                f"{where}: amsgrad was switched on after the first step; the group "
                "has no max_exp_avg_sq to continue from (torch fails here too). "
                "Create the optimizer with amsgrad=True instead")


class Bucket(BucketBase):
    """Parameters ``params`` (global indices ``indices``) of group ``group_index``."""

    on_device = False   # DeviceBucket (numadam.cuda.bucket) has the same interface
    unready = False     # see ready()

    def __init__(self, params, indices, group_index):
        params = list(params)
        super().__init__(params, indices, group_index, params[0].dtype,
                         [_cpu.address(p) for p in params], [p.shape for p in params])
        self.like = np.empty(0, self.dtype)  # carries the dtype into kernels
        self.grad_buffer = None

    # ----------------------------------------------------------------- state
    def allocate(self, amsgrad):
        """Create the (zero) state at the first step, as torch does lazily.

        ``np.zeros`` leaves the pages untouched until the kernel's threads
        write them, so each thread's share lands in its own memory.
        """
        self.state = np.zeros((self.rows_for(amsgrad), self.total), self.dtype)

    def view(self, k, row):
        """Parameter ``k``'s slice of state row ``row``, in the parameter's shape."""
        offset = self.table[k, OFFSET]
        return self.state[row, offset:offset + self.table[k, SIZE]].reshape(
            self.params[k].shape)

    def param_state(self, k):
        """Parameter ``k``'s state as a plain dict of copies (for state_dict)."""
        out = {"step": int(self.table[k, STEP])}
        for row in range(self.state.shape[0]):
            out[STATE_KEYS[row]] = self.view(k, row).copy()
        return out

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
            if len(addresses) == 1:  # a third of the cost of the slice assignment
                self.table[0, PTR_G] = addresses[0]
            else:
                self.table[:, PTR_G] = addresses
            self.uses_owned_grads = False

    def first_nonfinite(self):
        """Row of the first parameter whose gradient is not all finite, or -1."""
        table = self.table
        n = table.shape[0]
        total = int(table[n - 1, OFFSET] + table[n - 1, SIZE]) if n else 0
        if total < config.serial_below:
            row = _cpu.nonfinite_task(table, self.like, 0, total)
        else:
            row = _nonfinite_on_threads(self, total)
        return -1 if row == n else row

    # ------------------------------------------------------------------ step
    def ready(self):
        """Nothing to make ready beyond the state (``unready`` stays False)."""

    def step(self, args):
        """Run one update of the whole bucket with validated ``args``."""
        if self.total < config.serial_below:
            _cpu.step_serial(self.table, self.state, *args)
        else:
            _step_on_threads(self, args)


# Module functions, not methods: numadam.distributed.shard.Shard borrows
# Bucket.step and Bucket.first_nonfinite, and these work on its attributes too.
# Apart from those two because a closure's cells are created on entry to the
# function that holds them: inside Bucket.step they cost the 10-element step
# 1,300 instructions (6.6%, callgrind) though it never runs on the threads.
def _step_on_threads(bucket, args):
    """One step of ``bucket`` cut into tasks on numadam's threads, whole even
    when Ctrl-C comes during it (then raised after it)."""
    uninterrupted(_step_tasks, bucket, args)


# On one thread a bucket is one kernel call, not its tasks in turn: every
# nogil call ends by taking the GIL back, which waits up to the switch
# interval (5 ms) while another Python thread is busy. A 4e6-element float32
# step beside a thread spinning in Python took 27 ms as 4 tasks and 9.7 ms as
# one call (4.1 ms with no other thread).
def _step_tasks(bucket, args):
    ntasks, chunk = task_bounds(bucket.total)
    nthreads = start_workers(ntasks)
    table, state, total = bucket.table, bucket.state, bucket.total
    scal = _cpu.prepare_step(table, state, *args[:5])
    flags = args[5:]
    if nthreads == 1:
        _cpu.step_task(table, state, scal, 0, total, *flags)
        return

    def task(index):
        lo = min(index * chunk, total)
        _cpu.step_task(table, state, scal, lo, min(lo + chunk, total), *flags)

    run_tasks(task, ntasks, nthreads)


def _nonfinite_on_threads(bucket, total):
    """:meth:`Bucket.first_nonfinite` over tasks on numadam's threads (the row
    count when every gradient is finite)."""
    table, like = bucket.table, bucket.like
    ntasks, chunk = task_bounds(total)
    if min(thread_count(), ntasks) == 1:
        return _cpu.nonfinite_task(table, like, 0, total)
    first = [table.shape[0]] * ntasks

    def task(index):
        lo = min(index * chunk, total)
        first[index] = _cpu.nonfinite_task(table, like, lo, min(lo + chunk, total))

    run_tasks(task, ntasks)
    return min(first)
