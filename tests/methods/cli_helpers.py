"""Helpers for the methods' CLI tests (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.data.phantom import generate_case


def cli(*args: object):
    """``tunepp ARGS`` in-process; returns typer's Result."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, text: str) -> None:
    """Exit code 2 and exactly one line, ``error: ...`` containing ``text``."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], res.output


def oblique_scan(path: Path, seed: int = 5) -> Path:
    """A phantom on another grid than the model's (anisotropic, rotated, shifted): outputs must come back onto it."""
    spacing = (3.1, 4.7, 6.0)
    theta = np.deg2rad(25)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) \
        @ np.diag(spacing)
    aff[:3, 3] = [-30.0, 7.5, 41.0]
    img = nib.Nifti1Image(generate_case(np.random.default_rng(seed), shape=(29, 21, 13), spacing=spacing).image, aff)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
