"""Dataset layouts: pairing rules of the seed's folders and one-line errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tunepp_deploy.config import load_config
from tunepp_deploy.data.dataset import CropDataset, load_case, split_cases
from tunepp_deploy.data.layout import case_name, find_cases, list_images
from tunepp_deploy.errors import DataError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _nii(path: Path, arr: np.ndarray, aff: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if aff is None else aff), str(path))


def test_images_tr_pairs(tmp_path: Path) -> None:
    _nii(tmp_path / "imagesTr/case_a_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    _nii(tmp_path / "labelsTr/case_a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _nii(tmp_path / "imagesTr/img0001.nii.gz", np.zeros((4, 4, 4), np.float32))
    _nii(tmp_path / "labelsTr/label0001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    cases = find_cases(tmp_path)
    assert [(c.name, c.label.name) for c in cases] == [("case_a", "case_a.nii.gz"), ("img0001", "label0001.nii.gz")]


def test_missing_label_named(tmp_path: Path) -> None:
    _nii(tmp_path / "imagesTr/x_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(DataError, match=r"x_0000\.nii\.gz: no label"):
        find_cases(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        find_cases(tmp_path / "nope")
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(DataError, match="labelsTr"):
        find_cases(tmp_path)


def test_acdc_layout(tmp_path: Path) -> None:
    p = tmp_path / "training/patient001"
    _nii(p / "patient001_frame01.nii.gz", np.zeros((4, 4, 4), np.float32))
    _nii(p / "patient001_frame01_gt.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _nii(p / "patient001_4d.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    cases = find_cases(tmp_path, layout="acdc")
    assert [c.name for c in cases] == ["patient001_frame01"]


def test_mismatched_pair_refused(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")
    _nii(tmp_path / "imagesTr/a_0000.nii.gz", np.zeros((8, 8, 8), np.float32))
    _nii(tmp_path / "labelsTr/a.nii.gz", np.zeros((8, 8, 9), np.uint8))
    with pytest.raises(DataError, match="differs from image shape"):
        load_case(find_cases(tmp_path)[0], cfg.data)
    _nii(tmp_path / "labelsTr/a.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match="affine"):
        load_case(find_cases(tmp_path)[0], cfg.data)
    _nii(tmp_path / "labelsTr/a.nii.gz", np.full((8, 8, 8), 9, np.uint8))
    with pytest.raises(DataError, match=r"outside 0\.\.4"):
        load_case(find_cases(tmp_path)[0], cfg.data)


def test_resampling_to_config_spacing(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")  # spacing 2.0 x 2.0 x 2.5
    lab = np.zeros((20, 20, 10), np.uint8)
    lab[5:15, 5:15, 2:8] = 2
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    _nii(tmp_path / "imagesTr/a_0000.nii.gz", np.full(lab.shape, 100.0, np.float32), aff)
    _nii(tmp_path / "labelsTr/a.nii.gz", lab, aff)
    case = load_case(find_cases(tmp_path)[0], cfg.data)
    assert case.image.shape == (10, 10, 20) and case.label.shape == (10, 10, 20)
    assert set(np.unique(case.label)) == {0, 2}  # nearest neighbour keeps label values
    np.testing.assert_allclose(case.image, (100 + 175) / 425, rtol=1e-5)  # HU window -> [0, 1]


def test_split_and_crops(tmp_path: Path) -> None:
    from tunepp_deploy.data.phantom import write_phantom_dataset

    cfg = load_config(CONFIGS / "phantom.yaml")
    cases = find_cases(write_phantom_dataset(tmp_path / "ph", cases=5))
    tr, va = split_cases(cases, 0.2, seed=0)
    assert len(va) == 1 and len(tr) == 4 and not {c.name for c in tr} & {c.name for c in va}
    assert split_cases(cases, 0.2, seed=0) == (tr, va)
    ds = CropDataset([load_case(c, cfg.data) for c in tr], cfg.data, length=8, seed=3)
    x, y, s = ds[0]
    assert s.numel() == 0  # no structure map was attached
    assert x.shape == (1, *cfg.data.crop_size) and y.shape == cfg.data.crop_size
    x2, y2, _ = ds[0]
    assert (x == x2).all() and (y == y2).all()  # seeded per (epoch, index)
    ds.set_epoch(1)
    assert not (ds[0][0] == x).all()
    fg = sum(float((ds[i][1] > 0).float().mean()) for i in range(8)) / 8
    assert fg > 0.02  # foreground oversampling keeps organs in the crops
    # a structure map is cropped, flipped and rotated exactly like the labels
    for c in ds.cases:
        c.structure = c.label.astype(np.float32) * 10
    for i in range(8):
        _, y, s = ds[i]
        assert torch.equal(s, y.float() * 10)


def test_list_images_and_names(tmp_path: Path) -> None:
    _nii(tmp_path / "b_0000.nii.gz", np.zeros((2, 2, 2), np.float32))
    _nii(tmp_path / "a.nii", np.zeros((2, 2, 2), np.float32))
    (tmp_path / "readme.txt").write_text("x")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.nii", "b_0000.nii.gz"]
    assert [case_name(f) for f in files] == ["a", "b"]
    with pytest.raises(DataError):
        list_images(tmp_path / "none")
