"""2D data for the saliency experiment: phantom slices or an ISIC-style folder, and a seeded split.

Both sources become one :class:`Data2d` — images ``[N, C, H, W]``, labels ``[N, H, W]`` and a
*group* per image. The split is over groups, not images: slices of one phantom share a group, so
neighbouring (nearly identical) slices never sit on both sides of the split; every ISIC image is
its own group. The split is drawn from the experiment seed, so each seed sees another train/test
partition of the same data (the spread over seeds then includes the split's variance).

The ISIC folder is checked before it is read, so a wrong folder fails in one line instead of after
minutes of training: every ``ISIC_XXXXXXX.jpg`` needs ``ISIC_XXXXXXX_segmentation.png`` and vice
versa (an unpaired file usually means the wrong folder or a partial download — :func:`read_isic`
alone would skip it silently), and image and mask of a pair must have the same size (a mask
resized on its own would otherwise be silently misaligned by :func:`read_isic`'s resizing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tunepp_deploy.data.phantom import DEFAULT_SHAPE, PHANTOM_CLASSES
from tunepp_deploy.errors import DataError
from tunepp_deploy.methods.saliency.isic import read_isic
from tunepp_deploy.methods.saliency.phantom2d import phantom_slices

_IMAGE = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)
_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


@dataclass
class Data2d:
    """Images ``[N, C, H, W] float32``, labels ``[N, H, W] uint8``, ``groups [N]`` (split unit), metadata."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    num_classes: int
    source: str
    info: dict[str, object]


def phantom_data(cases: int, shape: tuple[int, int, int] = DEFAULT_SHAPE, data_seed: int = 0) -> Data2d:
    """Axial slices of ``cases`` phantoms (fixed ``data_seed``: the seeds vary split/init/masks, not the data)."""
    if cases < 2:
        raise DataError(f"--cases {cases}: the phantom comparison needs at least 2 cases (train and test)")
    imgs, labs, idx = phantom_slices(cases, seed=data_seed, shape=shape)
    info: dict[str, object] = {"cases": cases, "shape": list(shape), "data_seed": data_seed, "slices": len(imgs),
                               "classes": list(PHANTOM_CLASSES)}
    return Data2d(imgs, labs, idx, len(PHANTOM_CLASSES), "phantom2d", info)


def _ids(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    return {m.group(1): p for p in folder.iterdir() if (m := pattern.match(p.name))}


def check_isic_pairs(images_dir: Path, masks_dir: Path, limit: int | None = None) -> list[str]:
    """The sorted ids of the pairs to read; :class:`DataError` for a missing folder or a mismatch (module doc)."""
    for what, d in (("image", images_dir), ("mask", masks_dir)):
        if not d.is_dir():
            raise DataError(f"{d}: ISIC {what} folder not found")
    images, masks = _ids(images_dir, _IMAGE), _ids(masks_dir, _MASK)
    if not images:
        raise DataError(f"{images_dir}: no ISIC_XXXXXXX.jpg images")
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = [f"{len(no_mask)} image(s) without a mask in {masks_dir} (first {no_mask[0]})"] if no_mask else []
        parts += [f"{len(no_image)} mask(s) without an image in {images_dir} (first {no_image[0]})"] if no_image else []
        raise DataError("mismatched ISIC images and masks: " + "; ".join(parts))
    ids = sorted(images)[:limit]
    for i in ids:
        with Image.open(images[i]) as im, Image.open(masks[i]) as mm:  # header only: sizes, no pixels decoded
            if im.size != mm.size:
                raise DataError(f"{i}: image is {im.size[0]}x{im.size[1]} but its mask is {mm.size[0]}x{mm.size[1]}")
    return ids


def isic_data(images_dir: str | Path, masks_dir: str | Path | None = None, size: int = 128,
              limit: int | None = None, multiple: int = 4) -> Data2d:
    """The first ``limit`` (sorted) ISIC pairs at ``size x size``, one group per image, 2 classes."""
    if size < multiple or size % multiple:
        raise DataError(f"--size {size}: must be a positive multiple of {multiple} (the U-Net's total stride)")
    if limit is not None and limit < 2:
        raise DataError(f"--cases {limit}: the ISIC comparison needs at least 2 images (train and test)")
    img_dir = Path(images_dir)
    msk_dir = Path(masks_dir) if masks_dir is not None else img_dir
    ids = check_isic_pairs(img_dir, msk_dir, limit)
    if len(ids) < 2:
        raise DataError(f"{img_dir}: only {len(ids)} ISIC pair, the comparison needs at least 2")
    ds = read_isic(img_dir, msk_dir, (size, size), limit=len(ids))
    info: dict[str, object] = {"images_dir": str(img_dir), "masks_dir": str(msk_dir), "size": size,
                               "images": len(ds.ids), "classes": ["background", "lesion"]}
    return Data2d(ds.images, ds.masks, np.arange(len(ds.ids)), 2, "isic", info)


def split_groups(groups: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean ``test`` mask over images: ``round(test_fraction * groups)`` (>= 1) whole groups, seeded."""
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise DataError(f"{len(uniq)} case(s): a train/test split needs at least 2")
    n_test = min(max(1, round(test_fraction * len(uniq))), len(uniq) - 1)
    perm = np.random.default_rng([seed, 0x5A11]).permutation(uniq)
    return np.isin(groups, perm[:n_test])


__all__ = ["Data2d", "check_isic_pairs", "isic_data", "phantom_data", "split_groups"]
