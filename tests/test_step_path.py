"""The fast paths of a step: a refused step leaves the next one as if it never ran.

``step([g])`` writes each checked gradient's address into the bucket tables
as it goes (numadam.core.optimizer), so a step refused after some words were
written must not leave a later ``step()`` reading them instead of the owned
buffers.
"""

import numpy as np
import pytest

import numadam


def _refuse_gradient(opt, arrays):
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.full(4, 1e6), np.zeros(3)])


def _refuse_hyperparameter(opt, arrays):
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.full(4, 1e6), np.full(4, 1e6)])
    opt.param_groups[0]["lr"] = 0.1


def _refuse_read_only(opt, arrays):
    arrays[1].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step([np.full(4, 1e6), np.full(4, 1e6)])
    arrays[1].flags.writeable = True


@pytest.mark.parametrize("refuse", [_refuse_gradient, _refuse_hyperparameter,
                                    _refuse_read_only])
@pytest.mark.parametrize("cls", ["Adam", "SGD", "Adagrad", "RMSprop"])
def test_owned_gradients_after_a_refused_step_with_gradients(cls, refuse):
    runs = []
    for refused in (False, True):
        arrays = [np.linspace(-1, 1, 4), np.linspace(2, 3, 4)]
        opt = getattr(numadam, cls)(arrays, lr=0.1)
        opt.grads[0][...] = [0.5, -0.25, 1.0, 2.0]
        opt.grads[1][...] = [-1.0, 0.125, 3.0, -0.5]
        opt.step()
        if refused:
            refuse(opt, arrays)
        opt.step()
        opt.step([g.copy() for g in opt.grads])
        opt.step()
        runs.append([a.view(np.uint64).copy() for a in arrays])
    for before, after in zip(*runs):
        np.testing.assert_array_equal(before, after)
