"""Validation Dice of a variational network on whole held-out volumes (``tunepp train-vi``'s last line).

The posterior-mean network (``noise=None`` in eval mode: every weight at its mean ``mu``) is
evaluated, one sliding-window pass per case, with the config's window, overlap and batch — the
number a reader compares with ``tunepp train``'s deterministic validation Dice. The S-sample MC
mean that ``tunepp infer`` segments with would cost S passes per case and differs little once the
posterior has shrunk; its Dice is what ``tunepp evaluate`` on the inference outputs reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class


@torch.no_grad()
def validation_dice(net: BayesianSegNet, cfg: TuneppConfig, cases: list[LoadedCase]) -> dict[str, Any]:
    """``{"val_dice", "val_iou": means over classes, "val_dice_per_class": {name: dice}}`` (NaN-aware means over
    cases); IoU too because the variational seed reports Dice and IoU."""
    net.eval()
    k = cfg.data.num_classes

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(net(x).float(), dim=1)]

    dices, ious = [], []
    for case in cases:
        vol = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None]
        (prob,) = sliding_window(vol, predict, cfg.window, overlap=cfg.infer.overlap, batch=cfg.infer.max_batch)
        pred = prob.argmax(0).numpy()
        dices.append(dice_per_class(pred, case.label, k))
        ious.append(iou_per_class(pred, case.label, k))
    per_class = np.nanmean(np.stack(dices), axis=0) if dices else np.full(k - 1, np.nan)
    iou = np.nanmean(np.stack(ious), axis=0) if ious else np.full(k - 1, np.nan)
    return {
        "val_dice": float(np.nanmean(per_class)),
        "val_iou": float(np.nanmean(iou)),
        "val_dice_per_class": {n: float(d) for n, d in zip(cfg.data.classes[1:], per_class, strict=True)},
    }


__all__ = ["validation_dice"]
