"""Output paths that cannot be written, against the real CLI: checked before any compute (topo --edt-out,
evaluate -o, export onnx), one line, nothing left behind — also on a real full disk (a 2 MB tmpfs)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import corpus
import numpy as np
import pytest
from corpus import assert_cli_error, cli, label_map, tree, write_nifti

from tunepp_deploy.errors import DataError

tiny_model = corpus.tiny_model  # the fixture (no shared conftest)
IS_ROOT = os.geteuid() == 0


def _unwritable(tmp_path: Path) -> Path:
    """A folder no file can be created in: /proc for root (root passes permission bits), else mode 0555."""
    if IS_ROOT:
        return Path("/proc")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def _bad_out(tmp_path: Path, kind: str, name: str) -> Path:
    """An output path of ``kind``: an existing folder, under a regular file, in an unwritable folder."""
    if kind == "is_a_folder":
        (tmp_path / name).mkdir()
        return tmp_path / name
    if kind == "parent_is_a_file":
        (tmp_path / "blocker").write_text("a regular file")
        return tmp_path / "blocker" / "sub" / name
    if kind == "unwritable":
        return _unwritable(tmp_path) / name
    raise KeyError(kind)


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "in" / "mask.nii.gz", label_map())


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any compute fail loudly: a path check that runs after the work is a test failure."""
    import tunepp_deploy.export.dispatch as dispatch
    import tunepp_deploy.kernels.report as report

    import tunepp_deploy.evaluation.run as run
    import tunepp_deploy.model_file as model_file

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(report, "load_mask", boom)
    monkeypatch.setattr(run, "pair_cases", boom)
    monkeypatch.setattr(dispatch, "export_checkpoint", boom)
    monkeypatch.setattr(model_file, "detect_method", boom)


# --------------------------------------------------------------------------------------------------- topo


@pytest.mark.parametrize("kind", ["is_a_folder", "parent_is_a_file", "unwritable"])
def test_topo_edt_out_checked_before_compute(tmp_path: Path, mask: Path, no_compute: None, kind: str) -> None:
    out = _bad_out(tmp_path, kind, "edt.nii.gz")
    before = tree(tmp_path)
    assert_cli_error(cli("topo", mask, "--edt-out", out))
    assert tree(tmp_path) == before


def test_topo_edt_out_needs_a_nifti_name(tmp_path: Path, mask: Path, no_compute: None) -> None:
    assert_cli_error(cli("topo", mask, "--edt-out", tmp_path / "edt.png"), contains=".nii")


def test_topo_edt_out_into_a_new_folder_works(tmp_path: Path, mask: Path) -> None:
    out = tmp_path / "new" / "deeper" / "edt.nii.gz"
    res = cli("topo", mask, "--edt-out", out)
    assert res.exit_code == 0, res.output
    assert out.is_file() and tree(out.parent) == ["edt.nii.gz"]


def test_topo_huge_label_id_does_not_allocate(tmp_path: Path) -> None:
    """A label id of 2e9 used to size per-label tables by the id: 44.7 GiB."""
    from tunepp_deploy.kernels.report import topology_report

    arr = label_map(labels=(3, 2_000_000_000))
    path = write_nifti(tmp_path / "huge.nii.gz", arr)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rep = topology_report(path, backend="scipy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert [(t.label, t.voxels, t.betti) for t in rep.labels] == [(3, 108, (1, 0, 0)), (2_000_000_000, 108, (1, 0, 0))]
    res = cli("topo", "--json", path)
    assert res.exit_code == 0 and '"label": 2000000000' in res.stdout


def test_topo_label_id_beyond_int32_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "huge.nii.gz", label_map(labels=(1, 5_000_000_000)))
    assert_cli_error(cli("topo", path), contains="label id")


# --------------------------------------------------------------------------------------------------- evaluate


@pytest.fixture
def eval_inputs(tmp_path: Path) -> tuple[Path, Path]:
    truth = label_map()
    write_nifti(tmp_path / "gt" / "case.nii.gz", truth)
    write_nifti(tmp_path / "pred" / "case_seg.nii.gz", truth)
    return tmp_path / "pred", tmp_path / "gt"


def test_evaluate_onto_an_existing_file_before_metrics(tmp_path: Path, eval_inputs, no_compute: None) -> None:
    """Used to be a traceback after all metrics were computed."""
    pred, gt = eval_inputs
    target = tmp_path / "report.md"
    target.write_text("keep me")
    assert_cli_error(cli("evaluate", "--pred", pred, "--gt", gt, "-o", target), contains="not a folder")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["parent_is_a_file", "unwritable"])
def test_evaluate_output_folder_checked_up_front(tmp_path: Path, eval_inputs, no_compute: None, kind: str) -> None:
    pred, gt = eval_inputs
    out = _bad_out(tmp_path, kind, "report")
    before = tree(tmp_path)
    assert_cli_error(cli("evaluate", "--pred", pred, "--gt", gt, "-o", out))
    assert tree(tmp_path) == before


def test_evaluate_failure_while_writing_leaves_no_partial_report(tmp_path: Path, eval_inputs,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepp_deploy.evaluation.run as run

    def full_disk(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "write_markdown", full_disk)
    pred, gt = eval_inputs
    out = tmp_path / "report"
    assert_cli_error(cli("evaluate", "--pred", pred, "--gt", gt, "-o", out), contains="No space left")
    assert tree(out) == []  # neither metrics.json nor plots, and the folder it created is gone


def test_evaluate_report_is_complete_and_clean(tmp_path: Path, eval_inputs) -> None:
    pred, gt = eval_inputs
    out = tmp_path / "report"
    res = cli("evaluate", "--pred", pred, "--gt", gt, "-o", out)
    assert res.exit_code == 0, res.output
    names = tree(out)
    assert {"metrics.json", "metrics.csv", "report.md"} <= set(names)
    assert not [n for n in names if n.startswith(".")], names  # no staging folder or temporaries left


# --------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("kind", ["is_a_folder", "parent_is_a_file", "unwritable", "bad_suffix"])
def test_export_output_checked_before_the_export(tmp_path: Path, tiny_model, no_compute: None, kind: str) -> None:
    """The export used to check its output path only after 41 s of work."""
    out = tmp_path / "model.pt.out" if kind == "bad_suffix" else _bad_out(tmp_path, kind, "model.onnx")
    before = tree(tmp_path)
    t0 = time.perf_counter()
    assert_cli_error(cli("export", "onnx", "--checkpoint", tiny_model.ckpt, "--out", out))
    assert time.perf_counter() - t0 < 5
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (needs root and a kernel that lets this container mount one)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not IS_ROOT:
        pytest.skip("mounting a 2 MB tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_topo_edt_on_a_full_disk(tmp_path: Path, tiny_disk: Path) -> None:
    big = np.zeros((100, 100, 64), np.uint8)  # its float32 EDT (2.5 MB) does not fit
    big[30:70, 30:70, 20:40] = 1
    mask = write_nifti(tmp_path / "big.nii.gz", big)
    assert_cli_error(cli("topo", mask, "--edt-out", tiny_disk / "edt.nii"), contains="No space left")
    assert tree(tiny_disk) == []


def test_evaluate_on_a_full_disk(tmp_path: Path, eval_inputs, tiny_disk: Path) -> None:
    (tiny_disk / "filler").write_bytes(b"\0" * (2 * 2**20 - 24 * 2**10))  # leave ~24 KiB
    pred, gt = eval_inputs
    out = tiny_disk / "report"
    res = cli("evaluate", "--pred", pred, "--gt", gt, "-o", out)
    assert_cli_error(res, contains="No space left")
    assert tree(out) == []


def test_output_checks_never_create_anything(tmp_path: Path) -> None:
    from tunepp_deploy.data.nifti import check_output_file, check_output_folder

    check_output_folder(tmp_path / "a" / "b" / "c")
    check_output_file(tmp_path / "x" / "y.nii.gz", (".nii.gz",))
    assert tree(tmp_path) == []
    with pytest.raises(DataError, match="not writable"):
        check_output_folder(_unwritable(tmp_path) / "sub")
