"""The host bucket of compressed state or bfloat16 parameters.

Same interface as :class:`numadam.cpu.bucket.Bucket`; what differs is the
stored state (see :mod:`numadam.cpu.compressed` for the layout), the kernels,
and how state is shown: ``opt.state[p][name]`` is a read-only float32 copy of
the decoded values, and state dicts carry the stored arrays (bfloat16 bits as
uint16; 8-bit codes as uint8 plus ``<name>_absmax``).
"""

import numpy as np

from numadam.cpu import compressed as _kernels
from numadam.cpu.bucket import Bucket
from numadam.cpu.kernels import OFFSET, SIZE, STEP, address
from numadam.cpu.pool import run_tasks, start_workers, task_bounds, uninterrupted
from numadam.core.config import config
from numadam.formats import BLOCK, is_bfloat16
from numadam.formats import codec
from numadam.formats.bf16 import param_key

__all__ = ["CompressedBucket"]

_CARRIER = np.empty((0, 0), np.float32)     # the dtype of the scalars: float32

# Rows of bfloat16 state start this many bytes apart modulo a 4 KiB page.
# Measured on a Sapphire Rapids host (Adam, 1e7 elements, one thread): rows
# 3328 bytes apart (their natural distance at that size) took 13.4 ms against
# 9.9 at 512 and 9.7 at 2048 (full state: 9.4); at 3e7 on 2 threads 18.4 ms
# against 15.0 (full: 15.8). Loads of one row then stop colliding with
# recent stores of the other at the same page offset.
_ROW_OFFSET = 512
# Rows shorter than this keep their natural distance: the padding (under
# 4 KiB a row) would be a visible part of their state bytes.
_PAD_FROM = 1 << 20


def _row_pad(row_bytes):
    """Bytes to add after a row of ``row_bytes`` (even) so consecutive rows
    start :data:`_ROW_OFFSET` bytes apart modulo 4096."""
    if row_bytes < _PAD_FROM:
        return 0
    return (_ROW_OFFSET - row_bytes) % 4096


class CompressedBucket(Bucket):
    """Parameters ``params`` (global indices ``indices``) of group
    ``group_index``, all float32 or all bfloat16, with state in format
    ``fmt`` (``"full"``: float32) and the optimizer's ``storage``."""

    def __init__(self, rule, params, indices, group_index, fmt, storage):
        params = list(params)
        stored = [p.view(np.uint16) if is_bfloat16(p.dtype) else p for p in params]
        # Bucket.__init__ without its address call, which Numba cannot type
        # for bfloat16 arrays.
        super(Bucket, self).__init__(rule, params, indices, group_index, params[0].dtype,
                                     [address(s) for s in stored], [p.shape for p in params],
                                     align=BLOCK if fmt == "8bit" else 1)
        self.fmt = fmt
        self.like = np.empty(0, stored[0].dtype)    # float32, or uint16 for bfloat16
        self.words = memoryview(self.table).cast("B").cast("q")
        self.grad_buffer = None
        # Which stored values round stochastically (the kernels' sr bits).
        self.sr = 0
        if storage.stochastic_rounding:
            self.sr = ((_kernels.PARAM_SR if is_bfloat16(self.dtype) else 0)
                       | (_kernels.STATE_SR if fmt != "full" else 0))
        self.kernels = _kernels.kernels(rule, bool(self.sr & _kernels.STATE_SR))
        self.param_keys = np.array([param_key(storage.seed, i) for i in self.indices], np.uint64)
        self.signed = np.zeros(3, np.bool_)
        self.encoded = fmt != "full"
        if fmt == "bfloat16":
            self.store_dtype = np.dtype(np.uint16)
            self.width = self.total + _row_pad(2 * self.total) // 2
        elif fmt == "8bit":
            self.store_dtype = np.dtype(np.uint8)
            self.width = self.total + 4 * (self.total // BLOCK)
        else:
            self.store_dtype, self.width = np.dtype(np.float32), self.total

    # ----------------------------------------------------------------- state
    def initial_state(self, args, values=None):
        """The stored initial state under kernel args ``args``."""
        state = np.zeros((len(args.rows), self.width), self.store_dtype)
        for row, value in enumerate(values or ()):
            if value != 0:
                state[row] = self._encode_row(np.full(self.total, value, np.float32), row,
                                              args.rows)
        return state

    def _is_signed(self, name):
        return next(s.signed for s in self.rule.state if s.name == name)

    def _encode_row(self, values, row, rows):
        """One stored row of the float32 ``values`` (``total`` of them)."""
        if self.fmt == "bfloat16":
            out = np.zeros(self.width, np.uint16)
            out[:self.total] = codec.bf16_bits(values)
            return out
        if self.fmt == "full":
            return values
        out = np.zeros(self.width, np.uint8)
        signed = self._is_signed(rows[row])
        for k in range(len(self.params)):
            lo, size = int(self.table[k, OFFSET]), int(self.table[k, SIZE])
            codes, absmax = codec.encode8(values[lo:lo + size], signed)
            out[lo:lo + size] = codes
            amax = out[self.total:].view(np.float32)
            amax[lo // BLOCK:lo // BLOCK + absmax.size] = absmax
        return out

    def allocate(self, args, live=False):
        super().allocate(args, live)
        self._set_signed()

    def _set_signed(self):
        self.signed[:] = False
        for r, name in enumerate(self.rows):
            self.signed[r] = self._is_signed(name)

    def installed(self):
        """Called after ``state`` and ``rows`` were replaced (a load, a copy)."""
        self._set_signed()

    def stored(self, k, row):
        """Parameter ``k``'s stored state of row ``row``: ``(array, absmax)``,
        copies; ``absmax`` is None except for 8-bit state."""
        lo, size = int(self.table[k, OFFSET]), int(self.table[k, SIZE])
        shape = self.params[k].shape
        values = self.state[row, lo:lo + size].copy().reshape(shape)
        if self.fmt != "8bit":
            return values, None
        amax = self.state[row, self.total:].view(np.float32)
        return values, amax[lo // BLOCK:lo // BLOCK + codec.nblocks(size)].copy()

    def decoded(self, k, row):
        """Parameter ``k``'s state of row ``row`` as float32 values (a copy)."""
        values, absmax = self.stored(k, row)
        if self.fmt == "bfloat16":
            return codec.bf16_values(values)
        if self.fmt == "8bit":
            return codec.decode8(values, absmax, self._is_signed(self.rows[row]))
        return values

    def view(self, k, row):
        """Parameter ``k``'s state of row ``row``, decoded, read-only: the
        stored form has no float32 view to write through."""
        if self.fmt == "full":
            return super().view(k, row)
        out = self.decoded(k, row)
        out.flags.writeable = False
        return out

    host_view = view

    def param_state(self, k):
        """Parameter ``k``'s state dict entry: the stored arrays."""
        out = {"step": int(self.table[k, STEP])} if self.rule.keeps_step else {}
        for name in self.keys():
            values, absmax = self.stored(k, self.rows.index(name))
            out[name] = values
            if absmax is not None:
                out[name + "_absmax"] = absmax
        return out

    def stored_arrays(self, name, k):
        """``(key, shape, dtype)`` of the arrays a state dict holds for state
        array ``name`` of parameter ``k``: the stored values, and for 8-bit
        state the absmax of each block."""
        shape, size = self.params[k].shape, int(self.table[k, SIZE])
        out = [(name, shape, self.store_dtype)]
        if self.fmt == "8bit":
            out.append((name + "_absmax", (codec.nblocks(size),), np.dtype(np.float32)))
        return tuple(out)

    def put(self, state, k, row, entry, name):
        """Write parameter ``k``'s stored arrays from state dict ``entry``
        into row ``row`` of ``state`` (checked by the loader)."""
        lo, size = int(self.table[k, OFFSET]), int(self.table[k, SIZE])
        state[row, lo:lo + size] = entry[name].reshape(-1)
        if self.fmt == "8bit":
            amax = state[row, self.total:].view(np.float32)
            amax[lo // BLOCK:lo // BLOCK + codec.nblocks(size)] = entry[name + "_absmax"]

    def write(self, k, row, value):
        """``opt.state[p][name] = value``: ``value`` (broadcast to the
        parameter's shape) stored as the kernels would store it."""
        lo, size = int(self.table[k, OFFSET]), int(self.table[k, SIZE])
        values = np.broadcast_to(np.asarray(value, np.float32), self.params[k].shape)
        if self.fmt == "bfloat16":
            self.state[row, lo:lo + size] = codec.bf16_bits(values).reshape(-1)
            return
        codes, absmax = codec.encode8(values, self._is_signed(self.rows[row]))
        self.put(self.state, k, row, {"v": codes, "v_absmax": absmax}, "v")

    # ------------------------------------------------------------------ step
    def step(self, args):
        """One update of the whole bucket with validated ``args``."""
        self._step(args, None)

    def step_clipped(self, args, clip):
        """:meth:`step` reading the gradients under ``clip``."""
        self._step(args, clip)

    def _step(self, args, clip):
        k = self.kernels
        eight = self.fmt == "8bit"
        if self.total < config.serial_below:
            serial = k.step_serial8 if eight else k.step_serial
            serial(self.table, self.param_keys, self.state, _CARRIER, args.hyp, args.flags, clip,
                   self.sr, self.signed, self.total, self.like)
        else:
            uninterrupted(_step_tasks, self, args, clip, eight)


def _step_tasks(bucket, args, clip, eight):
    ntasks, chunk = task_bounds(bucket.total)
    if eight:
        # Tasks start at block boundaries: no block is split between threads.
        chunk = -(-chunk // BLOCK) * BLOCK
        ntasks = -(-bucket.total // chunk)
    nthreads = start_workers(ntasks)
    k = bucket.kernels
    task_kernel = k.step_task8 if eight else k.step_task
    table, state, total = bucket.table, bucket.state, bucket.total
    keys, sr, signed, like, flags = bucket.param_keys, bucket.sr, bucket.signed, bucket.like, args.flags
    scal = k.prepare_step(table, _CARRIER, args.hyp)

    def task(index):
        lo = min(index * chunk, total)
        task_kernel(table, keys, state, scal, lo, min(lo + chunk, total), flags, clip, sr,
                    signed, total, like)

    if nthreads == 1:
        task_kernel(table, keys, state, scal, 0, total, flags, clip, sr, signed, total, like)
        return
    run_tasks(task, ntasks, nthreads)
