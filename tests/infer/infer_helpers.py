"""Helpers for the MC-inference tests (imported by module name, as pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tunepp_deploy.data.phantom import generate_case


def write_scan(path: Path, shape=(40, 36, 30), spacing=(2.0, 2.0, 2.5), affine: np.ndarray | None = None,
               seed: int = 0, data: np.ndarray | None = None) -> Path:
    """A small CT-like phantom scan (or ``data``) saved with ``affine`` (default: diagonal spacing)."""
    if data is None:
        data = generate_case(np.random.default_rng(seed), shape=shape, spacing=spacing).image
    aff = np.diag([*spacing, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
