"""Per-iteration schedules (DINOv2): lr with linear warmup + cosine, weight decay cosine, teacher EMA
momentum cosine, teacher temperature linear warmup then constant, last layer frozen at the start;
or DINOv3's constant ones (`optim.schedule: constant`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cosine:
    """Linear from `start` to `base` over `warmup` iterations, then cosine from `base` to `final` at `total`;
    `final` from `total` on."""

    base: float
    final: float
    total: int
    warmup: int = 0
    start: float = 0.0

    def __call__(self, it: int) -> float:
        if it >= self.total:
            return self.final
        if it < self.warmup:
            return self.start + (self.base - self.start) * it / self.warmup
        span = max(self.total - self.warmup, 1)
        return self.final + 0.5 * (self.base - self.final) * (1.0 + math.cos(math.pi * (it - self.warmup) / span))


def scaled_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """DINOv2 learning-rate scaling with the global batch size (reference batch 1024)."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_1024":
        return base_lr * global_batch / 1024.0
    return base_lr


@dataclass(frozen=True)
class Schedules:
    lr: Cosine
    weight_decay: Cosine
    momentum: Cosine
    teacher_temp: Cosine
    freeze_last_layer_iters: int
    total_iters: int

    def at(self, it: int) -> dict[str, float]:
        lr = self.lr(it)
        return {
            "lr": lr,
            "last_layer_lr": 0.0 if it < self.freeze_last_layer_iters else lr,
            "weight_decay": self.weight_decay(it),
            "momentum": self.momentum(it),
            "teacher_temp": self.teacher_temp(it),
        }


def build_schedules(cfg: Any, global_batch: int) -> Schedules:
    """All schedules of a run from the `optim` and `teacher` config sections.

    `optim.schedule: constant` gives DINOv3's: the learning rate warms up linearly and then stays at
    its peak, weight decay stays at `optim.weight_decay` and the teacher momentum at
    `teacher.momentum_teacher` (the `*_end` / final values and `min_lr` are unused); the teacher
    temperature warm-up and the last-layer freeze are as in DINOv2.
    """
    o, t = cfg.optim, cfg.teacher
    per_epoch = int(o.epoch_length)
    total = int(o.epochs) * per_epoch
    lr = scaled_lr(float(o.base_lr), global_batch, o.scaling_rule)
    warm_temp = int(t.warmup_teacher_temp_epochs * per_epoch)
    constant = o.schedule == "constant"
    wd, momentum = float(o.weight_decay), float(t.momentum_teacher)
    return Schedules(
        lr=Cosine(lr, lr if constant else float(o.min_lr), total, warmup=int(o.warmup_epochs * per_epoch)),
        weight_decay=Cosine(wd, wd if constant else float(o.weight_decay_end), total),
        momentum=Cosine(momentum, momentum if constant else float(t.final_momentum_teacher), total),
        teacher_temp=Cosine(float(t.teacher_temp), float(t.teacher_temp), warm_temp, warmup=warm_temp, start=float(t.warmup_teacher_temp)),
        freeze_last_layer_iters=int(o.freeze_last_layer_epochs * per_epoch),
        total_iters=total,
    )
