"""numadam's optimizers with their state sharded over MPI ranks (ZeRO stage 1).

:class:`ShardedAdam`, :class:`ShardedAdamW`, :class:`ShardedSGD`,
:class:`ShardedAdagrad` and :class:`ShardedRMSprop` take the arguments of
``numadam.Adam``, ``AdamW``, ``SGD``, ``Adagrad`` and ``RMSprop`` plus the
sharding options of :class:`~numadam.distributed.sharded.ShardedOptimizer`,
through mpi4py. Every rank holds the full parameters; rank ``r`` of ``P``
keeps the optimizer state of one contiguous ``1/P`` of the flattened
parameter space only. A step:

1. **agrees** (``Allreduce`` of ``3 + 2K`` int64, ``K`` parameters): each rank
   has validated its gradients and the hyperparameters locally; a failure or
   a disagreement on any rank raises the same error on every rank before any
   data moves;
2. **reduce-scatters** the gradients: rank ``r`` receives every rank's slice
   of its shard and averages them (``reduction="ordered"``: ``Alltoallv``, then
   a sum in rank order; ``reduction="mpi"``: ``Reduce_scatter``, MPI's order);
3. with ``check_finite`` or ``max_grad_norm``, **agrees** once more
   (``Allreduce`` of one int64, or of 4098 int64 integer bins for the norm);
4. **updates** its shard with the rule's own CPU kernels, through a table
   whose rows point into the middle of the parameter arrays;
5. **allgathers** the updated shards into every rank's parameters
   (``Allgatherv`` in place).

Per rank and step that moves about ``2 (P-1)/P N s`` bytes in and as many out
(``N`` elements of ``s`` bytes; :meth:`ShardedOptimizer.bytes_per_step`), and keeps
``1/P`` of the rule's state elements (Adam ``2N/P``, AMSGrad ``3N/P``).

Importing ``numadam.distributed`` imports nothing; the first use of a
sharded optimizer imports mpi4py (and so initialises MPI). ``import numadam``
does not.
"""

__all__ = ["ShardedAdam", "ShardedAdamW", "ShardedSGD", "ShardedAdagrad", "ShardedRMSprop",
           "ShardedOptimizer", "REDUCTIONS", "CLIP_EPS"]


def __getattr__(name):
    # Lazy: the submodules (agree, kernels, layout) are importable without mpi4py.
    if name in __all__:
        from numadam.distributed import sharded
        return getattr(sharded, name)
    from numadam.rules import CLASSES
    if name.startswith("Sharded") and name[len("Sharded"):] in CLASSES:
        # A registered rule's class without a hand-written sharded twin.
        import numadam
        from numadam.distributed import sharded
        return sharded.sharded_class(getattr(numadam, name[len("Sharded"):]))
    raise AttributeError(f"module 'numadam.distributed' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
