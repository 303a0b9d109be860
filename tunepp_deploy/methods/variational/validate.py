"""Validation of a variational network on whole held-out volumes: Dice (``tunepp train-vi``'s last
line) and, for the posterior-width study, the uncertainty of S posterior samples.

The posterior-mean network (``noise=None`` in eval mode: every weight at its mean ``mu``) is
evaluated, one sliding-window pass per case, with the config's window, overlap and batch — the
number a reader compares with ``tunepp train``'s deterministic validation Dice. The S-sample MC
mean that ``tunepp infer`` segments with would cost S passes per case and differs little once the
posterior has shrunk; its Dice is what ``tunepp evaluate`` on the inference outputs reports.

:func:`validation_uncertainty` draws S weight samples (:func:`~.noise.sample_weight_noise`, the
deployment form ``w = mu + sigma eps``, one sample shared by every window) and scores the MC mean:
its Dice, the predictive entropy and the mutual information (epistemic part) averaged over the true
foreground, and the voxel AUROC of the predictive entropy for errors of the MC-mean argmax among
the voxels within ``near`` voxels (26-neighbourhood dilation) of the true or predicted foreground —
the background far from any organ is trivially right and would inflate the AUROC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.infer.uncertainty import entropy
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.noise import sample_weight_noise
from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class
from tunepp_deploy.metrics.ranking import auroc


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


@torch.no_grad()
def validation_uncertainty(
    net: BayesianSegNet, cfg: TuneppConfig, cases: list[LoadedCase], samples: int = 8, seed: int = 0, near: int = 2,
) -> dict[str, float]:
    """``{"mc_dice", "fg_entropy", "fg_mutual_info", "error_auroc_near_fg", "error_rate_near_fg"}`` over
    ``cases`` (module docstring): Dice and the two foreground means are averaged over cases (NaN-aware),
    the AUROC pools the near-foreground voxels of all cases."""
    if samples < 1 or near < 0:
        raise TuneppError(f"samples must be >= 1 and near >= 0, got {samples}, {near}")
    if not cases:
        raise TuneppError("no validation cases")
    net.eval()
    k = cfg.data.num_classes
    noise = sample_weight_noise(net.noise_shapes(), samples, seed)
    eps = [noise.sample(s) for s in range(samples)]

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(net(x, e).float(), dim=1) for e in eps]

    dices, ent, mi, scores, errors = [], [], [], [], []
    ball = ndimage.generate_binary_structure(3, 3)
    for case in cases:
        vol = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None]
        probs = torch.stack(sliding_window(vol, predict, cfg.window, overlap=cfg.infer.overlap,
                                           batch=cfg.infer.max_batch))  # [S, K, ...]
        p_bar = probs.mean(0)
        h = entropy(p_bar, 0)
        m = (h - entropy(probs, 1).mean(0)).clamp_min(0.0)
        pred = p_bar.argmax(0).numpy()
        dices.append(dice_per_class(pred, case.label, k))
        fg = case.label > 0
        h_np, m_np = h.double().numpy(), m.double().numpy()
        ent.append(float(h_np[fg].mean()) if fg.any() else np.nan)
        mi.append(float(m_np[fg].mean()) if fg.any() else np.nan)
        region = fg | (pred > 0)
        if near > 0:
            region = ndimage.binary_dilation(region, ball, iterations=near)
        scores.append(h_np[region])
        errors.append((pred != case.label)[region])
    score, error = np.concatenate(scores), np.concatenate(errors)
    return {
        "mc_dice": float(np.nanmean(np.nanmean(np.stack(dices), axis=0))),
        "fg_entropy": float(np.nanmean(ent)),
        "fg_mutual_info": float(np.nanmean(mi)),
        "error_auroc_near_fg": auroc(score, error) if score.size else float("nan"),
        "error_rate_near_fg": float(error.mean()) if error.size else float("nan"),
    }


__all__ = ["validation_dice", "validation_uncertainty"]
