"""``tunepp infer --num-parts N --part-id I``: the split, its checks, and parts that together give the
single run's outputs (hashes of the NIfTI data arrays), resuming and sharing one folder."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from batch_tools import MAPS, assert_one_line_error, infer, make_model, stderr_of, write_scans

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.shard import check_part, shard

NAMES = ["c3", "a1", "b2", "d4", "e5"]


def _data_hashes(out: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each output's data array (dtype, shape and bytes), not of the gzip file (its header has
    a time stamp)."""
    hashes = {}
    for n in names:
        for m in MAPS:
            arr = np.asarray(nib.load(str(out / f"{n}_{m}.nii.gz")).dataobj)
            h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
            hashes[f"{n}_{m}"] = h.hexdigest()
    return hashes


def test_split_is_round_robin_over_sorted_case_names(tmp_path: Path) -> None:
    images = [tmp_path / f for f in ("b.nii.gz", "a1.nii.gz", "a_0000.nii.gz", "c.nii")]
    # case names a, a1, b, c (a_0000 sorts after a1 as a file name, before it as a case name)
    assert [p.name for p in shard(images, 2, 0)] == ["a_0000.nii.gz", "b.nii.gz"]
    assert [p.name for p in shard(images, 2, 1)] == ["a1.nii.gz", "c.nii"]
    assert [p.name for p in shard(images, 3, 2)] == ["b.nii.gz"]
    parts = [shard(images, 5, i) for i in range(5)]
    assert sorted(p.name for part in parts for p in part) == sorted(p.name for p in images)
    assert parts[4] == []
    assert shard(list(reversed(images)), 2, 1) == shard(images, 2, 1)  # listing order does not matter


@pytest.mark.parametrize(("n", "i", "needle"), [(0, 0, "--num-parts 0"), (2, 2, "--part-id 2"),
                                                 (2, -1, "--part-id -1"), (1, 1, "between 0 and 0")])
def test_bad_parts_are_one_line_errors(n: int, i: int, needle: str) -> None:
    with pytest.raises(TuneppError, match=needle):
        check_part(n, i)


def test_cli_refuses_bad_part_in_one_line(tmp_path: Path) -> None:
    write_scans(tmp_path / "in", ["a"])
    res = infer(tmp_path / "in", tmp_path / "out", tmp_path / "missing.pt", "--num-parts", "2", "--part-id", "5")
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "--part-id 5", "between 0 and 1")
    assert not (tmp_path / "out").exists()
    res = infer(tmp_path / "in" / "a.nii.gz", tmp_path / "out", make_model(tmp_path / "m"), "--num-parts", "2")
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "splits a folder")


@pytest.fixture
def no_onednn() -> object:
    """torch's oneDNN (mkldnn) convolutions round differently depending on what the process ran before (two
    single runs in one process differ by up to 2.4e-7 on the maps from the second case on; the first case of
    a process, and runs with oneDNN off, are bitwise equal). A part's first case is a single run's later case,
    so byte identity is checked with oneDNN off; the split itself changes nothing."""
    import torch

    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = was


@pytest.mark.usefixtures("no_onednn")
def test_parts_together_equal_the_single_run(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    write_scans(tmp_path / "in", NAMES)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    res = infer(tmp_path / "in", single, model)
    assert res.exit_code == 0, res.output
    # part 1 first, then part 0: the order the parts run in does not matter
    res1 = infer(tmp_path / "in", sharded, model, "--num-parts", "2", "--part-id", "1")
    assert res1.exit_code == 0, res1.output
    assert sorted(p.name.removesuffix("_report.json") for p in sharded.glob("*_report.json")) == ["b2", "d4"]
    res0 = infer(tmp_path / "in", sharded, model, "--num-parts", "2", "--part-id", "0")
    assert res0.exit_code == 0, res0.output
    assert "3 done, 0 skipped" in stderr_of(res0)
    assert _data_hashes(sharded, NAMES) == _data_hashes(single, NAMES)
    # resume: a part run again skips its cases; a deleted map is redone by the part that owns it only
    (sharded / "c3_total.nii.gz").unlink()
    again1 = infer(tmp_path / "in", sharded, model, "--num-parts", "2", "--part-id", "1")
    assert "0 done, 2 skipped" in stderr_of(again1), stderr_of(again1)
    again0 = infer(tmp_path / "in", sharded, model, "--num-parts", "2", "--part-id", "0")
    assert "1 done, 2 skipped" in stderr_of(again0), stderr_of(again0)
    assert _data_hashes(sharded, NAMES) == _data_hashes(single, NAMES)
    # the page of the last part lists every case of the folder
    page = (sharded / "index.html").read_text()
    assert page.count('<tr class="case"') == len(NAMES)


def test_more_parts_than_cases_is_an_empty_part(tmp_path: Path) -> None:
    write_scans(tmp_path / "in", ["a"])
    res = infer(tmp_path / "in", tmp_path / "out", make_model(tmp_path / "m"), "--num-parts", "3", "--part-id", "2")
    assert res.exit_code == 0, res.output
    assert "part 2 of 3: 0 of 1 cases" in stderr_of(res)
    assert not (tmp_path / "out").exists()
