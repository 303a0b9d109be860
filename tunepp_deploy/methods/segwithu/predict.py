"""Whole-scan SegWithU inference and ``tunepp infer-segwithu``'s NIfTI outputs.

Per scan: preprocess like training (model config), sliding windows through backbone + head (one
deterministic pass per window; Gaussian blend of the softmax, tempered softmax and the maps),
resample everything to the input grid (trilinear; labels = argmax of the resampled raw softmax —
identical to the tempered argmax by construction) and write::

    NAME_seg.nii.gz          uint8 labels
    NAME_calibration.nii.gz  float32 U_cal (the temperature is sqrt(1 + U_cal))
    NAME_ranking.nii.gz      float32 U_rnk (error-ranking score: higher = more likely wrong)
    NAME_temperature.nii.gz  float32 T >= 1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.layout import case_name, list_images
from tunepp_deploy.data.nifti import load_volume, save_volume
from tunepp_deploy.data.preprocess import preprocess_image, resample_tensor
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.methods.segwithu.model import SegWithU

WindowFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]  # -> OUTPUTS of export.py


@dataclass
class SegWithUMaps:
    """Blended maps on the model grid: probs/tempered ``[K, ...]``, the rest ``[...]``."""

    probs: torch.Tensor
    tempered: torch.Tensor
    temperature: torch.Tensor
    u_cal: torch.Tensor
    u_rnk: torch.Tensor
    u_epi: torch.Tensor


def torch_window_fn(model: SegWithU) -> WindowFn:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            logits, o = model(x)
        return logits, o.tempered_logits, o.temperature, o.u_cal, o.u_rnk, o.u_epi

    return run


def predict_volume(image: np.ndarray, window_fn: WindowFn, window: tuple[int, ...], overlap: float = 0.5,
                   batch: int = 2) -> SegWithUMaps:
    """Sliding-window SegWithU over a preprocessed ``image [D, H, W]``."""
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        logits, tempered, t, u_cal, u_rnk, u_epi = window_fn(x)
        return [torch.softmax(logits, 1), torch.softmax(tempered, 1), t, u_cal, u_rnk, u_epi]

    p, pt, t, uc, ur, ue = sliding_window(vol, predict, window, overlap=overlap, batch=batch)
    return SegWithUMaps(p, pt, t[0], uc[0], ur[0], ue[0])


def infer_segwithu_paths(input: Path, out: Path, model: SegWithU, cfg: TuneppConfig) -> list[Path]:
    """Run every scan under ``input`` (file or folder) and write the module docstring's files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(input):
        vol = load_volume(path)
        pre = preprocess_image(vol.array, vol.spacing, cfg.data.spacing, cfg.data.intensity)
        maps = predict_volume(pre, torch_window_fn(model), tuple(cfg.window), cfg.infer.overlap, cfg.infer.max_batch)
        stacked = torch.cat([maps.probs, maps.temperature[None], maps.u_cal[None], maps.u_rnk[None]])
        back = resample_tensor(stacked[None].float(), vol.shape)[0]
        k = maps.probs.shape[0]
        name = case_name(path)
        written.append(save_volume(back[:k].argmax(0).numpy().astype(np.uint8), vol, out / f"{name}_seg.nii.gz",
                                   dtype=np.uint8))
        for i, what in enumerate(("temperature", "calibration", "ranking")):
            written.append(save_volume(back[k + i].numpy().astype(np.float32), vol, out / f"{name}_{what}.nii.gz",
                                       dtype=np.float32))
    return written


__all__ = ["SegWithUMaps", "infer_segwithu_paths", "predict_volume", "torch_window_fn"]
