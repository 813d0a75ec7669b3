"""Parameter-group bookkeeping: which entries were validated, and the
``params`` list that refuses changes."""

__all__ = ["raw", "same_as_validated", "STALE", "ParamList"]


def raw(group):
    """The objects ``_kernel_args`` compares by identity, in its order."""
    return (group["lr"], group["betas"], group["eps"], group["weight_decay"],
            group["amsgrad"], group["maximize"], group["decoupled_weight_decay"],
            group["params"])


def same_as_validated(group, validated):
    """Whether ``group``'s entries equal the ``validated`` ones (from :func:`raw`)
    in value and type (``betas`` and ``params`` must be the very objects)."""
    now = raw(group)
    if now[1] is not validated[1] or now[7] is not validated[7]:
        return False
    for k in (0, 2, 3, 4, 5, 6):
        value, old = now[k], validated[k]
        if value is not old and (type(value) is not type(old) or not value == old):
            return False
    return True


# Matches no group: a group installed with it is validated at the next step.
STALE = (object(),) * 8


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
