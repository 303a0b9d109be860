"""Distribution shifts applied to generated phantoms, for OOD-detection experiments.

Each shift takes a :class:`~tunepp_deploy.data.phantom.PhantomCase` and returns a new one; the
labels change only for ``shape``, and the designed Betti numbers are recomputed by the kernels so
the dataset's ``dataset.json`` stays truthful:

* ``noise``: extra Gaussian noise, ``sigma = 60 HU * strength`` (the training phantoms have 20 HU);
* ``intensity``: a scanner-like calibration change ``HU' = (1 + 0.15 strength) HU + 60 strength``
  inside the body (air is left at -1000 so the body outline does not move);
* ``shape``: an unseen anatomy — a cylindrical tunnel (radius ``3.5 mm * strength``, at least one
  voxel) drilled along the last array axis through the solid organ's centroid, so the organ the model
  knows as a ball becomes a ring (b1 = 1; the seed's "horseshoe kidney" failure mode). The removed
  voxels get body HU, blurred with the phantom's partial-volume blur, so the image matches the labels.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.data.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    PHANTOM_CLASSES,
    PhantomCase,
    generate_case,
    write_case,
)
from tunepp_deploy.kernels import betti_per_label

SHIFTS = ("noise", "intensity", "shape")
_HU_BODY = 30.0
_BLUR_MM = 1.2


def _betti(labels: np.ndarray) -> dict[str, tuple[int, int, int]]:
    table = betti_per_label(labels, num_labels=len(PHANTOM_CLASSES) - 1)
    return {name: tuple(int(v) for v in table[i]) for i, name in enumerate(PHANTOM_CLASSES[1:])}  # type: ignore[misc]


def add_noise(case: PhantomCase, rng: np.random.Generator, strength: float = 1.0) -> PhantomCase:
    """Extra Gaussian noise of ``60 HU * strength``."""
    noise = rng.normal(0.0, 60.0 * strength, size=case.image.shape).astype(np.float32)
    return replace(case, image=(case.image + noise).astype(np.float32))


def intensity_shift(case: PhantomCase, strength: float = 1.0) -> PhantomCase:
    """Scale and offset the HU of the body (not the air) by ``(1 + 0.15 s) HU + 60 s``."""
    body = case.image > -500.0
    img = case.image.copy()
    img[body] = img[body] * (1.0 + 0.15 * strength) + 60.0 * strength
    return replace(case, image=img.astype(np.float32))


def unseen_shape(case: PhantomCase, strength: float = 1.0) -> PhantomCase:
    """Drill a tunnel through the solid organ (label 1) along the last axis (module docstring)."""
    solid = case.labels == 1
    if not solid.any():
        return case
    sp = np.asarray(case.spacing)
    centre = np.argwhere(solid).mean(0)
    ii, jj = np.meshgrid(np.arange(case.labels.shape[0]), np.arange(case.labels.shape[1]), indexing="ij")
    r2 = ((ii - centre[0]) * sp[0]) ** 2 + ((jj - centre[1]) * sp[1]) ** 2
    radius = max(3.5 * strength, float(sp[:2].max()))
    tunnel = (r2 <= radius * radius)[:, :, None] & solid
    labels = case.labels.copy()
    labels[tunnel] = 0
    organ_hu = float(np.median(case.image[solid & ~tunnel])) if (solid & ~tunnel).any() else _HU_BODY
    delta = np.zeros(case.image.shape, np.float32)
    delta[tunnel] = _HU_BODY - organ_hu
    delta = ndimage.gaussian_filter(delta, sigma=_BLUR_MM / sp)
    return replace(case, image=(case.image + delta).astype(np.float32), labels=labels, betti=_betti(labels))


def apply_shift(case: PhantomCase, shift: str, rng: np.random.Generator, strength: float = 1.0) -> PhantomCase:
    """Apply the shift named ``shift`` (one of :data:`SHIFTS`)."""
    if shift == "noise":
        return add_noise(case, rng, strength)
    if shift == "intensity":
        return intensity_shift(case, strength)
    if shift == "shape":
        return unseen_shape(case, strength)
    raise ValueError(f"unknown shift '{shift}' (use {', '.join(SHIFTS)})")


def write_shifted_dataset(
    out: str | Path, cases: int, shift: str, seed: int = 100, strength: float = 1.0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE, spacing: tuple[float, float, float] = DEFAULT_SPACING,
    contact: bool = False,
) -> Path:
    """Like :func:`~tunepp_deploy.data.phantom.write_phantom_dataset`, with ``shift`` applied to every case.

    Use a ``seed`` different from the training data's so the shifted cases are also unseen cases.
    """
    out = Path(out)
    meta: dict[str, object] = {"name": f"tunepp-phantom-{shift}", "classes": list(PHANTOM_CLASSES),
                               "spacing": list(spacing), "modality": "ct", "shift": shift, "strength": strength,
                               "contact": bool(contact), "cases": {}}
    for i in range(cases):
        rng = np.random.default_rng([seed, i])
        case = apply_shift(generate_case(rng, shape=shape, spacing=spacing, contact=contact), shift, rng, strength)
        write_case(out, f"{shift}_{i:03d}", case, meta)
    write_atomic(out / "dataset.json", lambda t: t.write_text(json.dumps(meta, indent=2)))
    return out


__all__ = ["SHIFTS", "add_noise", "apply_shift", "intensity_shift", "unseen_shape", "write_shifted_dataset"]
