"""The update rules: one module each, registered here.

A rule module declares its :class:`~numadam.core.rule.UpdateRule` as ``RULE``
and its torch-like classes. Modules are imported on first use, so a rule that
is never used costs nothing at ``import numadam``. How to add a rule:
``CONTRIBUTING.md``.
"""

import importlib
from collections import namedtuple

__all__ = ["REGISTRY", "CLASSES", "Registration", "rule", "module"]

Registration = namedtuple("Registration", "module classes")

# rule name -> its module and public classes
REGISTRY = {
    "adam": Registration("numadam.rules.adam", ("Adam", "AdamW")),
    "sgd": Registration("numadam.rules.sgd", ("SGD",)),
    "adagrad": Registration("numadam.rules.adagrad", ("Adagrad",)),
    "rmsprop": Registration("numadam.rules.rmsprop", ("RMSprop",)),
}

# class name -> rule name
CLASSES = {cls: name for name, entry in REGISTRY.items() for cls in entry.classes}


def module(name):
    """The module of rule ``name`` (imported on first use)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown update rule {name!r}; numadam has {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[name].module)


def rule(name):
    """The :class:`~numadam.core.rule.UpdateRule` of rule ``name``."""
    return module(name).RULE
