"""Warmup shapes of the epoch alone: :class:`WarmupCosineLR`, :class:`WarmupStableDecayLR`."""

import math

from numadam.schedules.base import LRScheduler, _int, _real


class _Shape(LRScheduler):
    """A rate ``initial_lr * factor(epoch)`` of the epoch alone."""

    def get_lr(self):
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr


class WarmupCosineLR(_Shape):
    """Linear warmup from 0, then cosine decay to ``min_lr_ratio * initial_lr``.

    The factor of Hugging Face transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup`` (``num_cycles=0.5``,
    ``min_lr_rate=min_lr_ratio``), evaluated in its order::

        t < warmup_steps:  t / max(1, warmup_steps)
        otherwise:         p = (t - warmup_steps) / max(1, total_steps - warmup_steps)
                           0.5 * (1 + cos(pi * p)) * (1 - min_lr_ratio) + min_lr_ratio

    except that ``p`` stops at 1: after ``total_steps`` the rate stays at the
    floor (transformers' cosine rises again; optax's
    ``warmup_cosine_decay_schedule`` holds it too).
    """

    _hyper = ("warmup_steps", "total_steps", "min_lr_ratio")

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr_ratio=0.0, last_epoch=-1):
        self.__dict__.update(self._check(warmup_steps, total_steps, min_lr_ratio))
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check(warmup_steps, total_steps, min_lr_ratio):
        warmup_steps = _int("warmup_steps", warmup_steps, 0)
        total_steps = _int("total_steps", total_steps, 1)
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be <= total_steps "
                             f"({total_steps})")
        return {"warmup_steps": warmup_steps, "total_steps": total_steps,
                "min_lr_ratio": _real("min_lr_ratio", min_lr_ratio, 0.0, 1.0)}

    def _factor(self, t):
        if t < self.warmup_steps:
            return float(t) / float(max(1, self.warmup_steps))
        progress = min(1.0, float(t - self.warmup_steps)
                       / float(max(1, self.total_steps - self.warmup_steps)))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cosine * (1 - self.min_lr_ratio) + self.min_lr_ratio


class WarmupStableDecayLR(_Shape):
    """Warmup, a constant stretch, then a decay to ``min_lr_ratio * initial_lr``.

    The warmup-stable-decay ("trapezoidal") schedule of MiniCPM
    (arXiv 2404.06395) with the cooldown shapes compared by Hägele et al.
    (arXiv 2405.18392, who recommend "1-sqrt"). The factor is that of Hugging
    Face transformers' ``get_wsd_schedule`` (``warmup_type="linear"``,
    ``num_cycles=0.5``), evaluated in its order::

        t < warmup_steps:                   w = t / max(1, warmup_steps)
                                            w * (1 - min_lr_ratio) + min_lr_ratio
        t < warmup_steps + stable_steps:    1
        t < warmup + stable + decay_steps:  p = (t - warmup_steps - stable_steps)
                                                / max(1, decay_steps)
                    d = 1 - p  ("linear"),  0.5 * (1 + cos(pi * p))  ("cosine"),
                        1 - sqrt(p)  ("1-sqrt")
                    d * (1 - min_lr_ratio) + min_lr_ratio
        afterwards:                         min_lr_ratio
    """

    _hyper = ("warmup_steps", "stable_steps", "decay_steps", "min_lr_ratio", "decay")
    _DECAYS = ("linear", "cosine", "1-sqrt")

    def __init__(self, optimizer, warmup_steps, stable_steps, decay_steps, min_lr_ratio=0.0,
                 decay="cosine", last_epoch=-1):
        self.__dict__.update(self._check(warmup_steps, stable_steps, decay_steps,
                                         min_lr_ratio, decay))
        super().__init__(optimizer, last_epoch)

    @classmethod
    def _check(cls, warmup_steps, stable_steps, decay_steps, min_lr_ratio, decay):
        if decay not in cls._DECAYS:
            raise ValueError(f"decay must be one of {cls._DECAYS}, got {decay!r}")
        return {"warmup_steps": _int("warmup_steps", warmup_steps, 0),
                "stable_steps": _int("stable_steps", stable_steps, 0),
                "decay_steps": _int("decay_steps", decay_steps, 0),
                "min_lr_ratio": _real("min_lr_ratio", min_lr_ratio, 0.0, 1.0), "decay": decay}

    def _factor(self, t):
        floor = self.min_lr_ratio
        if t < self.warmup_steps:
            return float(t) / float(max(1, self.warmup_steps)) * (1.0 - floor) + floor
        if t < self.warmup_steps + self.stable_steps:
            return 1.0
        if t >= self.warmup_steps + self.stable_steps + self.decay_steps:
            return floor
        p = float(t - self.warmup_steps - self.stable_steps) / float(max(1, self.decay_steps))
        if self.decay == "linear":
            d = 1.0 - p
        elif self.decay == "cosine":
            d = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            d = 1.0 - math.sqrt(p)
        return d * (1.0 - floor) + floor
