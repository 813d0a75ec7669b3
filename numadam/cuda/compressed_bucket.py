"""A device bucket of float32 parameters with bfloat16 or 8-bit state.

:class:`numadam.cuda.bucket.DeviceBucket` with the stored state of
:class:`numadam.cpu.compressed_bucket.CompressedBucket`: the same row layout
(bfloat16 bits as ``uint16``; 8-bit rows of ``total`` codes then the float32
absmax of each block as bytes), built and read on the host by
CompressedBucket's own functions, so state dicts, checkpoints and
``opt.state`` give the same arrays on both backends. The kernels are
:mod:`numadam.cuda.compressed`, launched through Numba's launcher (the
driver launch of ``numadam.cuda.config.launcher = "driver"`` serves full
state only).
"""

import numpy as np
from numba import cuda

from numadam.cpu.compressed_bucket import CompressedBucket
from numadam.cpu.kernels import LIVE, OFFSET, SIZE
from numadam.cuda import compressed as _kernels
from numadam.cuda.adapters import _on_device
from numadam.cuda.bucket import DeviceBucket, _threads
from numadam.cuda import kernels as _cuda_kernels
from numadam.formats import BLOCK
from numadam.formats import codec

__all__ = ["CompressedDeviceBucket"]


class CompressedDeviceBucket(DeviceBucket):
    """Float32 device parameters ``params`` (infos ``infos``, global indices
    ``indices``) of group ``group_index``, with state in format ``fmt``
    (``"bfloat16"`` or ``"8bit"``)."""

    driver_launch = False

    def __init__(self, rule, params, infos, indices, group_index, fmt):
        super().__init__(rule, params, infos, indices, group_index,
                         align=BLOCK if fmt == "8bit" else _cuda_kernels.VEC)
        self.fmt = fmt
        self.compressed = _kernels.kernels(rule)
        if fmt == "bfloat16":
            self.store_dtype, self.width = np.dtype(np.uint16), self.total
        else:
            self.store_dtype = np.dtype(np.uint8)
            self.width = self.total + 4 * (self.total // BLOCK)
        self._signed_for = (None, None)     # (rows, which map each row uses)
        self._amax_for = (None, None)       # (state, its float32 view)

    # The host layout is CompressedBucket's, by its own functions.
    initial_state = CompressedBucket.initial_state
    _encode_row = CompressedBucket._encode_row
    _is_signed = CompressedBucket._is_signed
    put = CompressedBucket.put

    # ----------------------------------------------------------------- state
    def allocate(self, args, live=False):
        """Create the state under kernel args ``args`` on the device (see
        :meth:`DeviceBucket.allocate`): zeros are filled there, other
        initial values encoded on the host and copied."""
        values = self.rule.initial(args.values)
        stream = self._current_stream()
        with _on_device(self.device):
            if any(v != 0 for v in values):
                state = cuda.to_device(self.initial_state(args, values), stream=stream)
                stream.synchronize()    # the host array is freed when we return
            else:
                state = cuda.device_array((len(args.rows), self.width), self.store_dtype,
                                          stream=stream)
                _cuda_kernels.fill(state.reshape(-1), 0, stream, _threads())
        self.state = state
        self.rows = args.rows
        if live:
            self.table[:, LIVE] = 1

    def stored(self, k, row):
        """Parameter ``k``'s stored state of row ``row`` as host copies:
        ``(array, absmax)``, ``absmax`` None for bfloat16 (call
        :meth:`synchronize` first)."""
        lo, size = int(self.table[k, OFFSET]), int(self.table[k, SIZE])
        values = self.state[row, lo:lo + size].copy_to_host().reshape(self.infos[k].shape)
        if self.fmt != "8bit":
            return values, None
        first = self.total + 4 * (lo // BLOCK)
        amax = self.state[row, first:first + 4 * codec.nblocks(size)].copy_to_host()
        return values, amax.view(np.float32)

    def view(self, k, row):
        """Parameter ``k``'s state of row ``row``, decoded to float32 on the
        host, read-only: the stored form has no float32 view to write through."""
        self.synchronize()
        values, absmax = self.stored(k, row)
        if self.fmt == "bfloat16":
            out = codec.bf16_values(values)
        else:
            out = codec.decode8(values, absmax, self._is_signed(self.rows[row]))
        out.flags.writeable = False
        return out

    host_view = view

    def write(self, k, row, value):
        raise ValueError(f"state stored as {self.fmt} is read-only through opt.state; "
                         "load a state dict to replace it")

    def param_state(self, k):
        """Parameter ``k``'s state dict entry: the stored arrays, as
        :meth:`CompressedBucket.param_state` gives them (waits for the stream)."""
        self.synchronize()
        return CompressedBucket.param_state(self, k)

    # ------------------------------------------------------------------ step
    def _numba_kernel(self):
        if self.fmt == "8bit":
            return self.compressed.step8, _kernels.signature8(self.rule)
        return self.compressed.step16, _kernels.signature16(self.rule)

    def _signed(self):
        """Which map each state row uses (the rows change at a load)."""
        if self._signed_for[0] is not self.rows:
            signed = [self._is_signed(name) for name in self.rows]
            self._signed_for = (self.rows, tuple(signed + [False] * (3 - len(signed))))
        return self._signed_for[1]

    def _amax(self):
        """The state as float32, where the kernel reads and writes the absmax
        (the state changes at a load)."""
        if self._amax_for[0] is not self.state:
            self._amax_for = (self.state, self.state.view(np.float32))
        return self._amax_for[1]

    def _launch_numba(self, uniform, flags, stream):
        if self.fmt == "8bit":
            _kernels.launch8(
                self.compressed.step8,
                _kernels.Step8Args(table=self._table_d, scal=self._scal_d, state=self.state,
                                   amax=self._amax(), total=self.total,
                                   like=self._like_d, signed=self._signed(), uniform=uniform,
                                   s=self._scalars, flags=flags),
                stream)
        else:
            _kernels.launch16(
                self.compressed.step16,
                _kernels.Step16Args(table=self._table_d, scal=self._scal_d, state=self.state,
                                    like=self._like_d, uniform=uniform, s=self._scalars,
                                    flags=flags),
                stream, _threads())
