"""Data-parallel least squares with ShardedAdam: each rank owns a slice of the data.

Run with MPI, from a venv made as in the README (``pip install -e ".[mpi]"``)::

    .venv/bin/mpiexec -n 2 .venv/bin/python -m mpi4py examples/mpi_fit.py

``python -m mpi4py`` turns an uncaught exception on any rank into ``MPI_Abort``,
so the job ends instead of leaving the other ranks waiting in a collective.

A synthetic multi-output linear model ``Y = X W + b + noise`` (20,000 samples,
200 features, 50 outputs: 10,050 parameters) is fitted by full-batch Adam.
Every rank generates the whole data set from the same seed and keeps its
contiguous slice of the samples, computes the gradient of the mean squared
error on that slice (scaled so that the average over ranks is the gradient on
the whole data set), and ``ShardedAdam`` averages the gradients, updates its
shard of the parameters and rebuilds them on every rank. Each rank prints the
optimizer-state memory it holds: about 1/P of what ``numadam.Adam`` needs.
"""

import argparse

import numpy as np
from mpi4py import MPI

import numadam
from numadam.distributed import ShardedAdam

SAMPLES, FEATURES, OUTPUTS = 20_000, 200, 50


def make_data(seed=0):
    """The same data on every rank (drawn from one seed)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((SAMPLES, FEATURES)).astype(np.float32)
    W = (rng.standard_normal((FEATURES, OUTPUTS)) / np.sqrt(FEATURES)).astype(np.float32)
    b = rng.standard_normal(OUTPUTS).astype(np.float32)
    Y = X @ W + b + 0.1 * rng.standard_normal((SAMPLES, OUTPUTS)).astype(np.float32)
    return X, Y, W, b


def main(steps=300, reduction="ordered", checkpoint=None, comm=MPI.COMM_WORLD):
    rank, size = comm.Get_rank(), comm.Get_size()
    X, Y, W_true, b_true = make_data()
    lo, hi = rank * SAMPLES // size, (rank + 1) * SAMPLES // size
    X, Y = X[lo:hi], Y[lo:hi]                     # this rank's data only
    scale = np.float32(2 * size / (SAMPLES * OUTPUTS))   # mean over ranks = full gradient

    W = np.zeros((FEATURES, OUTPUTS), np.float32)        # the same start on every rank
    b = np.zeros(OUTPUTS, np.float32)
    opt = ShardedAdam([W, b], lr=2e-2, reduction=reduction, comm=comm)
    gW, gb = opt.grads                            # owned buffers: step() copies nothing

    def closure():
        residual = X @ W + b - Y
        np.multiply(X.T @ residual, scale, out=gW)
        np.multiply(residual.sum(axis=0), scale, out=gb)
        return comm.allreduce(float(np.square(residual).sum())) / (SAMPLES * OUTPUTS)

    for step in range(1, steps + 1):
        loss = opt.step(closure=closure)
        if rank == 0 and (step == 1 or step % 100 == 0):
            print(f"step {step:4d}  mse {loss:.5f}", flush=True)

    adam_bytes = 2 * (W.nbytes + b.nbytes)
    lo_w, hi_w, total = opt.shard_ranges[0]
    lines = comm.gather(
        f"rank {rank}: elements [{lo_w}, {hi_w}) of {total}; optimizer state "
        f"{opt.state_nbytes / 1024:.1f} KiB (numadam.Adam: {adam_bytes / 1024:.1f} KiB), "
        f"communication buffers {opt.buffer_nbytes / 1024:.1f} KiB", root=0)
    error = float(np.abs(W - W_true).max())
    if rank == 0:
        print("\n".join(lines))
        print(f"max |W - W_true| = {error:.4f}  |b - b_true| = {np.abs(b - b_true).max():.4f}")
    if checkpoint:
        opt.save(checkpoint)                      # loads into numadam.Adam too
        if rank == 0:
            print(f"checkpoint written to {checkpoint} "
                  f"({len(numadam.load(checkpoint)['state'])} parameters)")
    return {"loss": loss, "error": error, "state_nbytes": opt.state_nbytes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reduction", choices=("ordered", "mpi"), default="ordered")
    parser.add_argument("--checkpoint", help="write a checkpoint here at the end")
    args = parser.parse_args()
    main(args.steps, args.reduction, args.checkpoint)
