"""The contenders of the bench's ``sgd``, ``adagrad`` and ``rmsprop`` sections.

Each rule runs at the settings whose traffic is 3 reads and 2 writes per
element: SGD with momentum (p, g, momentum_buffer), Adagrad (p, g, sum) and
RMSprop without momentum or centering (p, g, square_avg), against the
streaming kernel with that traffic (:data:`numadam.bench.contenders.stream_3r2w`),
an in-place NumPy loop and torch.
"""

import functools

import numpy as np

import numadam
from numadam.bench.contenders import Contender, Unavailable, make_arrays, stream_3r2w

__all__ = ["RULES", "RuleBench", "SGD_HYPER", "ADAGRAD_HYPER", "RMSPROP_HYPER"]

SGD_HYPER = dict(lr=1e-3, momentum=0.9)
ADAGRAD_HYPER = dict(lr=1e-2)
RMSPROP_HYPER = dict(lr=1e-2, alpha=0.99)


def _numadam_rule(sizes, dtype, amsgrad, cls, hyper):
    params = make_arrays(sizes, dtype, 1)
    opt = getattr(numadam, cls)(params, **hyper)
    return functools.partial(opt.step, make_arrays(sizes, dtype, 2))


def _numpy_rule(sizes, dtype, amsgrad, update):
    """A NumPy loop over arrays, every operation in place, sharing one scratch
    buffer; ``update(p, g, state, scratch)`` is one array's step."""
    params = make_arrays(sizes, dtype, 1)
    grads = make_arrays(sizes, dtype, 2)
    state = [np.zeros_like(p) for p in params]
    scratch = np.empty(max(sizes), dtype)

    def step():
        for p, g, a in zip(params, grads, state):
            update(p, g, a, scratch[:p.size])
    return step


def _numpy_sgd(p, g, buf, s):
    lr, momentum = SGD_HYPER["lr"], SGD_HYPER["momentum"]
    buf *= momentum
    buf += g
    np.multiply(buf, -lr, out=s)
    p += s


def _numpy_adagrad(p, g, acc, s):
    lr, eps = ADAGRAD_HYPER["lr"], 1e-10     # lr_decay 0: the rate is lr at every step
    np.multiply(g, g, out=s)
    acc += s
    np.sqrt(acc, out=s)
    s += eps
    np.divide(g, s, out=s)
    s *= -lr
    p += s


def _numpy_rmsprop(p, g, sq, s):
    lr, alpha, eps = RMSPROP_HYPER["lr"], RMSPROP_HYPER["alpha"], 1e-8
    sq *= alpha
    np.multiply(g, g, out=s)
    s *= 1 - alpha
    sq += s
    np.sqrt(sq, out=s)
    s += eps
    np.divide(g, s, out=s)
    s *= -lr
    p += s


def _torch_rule(sizes, dtype, amsgrad, cls, hyper, flags):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed") from None
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in make_arrays(sizes, dtype, 1)]
    for p, g in zip(params, make_arrays(sizes, dtype, 2)):
        p.grad = torch.from_numpy(g)
    return getattr(torch.optim, cls)(params, **hyper, **flags).step


class RuleBench:
    """One rule's section of the bench: its contenders (numadam first, the
    streaming kernel with the same traffic second) and ``accesses``, the array
    accesses per element of an ideal single pass."""

    def __init__(self, section, cls, hyper, numpy_update, torch_flags, accesses, stream):
        self.section, self.accesses, self.stream = section, accesses, stream
        self.contenders = (
            Contender(f"numadam {cls}", functools.partial(_numadam_rule, cls=cls,
                                                          hyper=hyper), 3),
            stream,
            Contender(f"NumPy in-place {cls}", functools.partial(_numpy_rule,
                                                                 update=numpy_update), 4))
        self.contenders += tuple(
            Contender(f"torch {mode} {cls}", functools.partial(
                _torch_rule, cls=cls, hyper=hyper, flags=flags), 3)
            for mode, flags in torch_flags)
        # The 10-element step: numadam's fixed cost per call, and torch's.
        self.tiny = (self.contenders[0],) + self.contenders[3:]


RULES = {r.section: r for r in (
    RuleBench("sgd", "SGD", SGD_HYPER, _numpy_sgd, [("fused", dict(fused=True))], 5,
              stream_3r2w),
    RuleBench("adagrad", "Adagrad", ADAGRAD_HYPER, _numpy_adagrad,
              [("fused", dict(fused=True))], 5, stream_3r2w),
    # torch has no fused RMSprop; numadam matches its for-loop path's bits.
    RuleBench("rmsprop", "RMSprop", RMSPROP_HYPER, _numpy_rmsprop,
              [("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True))], 5,
              stream_3r2w))}
