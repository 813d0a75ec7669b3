"""The one place the tests reach numadam's internals.

numadam's public modules are ``numadam`` (the rule classes, ``minimize``,
``save``/``load``, ``config``), ``numadam.functional``, ``numadam.checkpoint``,
``numadam.cuda`` and ``numadam.distributed``; everything in its subpackages
(``core``, ``rules``, ``cpu``, ``cuda``'s and ``distributed``'s modules,
``fit``, ``bench``) is internal and may change. Tests that check an internal
piece directly (kernel tables, the thread pool, the sharding layout, the
CUDA launcher, the stopping rule of ``minimize``) import it from here, so
that what they depend on is listed in one file::

    from internals import cpu_kernels, NCOLS, ordered_mean

Everything resolves lazily: importing this module imports nothing of numadam,
and the CUDA and MPI pieces load (numba.cuda, mpi4py) only when a test asks.
Code that tests run in a fresh interpreter (``python -c``, mpiexec) imports
numadam as a user would.
"""

import importlib

# alias -> internal module
MODULES = {
    "bench_streams": "numadam.bench.streams",
    "core_checkpoint_file": "numadam.core.checkpoint_file",
    "cpu_kernels": "numadam.cpu.kernels",
    "cpu_pool": "numadam.cpu.pool",
    "cuda_adapters": "numadam.cuda.adapters",
    "cuda_bucket": "numadam.cuda.bucket",
    "cuda_kernels": "numadam.cuda.kernels",
    "cuda_launch": "numadam.cuda.launch",
    "distributed_sharded": "numadam.distributed.sharded",
    "fit_support": "numadam.fit.support",
    "rules": "numadam.rules",
    "rules_adam": "numadam.rules.adam",
    "rules_rmsprop": "numadam.rules.rmsprop",
}

# name -> the internal module that defines it
NAMES = {
    "warnings_for": "numadam.bench",
    "NCOLS": "numadam.cpu.kernels",
    "OFFSET": "numadam.cpu.kernels",
    "square_sum_bins": "numadam.cpu.norm",
    "PTR_G": "numadam.cpu.kernels",
    "SIZE": "numadam.cpu.kernels",
    "address": "numadam.cpu.kernels",
    "TASKS_PER_THREAD": "numadam.cpu.pool",
    "device_address": "numadam.cuda.adapters",
    "interface_stream": "numadam.cuda.adapters",
    "device_element": "numadam.cuda.kernels",
    "ctypes_fields": "numadam.cuda.launch",
    "describe": "numadam.distributed.agree",
    "raise_agreed": "numadam.distributed.agree",
    "NBINS": "numadam.distributed.kernels",
    "NONFINITE": "numadam.distributed.kernels",
    "OVERFLOW": "numadam.distributed.kernels",
    "bins_to_sum": "numadam.distributed.kernels",
    "ordered_mean": "numadam.distributed.kernels",
    "ordered_mean_parallel": "numadam.distributed.kernels",
    "ordered_mean_serial": "numadam.distributed.kernels",
    "square_bins": "numadam.distributed.kernels",
    "square_bins_parallel": "numadam.distributed.kernels",
    "square_bins_serial": "numadam.distributed.kernels",
    "LocalShard": "numadam.distributed.layout",
    "bytes_per_step": "numadam.distributed.layout",
    "first_difference": "numadam.distributed.layout",
    "layout_signature": "numadam.distributed.layout",
    "shard_bounds": "numadam.distributed.layout",
    "shard_pieces": "numadam.distributed.layout",
    "AGREEMENT": "numadam.fit.support",
    "NOISE_Z": "numadam.fit.support",
    "ValueTrend": "numadam.fit.support",
    "projected_gradient": "numadam.fit.support",
    "CLASSES": "numadam.rules",
    "REGISTRY": "numadam.rules",
    "rule": "numadam.rules",
    "BC2_SQRT": "numadam.rules.adam",
    "NEG_STEP": "numadam.rules.adam",
    "NSCALARS": "numadam.rules.adam",
    "scalars_into": "numadam.rules.adam",
}


# alias -> (internal module, name there)
RENAMED = {"clip_gradient": ("numadam.cpu.kernels", "gradient")}


def __getattr__(name):
    if name in RENAMED:
        module, real = RENAMED[name]
        return getattr(importlib.import_module(module), real)
    if name in MODULES:
        return importlib.import_module(MODULES[name])
    if name in NAMES:
        return getattr(importlib.import_module(NAMES[name]), name)
    raise AttributeError(f"internals has no {name!r}; add it to MODULES or NAMES")


def __dir__():
    return sorted({*MODULES, *NAMES, *RENAMED})
