"""Agreement between ranks: one rank's error becomes every rank's error.

A rank that raised on its own would leave the others blocked in the next
collective. Every entry point of the sharded optimizer therefore runs its
local checks inside ``try``, shares the outcome with one small collective,
and only then moves data; if any rank failed, every rank raises the same
exception (type and message of the lowest failing rank) and nothing moves.
"""

from numadam.checkpoint import CheckpointError

__all__ = ["describe", "raise_agreed", "agree"]

_ERROR_TYPES = {cls.__name__: cls for cls in (
    TypeError, ValueError, FloatingPointError, RuntimeError, NotImplementedError,
    FileNotFoundError, PermissionError, IsADirectoryError, OSError, MemoryError,
    KeyError, IndexError, OverflowError, ZeroDivisionError, CheckpointError)}


def describe(error):
    """``(type name, message)`` of ``error``, or None; what ranks exchange.

    A type outside the known list travels as its nearest known base class,
    its own name leading the message.
    """
    if error is None:
        return None
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    base = next((cls.__name__ for cls in type(error).__mro__ if cls.__name__ in _ERROR_TYPES),
                None)
    if base != type(error).__name__:
        message = f"{type(error).__name__}: {message}"
    return (base or "RuntimeError", str(message))


def raise_agreed(infos, local_error, nranks):
    """Raise the error of the lowest failing rank in ``infos`` (one per rank).

    The exception has that rank's type (``RuntimeError`` for types outside a
    known list) and the same message on every rank; on the rank where it
    arose it is chained to the original exception.
    """
    failed = [rank for rank, info in enumerate(infos) if info is not None]
    if not failed:
        return
    name, message = infos[failed[0]]
    where = f"rank {failed[0]}"
    if len(failed) > 1:
        where += f" (and ranks {failed[1:]})"
    text = f"{message} [on {where} of {nranks}; raised on every rank]"
    cls = _ERROR_TYPES.get(name)
    if cls is None:
        cls, text = RuntimeError, f"{name}: {text}"
    raise cls(text) from local_error


def agree(comm, error, payload=None):
    """Share each rank's local outcome; raise everywhere if any rank failed.

    Returns the list of every rank's ``payload`` (an ``allgather``).
    """
    infos = comm.allgather((describe(error), payload))
    raise_agreed([info for info, _ in infos], error, comm.Get_size())
    return [payload for _, payload in infos]
