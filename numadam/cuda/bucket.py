"""A bucket of device arrays: :class:`numadam.cpu.bucket.Bucket`'s interface on a GPU.

The host keeps the int64 ``table`` (so step counts, offsets and live flags
read exactly as on the CPU, and the rule's CPU ``prepare_uniform`` builds the
scalars with the same float64 arithmetic). The device keeps a copy of the
table, uploaded only when a gradient address changes, and the state array
(one row per state array of the rule that exists, as on the host), padded so
that every parameter's state starts at a multiple of the kernel's vector
width.

A step, in the usual case (every parameter at the same step, gradient
addresses as last time), copies nothing to the device: the scalars travel as
kernel arguments. The launch is Numba's kernel call; with
``numadam.cuda.config.launcher = "driver"`` (opt-in until
``scripts/gpu_check.py`` has passed on a GPU) it is one driver call
(:mod:`numadam.cuda.launch`). The simulator has only Numba's launcher.

Streams: each step is enqueued on the stream of the bucket's first parameter
(:func:`numadam.cuda.adapters.interface_stream`: what version 3 of
``__cuda_array_interface__`` reports, CuPy's current stream or the stream a
Numba array is bound to; torch's current stream for a torch tensor) and
returns without waiting for the GPU. A gradient that reports
another stream is waited for on the device (an event), never on the host.
``param_state`` (state dicts, checkpoints) and ``first_nonfinite``
synchronise that stream before they read.
"""

import weakref

import numpy as np
from numba import cuda

from numadam.core.bucket import BucketBase
from numadam.cpu import kernels as _cpu
from numadam.cpu.kernels import LIVE, OFFSET, PTR_G, SIZE, STEP
from numadam.cuda import config
from numadam.cuda import kernels as _cuda_kernels
from numadam.cuda.adapters import (FIXED, TORCH, _on_device, _torch_stream, device_address,
                                   fill_zero, gradient_info, inspect, interface_stream,
                                   memory_kind, stream_for, zeros_like)

_DRIVER_KERNELS = {}     # (rule, dtype) -> DriverKernel of the rule's step kernel
_COMPILED = set()        # (rule, signature, device) loaded for Numba's launcher


def _threads():
    return config.threads_per_block


def _driver_kernel(rule, dtype):
    from numadam.cuda.launch import DriverKernel
    found = _DRIVER_KERNELS.get((rule, dtype))
    if found is None:
        found = DriverKernel(_cuda_kernels.kernels(rule).step,
                             _cuda_kernels.step_signature(rule, dtype))
        _DRIVER_KERNELS[rule, dtype] = found
    return found


_DEFAULT_HANDLE = []


def _default_handle():
    """The raw handle of Numba's default stream (0, or 2 with per-thread streams)."""
    if not _DEFAULT_HANDLE:
        _DEFAULT_HANDLE.append(int(cuda.default_stream().handle or 0))
    return _DEFAULT_HANDLE[0]


def _remember(grad, info):
    """What :meth:`DeviceBucket.gradient_addresses` keeps of a validated gradient
    (see :func:`numadam.cuda.adapters.memory_kind`), or None."""
    kind = memory_kind(grad)
    if kind is None:
        return None
    try:
        ref = weakref.ref(grad)
    except TypeError:
        return None
    return (ref, info.shape, info.address, info.stream, kind,
            grad.dtype if kind == TORCH else None)


def _still_valid(grad, last):
    """Whether ``grad`` is the object ``last`` remembers, unchanged."""
    if last[0]() is not grad or grad.shape != last[1]:
        return False
    return last[4] == FIXED or (grad.data_ptr() == last[2] and grad.dtype is last[5]
                                and grad.is_contiguous())


class DeviceBucket(BucketBase):
    """Device parameters ``params`` (infos ``infos``, global indices
    ``indices``) of group ``group_index`` under ``rule``."""

    on_device = True
    driver_launch = True    # config.launcher = "driver" applies (full state only)

    def __init__(self, rule, params, infos, indices, group_index, align=_cuda_kernels.VEC):
        """``align``: every parameter's state starts at a multiple of it (the
        kernel's vector width, or the 8-bit format's block)."""
        self.infos = list(infos)
        super().__init__(rule, params, indices, group_index, self.infos[0].dtype,
                         [info.address for info in self.infos],
                         [info.shape for info in self.infos], align=align)
        self.device = self.infos[0].device
        self.like = np.empty((0, 0), self.dtype)  # carries the dtype into prepare_uniform
        self.kernels = _cuda_kernels.kernels(rule)   # compiled at ready() or first launch
        self._prepare_uniform = _cpu.kernels(rule).prepare_uniform
        self._grad_streams = ()
        self._grad_column = None       # the gradient addresses the table holds
        self._seen_grads = [None] * len(self.params)   # see gradient_addresses
        self.grad_buffer = None        # behind opt.grads, made at first use
        self._table_dirty = True       # the device table is older than the host's
        self._stream_handle = None
        self._numba_param = type(params[0]).__module__.startswith("numba.cuda")
        self._torch_param = memory_kind(params[0]) == TORCH
        self._scalars = np.empty(rule.nscalars, self.dtype)   # the uniform scalars of a step
        self._was_live = np.empty(len(self.params), np.int64)   # see step
        self._launch = None            # LaunchArgs of the driver path, made by ready()
        self.unready = True            # ready() has not run yet
        self._launched_state = None
        self._grid_for = (-1, -1, 0, 0)   # (total, threads) -> (blocks, threads)
        with _on_device(self.device):
            self._table_d = cuda.device_array(self.table.shape, np.int64)
            self._scal_d = cuda.device_array((len(self.params), rule.nscalars), self.dtype)
            # For the finiteness check: the dtype, and the row it finds. A host
            # array here would be copied to the device at every launch.
            self._like_d = cuda.device_array(0, self.dtype)
            self._flag_d = cuda.device_array(1, np.int64)

    # ---------------------------------------------------------------- streams
    def _read_stream_handle(self):
        """The stream of the first parameter, read at every step (it may change:
        for CuPy and torch it is their current stream)."""
        param = self.params[0]
        if self._numba_param:           # what its interface says, without building it
            stream = param.stream
            return None if stream == 0 else int(stream)
        if self._torch_param:           # torch's interface has no stream
            return _torch_stream(self.device)
        face = getattr(param, "__cuda_array_interface__", None)
        return interface_stream(param, face) if face else None

    def _current_stream(self):
        """The Numba stream of the first parameter's interface stream."""
        self._stream_handle = self._read_stream_handle()
        return stream_for(self._stream_handle)

    def synchronize(self):
        """Wait for the work this bucket enqueued."""
        stream_for(self._stream_handle).synchronize()

    # ------------------------------------------------------------------ state
    def allocate(self, args, live=False):
        """Create the state under kernel args ``args`` on the device: each row
        filled with its initial value (zeros at the first step, as torch
        creates the state lazily; the rule's initial values at construction,
        ``live``, where torch creates it eagerly, as Adagrad's ``sum``)."""
        stream = self._current_stream()
        values = self.rule.initial(args.values)
        with _on_device(self.device):
            state = cuda.device_array((len(args.rows), self.total), self.dtype, stream=stream)
            for row, value in enumerate(values):
                _cuda_kernels.fill(state[row], value, stream, _threads())
        self.state = state
        self.rows = args.rows
        if live:
            self.table[:, LIVE] = 1

    def view(self, k, row):
        """Parameter ``k``'s slice of state row ``row``: a Numba device array view."""
        offset = self.table[k, OFFSET]
        return self.state[row, offset:offset + self.table[k, SIZE]].reshape(
            self.infos[k].shape)

    def host_view(self, k, row):
        """A host copy of :meth:`view` (call :meth:`synchronize` first)."""
        return self.view(k, row).copy_to_host()

    def param_state(self, k):
        """Parameter ``k``'s state as host copies, in torch's key order
        (waits for this bucket's stream)."""
        self.synchronize()
        out = {"step": int(self.table[k, STEP])} if self.rule.keeps_step else {}
        for row, name in enumerate(self.rows):
            out[name] = self.host_view(k, row)
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
        """Parameter ``k``'s buffer of ``opt.grads``: a view, of the parameters'
        kind (CuPy, torch, else Numba), into one zero buffer per bucket laid
        out as the state is, so every view starts 16-byte aligned and the
        kernel reads the gradients as one stream."""
        if self.grad_buffer is None:
            self.grad_buffer = zeros_like(self.params[0], self.total, self.dtype, self.device)
        lo = int(self.table[k, OFFSET])
        return self.grad_buffer[lo:lo + int(self.table[k, SIZE])].reshape(self.infos[k].shape)

    def address_of(self, array):
        return inspect(array, "a gradient buffer").address

    def zero_owned_grads(self):
        """``opt.zero_grad()``: one fill of the bucket's gradient buffer."""
        if self.grad_buffer is not None:
            with _on_device(self.device):
                fill_zero(self.grad_buffer, self._current_stream(), _threads())

    def gradient_addresses(self, grads):
        """Validate this bucket's gradients in ``grads``; return their addresses.

        A gradient that is the very object validated at the last step, with
        the same shape, is not read again where its memory cannot have changed
        (CuPy and Numba device arrays) or where a cheap look says it has not
        (torch: same data pointer, dtype and contiguity): its interface costs
        microseconds to build (tens for torch, which builds it in Python). The
        objects are held by weak references only.
        """
        addresses, streams = [], []
        seen = self._seen_grads
        for k, (i, _, _) in enumerate(self.expected):
            g = grads[i]
            if g is None:
                addresses.append(0)
                continue
            last = seen[k]
            if last is not None and _still_valid(g, last):
                address, stream = last[2], last[3]
            else:
                info = gradient_info(g, self.infos[k], self.device, f"grads[{i}]")
                address, stream = info.address, info.stream
                seen[k] = _remember(g, info)
            addresses.append(address)
            if stream is not None and stream not in streams:
                streams.append(stream)
        self._grad_streams = tuple(streams)
        return addresses

    def use_gradients(self, addresses):
        if addresses is None:
            self._grad_streams = ()
            if self.uses_owned_grads:
                return
            self.uses_owned_grads = True
            addresses = self.owned_grad_addresses.tolist()
        else:
            self.uses_owned_grads = False
        if addresses != self._grad_column:
            self.table[:, PTR_G] = addresses
            self._grad_column = addresses
            self._table_dirty = True

    def _wait_for(self, handles, stream):
        """Make ``stream`` wait (on the device) for the work on the streams ``handles``."""
        for handle in handles:
            other = stream_for(handle)
            if other is not stream:
                event = cuda.event(timing=False)
                event.record(other)
                event.wait(stream)

    def _upload_table(self, stream):
        if self._table_dirty:
            self._table_d.copy_to_device(self.table, stream=stream)
            self._table_dirty = False

    def first_nonfinite(self):
        stream = self._current_stream()
        with _on_device(self.device):
            self._wait_for(self._grad_streams, stream)
            self._upload_table(stream)
            return _cuda_kernels.first_nonfinite(self._table_d, self._like_d, self._flag_d,
                                                 self.total, stream, _threads())

    # ------------------------------------------------------------------- step
    def ready(self):
        """Compile the step kernel and build the launch, at the first step,
        before any bucket of the optimizer steps: a failure here leaves every
        bucket as it was. (After ``numadam.cuda.config.launcher`` changes
        between steps, the other launcher is made ready by the step itself.)"""
        if not _cuda_kernels.SIMULATED:
            if config.launcher == "driver" and self.driver_launch:
                if self._launch is None:
                    self._driver_args()
            else:
                kernel, signature = self._numba_kernel()
                key = (self.rule, tuple(signature), self.device)
                if key not in _COMPILED:
                    with _on_device(self.device):   # compile() loads it into the current context
                        kernel.compile(tuple(signature))
                    _COMPILED.add(key)
        self.unready = False

    def _numba_kernel(self):
        """The step kernel Numba's launcher launches, and its one signature."""
        return self.kernels.step, _cuda_kernels.step_signature(self.rule, self.dtype)

    def step(self, args):
        """Enqueue one update of the whole bucket with validated kernel args
        ``args`` (:class:`~numadam.core.rule.KernelArgs`).

        If the enqueue fails (a driver error), the step counts are taken back:
        the kernel did not run, and a later step must not skip a step's bias
        correction.
        """
        scal, mode = self._prepare_uniform(self.table, self.like, self._scalars,
                                           self._was_live, args.hyp)
        if mode == 0:                  # no gradient at all: nothing to launch
            return
        try:
            self._enqueue(scal, mode, args.flags)
        except BaseException:
            _cpu.undo_prepare(self.table, self._was_live)
            raise

    def _enqueue(self, scal, mode, flags):
        handle = self._stream_handle = self._read_stream_handle()
        others = [h for h in self._grad_streams if h != handle] if self._grad_streams else ()
        if _cuda_kernels.SIMULATED or config.launcher != "driver" or not self.driver_launch:
            stream = stream_for(handle)
            with _on_device(self.device):
                self._wait_for(others, stream)
                self._upload_table(stream)
                if mode == 2:
                    self._scal_d.copy_to_device(scal, stream=stream)
                self._launch_numba(mode == 1, flags, stream)
            return
        launch = self._launch or self._driver_args()   # made by ready() as a rule
        if others:
            with _on_device(self.device):
                self._wait_for(others, stream_for(handle))
        raw = _default_handle() if handle is None else handle
        if self._table_dirty:
            launch.upload(self._table_address, self.table, raw)
            self._table_dirty = False
        if mode == 2:
            launch.upload(self._scal_address, scal, raw)
        if self.state is not self._launched_state:     # allocated, or loaded
            launch.set_array("state", self.state)
            self._launched_state = self.state
        fields = launch.fields
        fields.uniform[0].value = mode == 1
        for field, flag in zip(fields.flags, flags):
            field.value = flag
        if self._grid_for[:2] != (self.total, config.threads_per_block):
            self._grid_for = (self.total, config.threads_per_block,
                              *_cuda_kernels.step_grid(self.total, config.threads_per_block))
        launch.launch(self._grid_for[2], self._grid_for[3], raw)

    def _launch_numba(self, uniform, flags, stream):
        """Launch the step through Numba's launcher (the table and scalars
        are on the device)."""
        _cuda_kernels.launch_step(
            self.kernels.step,
            _cuda_kernels.StepArgs(table=self._table_d, scal=self._scal_d, state=self.state,
                                   uniform=uniform, s=self._scalars, flags=flags),
            stream, _threads())

    def _driver_args(self):
        """The argument buffer of the driver launch, made at the first step.

        The kernel compiles as it would for Numba's launcher, and a compile
        error is raised as it is; a failure after that (loading the module,
        finding the function, libcuda's entry points) is the driver launch's
        own, and the error says how to do without it.
        """
        from numadam.cuda import launch as _cuda_launch
        kernel = _driver_kernel(self.rule, self.dtype)
        try:
            launch = _cuda_launch.LaunchArgs(kernel, self.device)
            launch.set_array("table", self._table_d)
            launch.set_array("scal", self._scal_d)
        except Exception as error:
            raise RuntimeError(
                f"numadam could not set up its direct driver launch on device "
                f"{self.device} ({type(error).__name__}: {error}). Set "
                "numadam.cuda.config.launcher = 'numba' (the default) to launch through "
                "Numba instead (the same results, about 45 us more a step), and please "
                "report this with your numba-cuda and driver versions") from error
        self._table_address = device_address(self._table_d)
        self._scal_address = device_address(self._scal_d)
        # From now on prepare_uniform writes the scalars straight into the
        # launch's argument buffer.
        view = launch.values_view("s", self.dtype)
        view[:] = self._scalars
        self._scalars = view
        self._launch = launch
        return launch
