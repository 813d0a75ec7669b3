"""One bucket's shard: its state, its buffers, and its three communication phases."""

import numpy as np
from mpi4py import MPI

from numadam.distributed.kernels import ordered_mean
from numadam.distributed.layout import LocalShard

_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}


class Shard(LocalShard):
    """Rank ``rank``'s part of ``bucket`` (a bucket of the plain optimizer,
    which never steps), with the buffers and collectives of a step.

    See :class:`~numadam.distributed.layout.LocalShard` for the state and
    the update. ``ordered``: gradients are summed in rank order
    (``Alltoallv``), else by ``MPI_Reduce_scatter``.
    """

    def __init__(self, bucket, rule, rank, nranks, args, ordered):
        super().__init__(bucket, rule, rank, nranks, args)
        self.mpi_type = _MPI_TYPES[self.dtype]
        self.nranks = nranks
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
