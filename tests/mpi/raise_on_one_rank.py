"""A user's exception on one rank between two steps of ``ShardedAdam``.

The last rank raises after the first step while the others go on into the
next step's collectives. Under ``mpiexec -n P python -m mpi4py`` the uncaught
exception calls ``MPI_Abort`` and the whole job ends at once; under plain
``python`` the other ranks would wait in the collective forever.
"""

import numpy as np
from mpi4py import MPI

from numadam.distributed import ShardedAdam

comm = MPI.COMM_WORLD
x = np.zeros(10, np.float32)
opt = ShardedAdam([x], lr=0.1)
for step in range(3):
    if step == 1 and comm.Get_rank() == comm.Get_size() - 1:
        raise RuntimeError(f"a user error on rank {comm.Get_rank()}")
    opt.step([np.ones(10, np.float32)])
print("not reached: every rank finished", flush=True)
