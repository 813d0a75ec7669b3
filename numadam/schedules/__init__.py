"""Learning-rate schedules with torch's names, arguments and lr sequences.

Each schedule drives the ``"lr"`` of every group of an optimizer with
torch-like ``param_groups`` (every numadam optimizer, sharded ones included)
and is stepped once after each optimizer step, as in torch::

    opt = numadam.Adam([x], lr=0.1)
    sched = numadam.schedules.StepLR(opt, step_size=30, gamma=0.5)
    for _ in range(100):
        opt.step([grad(x)])
        sched.step()

Notes
-----
**Chained and closed forms.** torch computes most rates from the group's
current rate (``get_lr``, the "chained" form ``step()`` uses) and keeps a
closed form (``_get_closed_form_lr``) for ``step(epoch)``. The two differ in
the last bits (``CosineAnnealingLR``'s ratio of cosines drifts from
``eta_min + (base - eta_min) * (1 + cos(pi t / T)) / 2``, ``ExponentialLR``'s
and ``StepLR``'s repeated ``lr * gamma`` from ``base * gamma ** k``: in the
golden configurations most rates differ, by up to 3e-13 relative after 300
steps) and in behaviour (the chained form follows a rate edited by hand).
numadam follows the chained form, with torch 2.13's expressions evaluated in
its order, so the sequences are torch's bit for bit
(``tests/golden/make_schedules.py``). Where torch itself switches
to the closed form, so does numadam: ``SequentialLR`` restarts the schedule
it hands over to at a milestone with the closed form at epoch 0 (torch's
``_update_lr(0)``; ``LambdaLR``, ``OneCycleLR`` and the warm restarts have no
closed form and use ``get_lr``). ``step(epoch)`` (deprecated in torch) is not
offered; ``CyclicLR`` is not here.

**Negative rates.** ``LinearLR`` decaying to ``end_factor=0`` sets a
rate of 0 where torch's chained form rounds to a tiny negative one (about
half of the configurations, at the last step), and ``OneCycleLR`` with
``anneal_strategy="linear"`` where torch's extrapolates below 0 at step
``total_steps``; numadam's optimizers would refuse those rates.

**Resume.** ``state_dict()`` holds plain data (numbers, strings, lists,
dicts), so a checkpoint stores it (``opt.save(path, schedule=sched)``).
``load_state_dict`` also writes the rates the schedule last set (and
``initial_lr``, and ``OneCycleLR``'s group entries and momentum) into the
optimizer's groups. torch leaves them alone, so there a schedule built after
the optimizer's state was loaded, or loaded into a fresh optimizer without its
state, continues the chained form from the wrong rate (pytorch issues 29697,
65342); here the order of building and loading does not matter. A state
dict of torch's scheduler (``Counter`` milestones and all) loads too, so a run
moves from torch mid-way.

**Stricter than torch.** Counts (``step_size``, ``T_max``, ``total_iters``,
milestones) must be integers (not bools), non-negative; ``T_max`` and
``LinearLR``'s and ``PolynomialLR``'s ``total_iters`` at least 1 (torch's
``CosineAnnealingLR`` divides by zero at the first step, the other two in
their closed form, which ``SequentialLR`` uses at a milestone),
``ConstantLR``'s factor above 0 (torch divides by it at ``total_iters``),
every factor and rate a finite, non-negative real number (bools and NaN
refused), ``OneCycleLR`` without a phase of no length (torch divides by
zero in it). NumPy scalars are taken as Python numbers (torch refuses some;
with a ``numpy.float32`` factor its rates become float32 under NumPy 2).
``scripts/fuzz_schedules.py`` compares all of this with torch.
A NaN metric given to ``ReduceLROnPlateau`` counts as no improvement, as in
torch.
"""

from numadam.schedules.base import LRScheduler
from numadam.schedules.composite import ChainedScheduler, SequentialLR
from numadam.schedules.plateau import ReduceLROnPlateau
from numadam.schedules.shapes import WarmupCosineLR, WarmupStableDecayLR
from numadam.schedules.torch_forms import (ConstantLR, CosineAnnealingLR,
                                           CosineAnnealingWarmRestarts, ExponentialLR,
                                           LambdaLR, LinearLR, MultiplicativeLR,
                                           MultiStepLR, OneCycleLR, PolynomialLR, StepLR)

__all__ = ["LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR",
           "ConstantLR", "LinearLR", "ExponentialLR", "SequentialLR", "PolynomialLR",
           "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau",
           "CosineAnnealingWarmRestarts", "OneCycleLR", "WarmupCosineLR",
           "WarmupStableDecayLR"]
