"""Training data: preprocessed cases in memory and random foreground-oversampled crops.

A case is loaded once (resampled to the config's spacing, normalised) and kept in memory; each
training sample is a random crop of ``crop_size``, with probability ``foreground_oversample``
centred on a random foreground voxel (organs are a few percent of a CT volume: uniform crops
would mostly teach background), then flipped / rotated / intensity-jittered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tunepp_deploy.config.schema import DataConfig
from tunepp_deploy.data.layout import CasePaths
from tunepp_deploy.data.nifti import load_volume
from tunepp_deploy.data.preprocess import preprocess_image, resample, resampled_shape
from tunepp_deploy.errors import DataError


@dataclass
class LoadedCase:
    """A preprocessed case on the model's grid."""

    name: str
    image: np.ndarray  # float32 (D, H, W), normalised
    label: np.ndarray  # uint8 (D, H, W)
    structure: np.ndarray | None = None  # float32 (D, H, W): label-only topology-loss weights, cropped like the label


def load_case(case: CasePaths, cfg: DataConfig) -> LoadedCase:
    """Load, check and preprocess one (image, label) pair.

    Refuses pairs whose grids differ (shape or affine beyond 1e-3 mm): training on misaligned labels
    is worse than failing, and such pairs are a common export mistake.
    """
    img = load_volume(case.image)
    lab = load_volume(case.label, dtype=np.float32)
    if img.shape != lab.shape:
        raise DataError(f"{case.label}: label shape {lab.shape} differs from image shape {img.shape}")
    if not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise DataError(f"{case.label}: label affine differs from its image's affine")
    labels = np.rint(lab.array)
    if labels.min() < 0 or labels.max() >= len(cfg.classes):
        raise DataError(
            f"{case.label}: label values {int(labels.min())}..{int(labels.max())} outside 0..{len(cfg.classes) - 1}"
        )
    image = preprocess_image(img.array, img.spacing, cfg.spacing, cfg.intensity)
    label = resample(labels.astype(np.uint8), resampled_shape(labels.shape, img.spacing, cfg.spacing), order=0)
    return LoadedCase(case.name, image, label)


def split_cases(cases: list[CasePaths], val_fraction: float, seed: int) -> tuple[list[CasePaths], list[CasePaths]]:
    """Deterministic train/val split (at least one case in each when there are two or more)."""
    if len(cases) < 2:
        raise DataError(f"need at least 2 cases to split into train/val, found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, round(len(cases) * val_fraction)))
    val_idx = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val


def save_split(path: Path, train: list[CasePaths], val: list[CasePaths]) -> None:
    """Record the split in the run folder so evaluation and resumed runs use the same cases."""
    path.write_text(json.dumps({"train": [c.name for c in train], "val": [c.name for c in val]}, indent=2))


def _pad_to(a: np.ndarray, size: tuple[int, ...], value: float) -> np.ndarray:
    pads = [(0, max(0, s - n)) for n, s in zip(a.shape, size, strict=True)]
    if any(p[1] for p in pads):
        a = np.pad(a, pads, constant_values=value)
    return a


class CropDataset(Dataset):
    """Random training crops; ``len`` is the number of crops per epoch.

    Randomness comes from a per-item generator seeded by (seed, epoch, index) so a resumed run and
    a run with worker processes draw the same crops as an uninterrupted single-process run.
    """

    def __init__(self, cases: list[LoadedCase], cfg: DataConfig, length: int, seed: int = 0) -> None:
        if not cases:
            raise DataError("no training cases")
        self.cases, self.cfg, self.length, self.seed = cases, cfg, length, seed
        self.epoch = 0
        self._fg = [np.argwhere(c.label > 0) for c in cases]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image [1, *crop], labels [*crop] int64, structure weights [*crop] or an empty tensor)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.integers(len(self.cases)))
        case, fg = self.cases[k], self._fg[k]
        crop = self.cfg.crop_size
        image = _pad_to(case.image, crop, float(case.image.min()))
        label = _pad_to(case.label, crop, 0)
        struct = None if case.structure is None else _pad_to(case.structure, crop, 1.0)
        if fg.size and rng.random() < self.cfg.foreground_oversample:
            centre = fg[int(rng.integers(len(fg)))]
            start = [int(np.clip(c - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, n - s))
                     for c, s, n in zip(centre, crop, image.shape, strict=True)]
        else:
            start = [int(rng.integers(0, n - s + 1)) for s, n in zip(crop, image.shape, strict=True)]
        sl = tuple(slice(a, a + s) for a, s in zip(start, crop, strict=True))
        x, y = image[sl], label[sl]
        s = None if struct is None else struct[sl]
        aug = self.cfg.augment
        if aug.flip:
            for ax in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
                    s = None if s is None else np.flip(s, ax)
        if aug.rot90 and crop[0] == crop[1]:
            k90 = int(rng.integers(4))
            x, y = np.rot90(x, k90, (0, 1)), np.rot90(y, k90, (0, 1))
            s = None if s is None else np.rot90(s, k90, (0, 1))
        if aug.intensity_scale or aug.intensity_shift:
            x = x * (1.0 + rng.uniform(-aug.intensity_scale, aug.intensity_scale)) + rng.uniform(
                -aug.intensity_shift, aug.intensity_shift
            )
        return (
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None],
            torch.from_numpy(np.ascontiguousarray(y).astype(np.int64)),
            torch.empty(0) if s is None else torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)),
        )
