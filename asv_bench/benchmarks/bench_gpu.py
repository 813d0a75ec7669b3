"""GPU step time (the CuPy / ``__cuda_array_interface__`` path).

Skipped (``NotImplementedError`` in setup, which asv reports as skipped)
where CuPy, a GPU or numadam's CUDA backend is missing. The timed call
synchronises the device, so it measures the step, not its launch.
"""

from .common import SIZES, mixed_sizes


def _cuda_optimizer(sizes, dtype, amsgrad=False):
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise NotImplementedError("no CUDA device")
    except (ImportError, RuntimeError) as why:   # no CuPy, or no driver
        raise NotImplementedError(f"CuPy or a GPU is missing: {why}") from None
    except Exception as why:                      # cupy's CUDARuntimeError
        raise NotImplementedError(f"no usable GPU: {why}") from None
    import numadam
    rng = cupy.random.default_rng(0)
    params = [rng.standard_normal(n, dtype=dtype) * 1e-2 for n in sizes]
    grads = [rng.standard_normal(n, dtype=dtype) * 1e-2 for n in sizes]
    opt = numadam.Adam(params, lr=1e-3, amsgrad=amsgrad)
    opt.step(grads)     # compiles; an error here is a failure, not a skip
    cupy.cuda.get_current_stream().synchronize()
    return opt, grads, cupy.cuda.get_current_stream()


class TimeGPUFlat:
    params = ([n for n in SIZES if n >= 1_000] + [2**28], ["float32", "float64"],
              [False, True])
    param_names = ["size", "dtype", "amsgrad"]
    timeout = 300

    def setup(self, size, dtype, amsgrad):
        self.opt, self.grads, self.stream = _cuda_optimizer([size], dtype, amsgrad)

    def time_step(self, size, dtype, amsgrad):
        self.opt.step(self.grads)
        self.stream.synchronize()


class TimeGPUSmall:
    """Launch cost: one 10-element array, with its gradient passed (the same
    array each step) and with the optimizer's own buffers (``opt.grads``)."""

    def setup(self):
        self.opt, self.grads, self.stream = _cuda_optimizer([10], "float32")
        self.opt.grads[0][...] = self.grads[0]

    def time_step(self):
        self.opt.step(self.grads)
        self.stream.synchronize()

    def time_step_owned_grads(self):
        self.opt.step()
        self.stream.synchronize()


class TimeGPUMixed:
    def setup(self):
        self.opt, self.grads, self.stream = _cuda_optimizer(mixed_sizes(), "float32")

    def time_step(self):
        self.opt.step(self.grads)
        self.stream.synchronize()
