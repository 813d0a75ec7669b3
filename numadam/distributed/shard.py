"""One bucket's shard: its state, its buffers, and its three communication phases."""

import numpy as np
from mpi4py import MPI

from numadam.cpu.bucket import Bucket
from numadam.cpu.kernels import PTR_G, STEP
from numadam.distributed.kernels import ordered_mean
from numadam.distributed.layout import shard_bounds, shard_pieces, shard_table

_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}


class Shard:
    """Rank ``rank``'s part of ``bucket`` (an ``Adam`` bucket that never steps).

    ``grad`` holds the averaged gradient of the shard, ``state`` the moments
    (rows ``exp_avg``, ``exp_avg_sq`` and, with AMSGrad, ``max_exp_avg_sq``)
    of the shard only. ``steps``/``live`` track every parameter of the bucket
    on every rank, so any rank can describe the whole bucket's state.
    """

    # The attributes Bucket.step and Bucket.first_nonfinite read (table,
    # state, total, like) are defined here, so both run on a shard unchanged.
    step_kernel = Bucket.step
    first_nonfinite = Bucket.first_nonfinite

    def __init__(self, bucket, rank, nranks, ordered):
        self.bucket = bucket
        self.params = bucket.params
        self.indices = np.array(bucket.indices, np.int64)
        self.dtype = bucket.dtype
        self.like = np.empty(0, self.dtype)
        self.mpi_type = _MPI_TYPES[self.dtype]
        self.nranks = nranks
        self.full = bucket.total
        bounds = shard_bounds(self.full, nranks)
        self.counts = [int(c) for c in np.diff(bounds)]
        self.displs = [int(d) for d in bounds[:-1]]
        self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])
        self.total = self.hi - self.lo
        self.offsets = [int(o) for o in np.cumsum([0] + [p.size for p in self.params])[:-1]]
        sizes = [p.size for p in self.params]
        self.pieces = shard_pieces(self.offsets, sizes, self.lo, self.hi)
        self.grad = np.zeros(self.total, self.dtype)
        self.table, self.rows_param, self.grad_addresses = shard_table(
            self.params, self.pieces, self.lo, self.grad)
        self.steps = np.zeros(len(self.params), np.int64)
        self.live = np.zeros(len(self.params), np.int64)
        self.state = None
        self.ordered = ordered
        self.received = None    # (P, shard) gradient slices, ordered mode only
        self.staging = None     # flat bucket buffer for buckets of several arrays
        self.owned = None       # flat buffer behind opt.grads

    # ------------------------------------------------------------ buffers
    def owned_views(self):
        """Per-parameter views of the owned gradient buffer (created here)."""
        if self.owned is None:
            self.owned = np.zeros(self.full, self.dtype)
        return [self.owned[o:o + p.size].reshape(p.shape)
                for o, p in zip(self.offsets, self.params)]

    def _staging(self):
        if self.staging is None:
            self.staging = np.zeros(self.full, self.dtype)
        return self.staging

    def nbytes(self):
        """``(state bytes, buffer bytes)`` held by this rank for this bucket."""
        state = 0 if self.state is None else self.state.nbytes
        buffers = sum(b.nbytes for b in (self.grad, self.received, self.staging, self.owned)
                      if b is not None)
        return state, buffers

    # ------------------------------------------------------------- phases
    def send_buffer(self, grads):
        """The flat gradient this rank contributes (``grads``: list or None)."""
        if grads is None:
            return self.owned
        if len(self.params) == 1:
            return np.asarray(grads[0]).reshape(-1)
        flat = self._staging()
        for g, o, p in zip(grads, self.offsets, self.params):
            if g is not None:
                flat[o:o + p.size] = np.asarray(g).reshape(-1)
        return flat

    def reduce(self, comm, send):
        """Average every rank's ``send`` into ``self.grad`` (this rank's shard)."""
        kind = self.mpi_type
        if self.ordered:
            if self.received is None:
                self.received = np.empty((self.nranks, self.total), self.dtype)
            n = self.total
            comm.Alltoallv([send, (self.counts, self.displs), kind],
                           [self.received, ([n] * self.nranks,
                                            [q * n for q in range(self.nranks)]), kind])
            ordered_mean(self.received, self.grad)
        else:
            comm.Reduce_scatter([send, kind], [self.grad, kind], self.counts, MPI.SUM)
            np.divide(self.grad, self.dtype.type(self.nranks), out=self.grad)

    def use_gradients(self, has):
        """Point the rows of parameters with a gradient (``has[k]``) at ``grad``."""
        self.table[:, PTR_G] = self.grad_addresses * has[self.rows_param]

    def update(self, args, has):
        """The Adam step of this shard, through the same kernels as ``Adam``."""
        if self.state is None:
            self.state = np.zeros((3 if args[5] else 2, self.total), self.dtype)
        if self.total:
            self.table[:, STEP] = self.steps[self.rows_param]
            self.step_kernel(args)
        self.steps += has
        self.live |= has

    def allgather(self, comm, has):
        """Copy every rank's updated shard into the full parameters."""
        kind = self.mpi_type
        if len(self.params) == 1:
            flat = self.params[0].reshape(-1)
            comm.Allgatherv(MPI.IN_PLACE, [flat, (self.counts, self.displs), kind])
            return
        flat = self._staging()
        for k, start, end in self.pieces:
            o = self.offsets[k]
            flat[start:end] = self.params[k].reshape(-1)[start - o:end - o]
        comm.Allgatherv(MPI.IN_PLACE, [flat, (self.counts, self.displs), kind])
        for k, (o, p) in enumerate(zip(self.offsets, self.params)):
            if has[k]:
                p.reshape(-1)[...] = flat[o:o + p.size]

    def local_nonfinite(self, send, k):
        """True if this rank's own gradient of parameter ``k`` holds NaN or Inf."""
        o = self.offsets[k]
        return not bool(np.isfinite(send[o:o + self.params[k].size]).all())

    def row_param_index(self, row):
        """Global index of the parameter of table row ``row``."""
        return int(self.indices[self.rows_param[row]])
