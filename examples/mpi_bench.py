"""Step time and bytes communicated by ShardedAdam against the number of ranks.

    python examples/mpi_bench.py                     # P = 1..4, 4M float32
    python examples/mpi_bench.py --ranks 1 2 --elements 1000000

Starts ``mpiexec -n P python -m mpi4py`` for each P (one Numba thread per
rank; ``-m mpi4py`` makes a rank's exception end the job rather than hang it),
and prints a markdown table: the median step time in both reduction modes, the payload
bytes each rank receives per step, the optimizer state per rank, and the
pieces a scaling model needs, measured in the same run: the shard update
alone, the effective bandwidth of the gradient exchange and of the
parameter allgather, and the latency of a small allreduce.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def _median_time(fn, comm, repeats):
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - start, op=_max()))
    return statistics.median(times)


def _max():
    from mpi4py import MPI
    return MPI.MAX


def worker(elements, repeats):
    from mpi4py import MPI

    import numadam
    from numadam.distributed import ShardedAdam

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    grad = rng.standard_normal(elements).astype(np.float32)
    row = {"P": size, "elements": elements}
    for reduction in ("ordered", "mpi"):
        w = np.zeros(elements, np.float32)
        opt = ShardedAdam([w], lr=1e-3, reduction=reduction)
        for _ in range(3):
            opt.step([grad])
        row[f"step_{reduction}_ms"] = 1e3 * _median_time(lambda: opt.step([grad]), comm, repeats)
    shard = opt._shards[0]
    moved = opt.bytes_per_step()
    row["recv_bytes"] = moved["reduce_recv"] + moved["gather_recv"]
    row["send_bytes"] = moved["reduce_send"] + moved["gather_send"]
    row["state_bytes"] = opt.state_nbytes
    row["buffer_bytes"] = opt.buffer_nbytes
    send = grad
    t_alltoall = _median_time(lambda: shard.reduce(comm, send), comm, repeats)
    t_gather = _median_time(lambda: comm.Allgatherv(
        MPI.IN_PLACE, [w, (shard.counts, shard.displs), MPI.FLOAT]), comm, repeats)
    local = np.zeros(shard.total, np.float32)
    solo = numadam.Adam([local], lr=1e-3)
    g_local = grad[:shard.total].copy()
    solo.step([g_local])
    t_update = _median_time(lambda: solo.step([g_local]), comm, repeats)
    small = np.zeros(8, np.int64)
    t_small = _median_time(lambda: comm.Allreduce(MPI.IN_PLACE, small, op=MPI.MAX),
                           comm, 5 * repeats)
    row["alltoall_ms"] = 1e3 * t_alltoall
    row["allgather_ms"] = 1e3 * t_gather
    row["update_ms"] = 1e3 * t_update
    row["allreduce_us"] = 1e6 * t_small
    row["reduce_GBps"] = moved["reduce_recv"] / t_alltoall / 1e9 if size > 1 else None
    row["gather_GBps"] = moved["gather_recv"] / t_gather / 1e9 if size > 1 else None
    row["update_GBps"] = 28 * shard.total / t_update / 1e9
    if rank == 0:
        print("RESULT " + json.dumps(row), flush=True)


def table(rows):
    lines = [
        "| P | step, ordered (ms) | step, mpi (ms) | received per rank per step (MB) "
        "| state per rank (MB) | update alone (ms) | gradient exchange (GB/s) "
        "| allgather (GB/s) | small allreduce (us) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bw = [f"{r[k]:.2f}" if r[k] else "-" for k in ("reduce_GBps", "gather_GBps")]
        lines.append(
            f"| {r['P']} | {r['step_ordered_ms']:.2f} | {r['step_mpi_ms']:.2f} "
            f"| {r['recv_bytes'] / 1e6:.1f} | {r['state_bytes'] / 1e6:.1f} "
            f"| {r['update_ms']:.2f} | {bw[0]} | {bw[1]} | {r['allreduce_us']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--elements", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.elements, args.repeats)
        return
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    rows = []
    for nranks in args.ranks:
        done = subprocess.run(
            [mpiexec, "-n", str(nranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
             "--elements", str(args.elements), "--repeats", str(args.repeats)],
            capture_output=True, text=True, env=env, timeout=600)
        if done.returncode:
            sys.exit(done.stdout + done.stderr)
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"P={nranks} done", file=sys.stderr, flush=True)
    print(f"{args.elements} float32 elements in one array, {os.cpu_count()} cores, "
          "one Numba thread per rank, medians of "
          f"{args.repeats} steps\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
