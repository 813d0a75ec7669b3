"""A bucket of device arrays: :class:`numadam._bucket.Bucket`'s interface on a GPU.

The host keeps the int64 ``table`` (so step counts, offsets and live flags
read exactly as on the CPU, and ``_cpu._prepare`` builds the scalars with the
same float64 arithmetic); each step copies the table and the scalars to the
device and launches one kernel (:mod:`numadam._cuda_kernels`). The state
array lives on the parameters' device.

Streams: each step is enqueued on the stream that the bucket's first
parameter reports through ``__cuda_array_interface__`` (version 3; CuPy and
torch report their current stream) and returns without waiting for the GPU.
A gradient that reports another stream is waited for on the device (an event),
never on the host. ``param_state`` (state dicts, checkpoints) and
``first_nonfinite`` synchronise that stream before they read.
"""

import numpy as np
from numba import cuda

from . import _cpu, _cuda_kernels
from ._bucket import STATE_KEYS, BucketBase
from ._cpu import OFFSET, PTR_G, SIZE, STEP
from ._cuda_adapters import _on_device, gradient_info, inspect, stream_for, zeros_like
from ._math import NSCALARS


def _threads():
    from .cuda import config
    return config.threads_per_block


class DeviceBucket(BucketBase):
    """Device parameters ``params`` (infos ``infos``) of group ``group_index``."""

    on_device = True

    def __init__(self, params, infos, indices, group_index):
        self.infos = list(infos)
        super().__init__(params, indices, group_index, self.infos[0].dtype,
                         [info.address for info in self.infos],
                         [info.shape for info in self.infos])
        self.device = self.infos[0].device
        self.like = np.empty((1, 0), self.dtype)  # carries the dtype into _prepare
        self._grad_streams = ()
        self._stream = None
        with _on_device(self.device):
            self._table_d = cuda.device_array(self.table.shape, np.int64)
            self._scal_d = cuda.device_array((len(self.params), NSCALARS), self.dtype)

    # ---------------------------------------------------------------- streams
    def _current_stream(self):
        """The stream of the first parameter, read at every step (it may change)."""
        face = getattr(self.params[0], "__cuda_array_interface__", None)
        handle = face.get("stream") if face and face.get("version", 0) >= 3 else None
        self._stream = stream_for(handle)
        return self._stream

    def synchronize(self):
        """Wait for the work this bucket enqueued."""
        if self._stream is not None:
            self._stream.synchronize()

    # ------------------------------------------------------------------ state
    def allocate(self, amsgrad):
        stream = self._current_stream()
        with _on_device(self.device):
            self.state = cuda.device_array((self.rows_for(amsgrad), self.total), self.dtype,
                                           stream=stream)
            _cuda_kernels.fill(self.state.reshape(-1), 0, stream, _threads())

    def view(self, k, row):
        """Parameter ``k``'s slice of state row ``row``: a Numba device array view."""
        offset = self.table[k, OFFSET]
        return self.state[row, offset:offset + self.table[k, SIZE]].reshape(
            self.infos[k].shape)

    def param_state(self, k):
        """Parameter ``k``'s state as host copies (waits for this bucket's stream)."""
        self.synchronize()
        out = {"step": int(self.table[k, STEP])}
        for row in range(self.state.shape[0]):
            out[STATE_KEYS[row]] = self.view(k, row).copy_to_host()
        return out

    def upload_state(self, host_state):
        """A device copy of a host state array (from a state dict)."""
        stream = self._current_stream()
        with _on_device(self.device):
            state = cuda.to_device(host_state, stream=stream)
        stream.synchronize()  # the host array may be freed as soon as we return
        return state

    def write(self, k, row, value):
        """Overwrite parameter ``k``'s state row ``row`` (``opt.state[p][key] = ...``)."""
        self.synchronize()
        value = value if hasattr(value, "__cuda_array_interface__") else \
            np.ascontiguousarray(value, self.dtype)
        self.view(k, row).copy_to_device(value)

    # -------------------------------------------------------------- gradients
    def zeros_like(self, k):
        return zeros_like(self.params[k], self.infos[k])

    def address_of(self, array):
        return inspect(array, "a gradient buffer").address

    def zero(self, array):
        if hasattr(array, "fill"):
            array.fill(0)
        else:
            with _on_device(self.device):
                _cuda_kernels.fill(array.reshape(-1), 0, self._current_stream(), _threads())

    def gradient_addresses(self, grads):
        """Validate this bucket's gradients in ``grads``; return their addresses."""
        addresses, streams = [], []
        for k, (i, _, _) in enumerate(self.expected):
            g = grads[i]
            if g is None:
                addresses.append(0)
                continue
            info = gradient_info(g, self.infos[k], self.device, f"grads[{i}]")
            addresses.append(info.address)
            if info.stream is not None and info.stream not in streams:
                streams.append(info.stream)
        self._grad_streams = tuple(streams)
        return addresses

    def use_gradients(self, addresses):
        if addresses is None:
            self._grad_streams = ()
            if not self.uses_owned_grads:
                self.table[:, PTR_G] = self.owned_grad_addresses
                self.uses_owned_grads = True
        else:
            self.table[:, PTR_G] = addresses
            self.uses_owned_grads = False

    def _wait_for_gradients(self, stream):
        for handle in self._grad_streams:
            other = stream_for(handle)
            if other is not stream:
                event = cuda.event(timing=False)
                event.record(other)
                event.wait(stream)

    def first_nonfinite(self):
        stream = self._current_stream()
        with _on_device(self.device):
            self._wait_for_gradients(stream)
            self._table_d.copy_to_device(self.table, stream=stream)
            return _cuda_kernels.first_nonfinite(self._table_d, self.like[0], self.total,
                                                 stream, _threads())

    # ------------------------------------------------------------------- step
    def step(self, args):
        """Enqueue one update of the whole bucket with validated ``args``."""
        lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled = args
        scal = _cpu._prepare(self.table, self.like, lr, beta1, beta2, eps, weight_decay)
        stream = self._current_stream()
        with _on_device(self.device):
            self._wait_for_gradients(stream)
            self._table_d.copy_to_device(self.table, stream=stream)
            self._scal_d.copy_to_device(scal, stream=stream)
            _cuda_kernels.step(self._table_d, self._scal_d, self.state, amsgrad, maximize,
                               decoupled, stream, _threads())
