"""Learning-rate schedule: linear warm-up, then cosine or polynomial decay, per iteration.

Warm-up matters for the attention blocks (their learnable temperatures and layer scales blow up
with a full learning rate on the first noisy batches); stepping per iteration rather than per
epoch keeps short schedules (the phantom config) smooth.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * 0.99 + 0.01
    return max(0.01, (1.0 - progress) ** 0.9)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, kind: str
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, kind))
