"""Parameter-group bookkeeping: the marker of a group not yet validated, the
records kept per group and per parameter, and the ``params`` list that
refuses changes."""

from collections import namedtuple

__all__ = ["STALE", "ParamList", "Validated", "Slot"]


# A group's validation, kept per group: the entries compared by identity at
# every step (``raw``) and the kernel arguments they gave (``args``).
Validated = namedtuple("Validated", "raw args")

# Where a parameter lives: its bucket and its row of the bucket's table.
Slot = namedtuple("Slot", "bucket row")

# Matches no group: a group installed with it is validated at the next step.
# Longer than any rule's list of entries.
STALE = (object(),) * 32


class ParamList(list):
    """``param_groups[i]["params"]``: a list that refuses changes.

    The buckets are built from these arrays at construction; a changed list
    would be silently ignored, so changing it raises instead (replacing the
    whole list is refused at the next step).
    """

    def _refuse(self, *args, **kwargs):
        raise TypeError("param_groups[i]['params'] cannot be changed: the optimizer "
                        "keeps the arrays it was given. Add arrays with "
                        "add_param_group, or build a new optimizer")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return ParamList, (list(self),)
