"""Reader for ISIC 2018 Task 1 folders (the saliency seed's data), with Pillow.

Layout: ``ISIC_XXXXXXX.jpg`` RGB images and ``ISIC_XXXXXXX_segmentation.png`` binary masks (0/255),
either in one folder or in an images folder plus a masks folder (the official
``ISIC2018_Task1-2_Training_Input`` / ``ISIC2018_Task1_Training_GroundTruth`` pair). Images are
resized bilinearly and masks nearest-neighbour to ``size``; images scaled to [0, 1], masks to {0, 1}.
Images without a mask are skipped and counted; a mask that is not a 2-valued image is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tunepp_deploy.errors import DataError

_ID = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)


@dataclass
class IsicSet:
    """``images [N, 3, H, W] float32``, ``masks [N, H, W] uint8``, ``ids`` and unmatched images."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    missing_masks: list[str]


def read_isic(images_dir: str | Path, masks_dir: str | Path | None = None, size: tuple[int, int] = (128, 128),
              limit: int | None = None) -> IsicSet:
    """Read pairs from ``images_dir`` (+ ``masks_dir``, default the same folder), sorted by id."""
    img_dir = Path(images_dir)
    msk_dir = Path(masks_dir) if masks_dir is not None else img_dir
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: ISIC image folder not found")
    found = sorted((m.group(1), p) for p in img_dir.iterdir() if (m := _ID.match(p.name)))
    imgs, msks, ids, missing = [], [], [], []
    for isic_id, path in found:
        mpath = msk_dir / f"{isic_id}_segmentation.png"
        if not mpath.is_file():
            missing.append(isic_id)
            continue
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), np.float32) / 255.0
        with Image.open(mpath) as mm:
            m = np.asarray(mm.convert("L").resize((size[1], size[0]), Image.NEAREST))
        if len(np.unique(m)) > 2:
            raise DataError(f"{mpath}: mask has {len(np.unique(m))} grey levels, expected a binary mask")
        imgs.append(rgb.transpose(2, 0, 1))
        msks.append((m > 127).astype(np.uint8))
        ids.append(isic_id)
        if limit is not None and len(ids) >= limit:
            break
    if not ids:
        raise DataError(f"{img_dir}: no ISIC_XXXXXXX.jpg with a matching _segmentation.png in {msk_dir}")
    return IsicSet(np.stack(imgs), np.stack(msks), ids, missing)


__all__ = ["IsicSet", "read_isic"]
