"""A folder batch that resumes only what is verifiably complete, checks its case names before any work,
isolates every kind of case failure and leaves no partial, temporary or empty file behind (issue 12,
items 3-4 and 7). Named ``test_batch_resume`` because ``tests/infer/test_batch.py`` holds the unit tests
of the loop (test files share one module namespace here)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest
from batch_tools import (
    MAPS,
    arrays,
    assert_one_line_error,
    assert_same_arrays,
    infer,
    leftovers,
    make_model,
    partial_cases,
    stderr_of,
    write_scan,
    write_scans,
)

from tunepp_deploy.data.layout import OUTPUT_SUFFIXES
from tunepp_deploy.errors import DataError
from tunepp_deploy.infer.batch import check_output_dir, report_path, run_batch, write_report
from tunepp_deploy.infer.manifest import complete_report


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"))


def _report(out: Path, name: str) -> dict:
    return json.loads(report_path(out, name).read_text())


def test_resume_redoes_every_unverifiable_case_and_refuses_other_configs(tmp_path: Path, model: Path) -> None:
    names = ["a", "b", "c", "d", "e"]
    write_scans(tmp_path / "in", names)
    out = tmp_path / "out"
    res = infer(tmp_path / "in", out, model)
    assert res.exit_code == 0, res.output
    first = {n: arrays(out, n) for n in names}
    rep = _report(out, "e")
    assert rep["manifest"]["samples"] == 2 and rep["manifest"]["seed"] == 0 and rep["manifest"]["method"] == "tunepp"
    assert len(rep["manifest"]["model_sha256"]) == 64 and rep["manifest"]["backend"] == "torch"
    assert set(rep["output_files"]) == set(MAPS) and rep["outputs"]["seg"] == "e_seg.nii.gz"
    assert rep["output_files"]["seg"]["bytes"] == (out / "e_seg.nii.gz").stat().st_size

    (out / "a_total.nii.gz").unlink()  # deleted map
    blob = bytearray((out / "b_epistemic.nii.gz").read_bytes())  # corrupt map bytes, same size
    blob[len(blob) // 2] ^= 0xFF
    (out / "b_epistemic.nii.gz").write_bytes(bytes(blob))
    report_path(out, "c").write_text("")  # empty report
    text = report_path(out, "d").read_text()
    report_path(out, "d").write_text(text[: len(text) // 2])  # truncated report
    e_mtime = report_path(out, "e").stat().st_mtime_ns
    res = infer(tmp_path / "in", out, model)
    assert res.exit_code == 0, res.output
    assert [ln.split()[1].rstrip(":") for ln in stderr_of(res).splitlines() if ln.startswith("done")] == names[:4]
    assert "skipped e: complete" in stderr_of(res) and report_path(out, "e").stat().st_mtime_ns == e_mtime
    for n in names:
        assert_same_arrays(first[n], arrays(out, n), n)
    assert not leftovers(out)

    report_path(out, "e").unlink()
    report_path(out, "e").mkdir()  # the report path is a folder: that case fails, in one line
    res = infer(tmp_path / "in", out, model)
    assert res.exit_code == 1, res.output
    failed = [ln for ln in stderr_of(res).splitlines() if ln.startswith("failed e")]
    assert len(failed) == 1 and "is a folder" in failed[0] and "Traceback" not in res.output
    assert "failed: e" in stderr_of(res) and sum(ln.startswith("skipped ") for ln in stderr_of(res).splitlines()) == 4
    report_path(out, "e").rmdir()

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for extra in (["--seed", "1"], ["--samples", "3"]):  # another configuration: the whole run is refused
        res = infer(tmp_path / "in", out, model, *extra)
        assert res.exit_code == 2, res.output
        assert_one_line_error(stderr_of(res), "--overwrite", f"{extra[0][2:]} ")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    res = infer(tmp_path / "in", out, model, "--seed", "1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert all(_report(out, n)["manifest"]["seed"] == 1 for n in names) and not leftovers(out)


def test_colliding_hidden_and_empty_names_are_one_line_errors_before_work(tmp_path: Path, model: Path) -> None:
    inp = tmp_path / "in"
    for f in ("case.nii", "case.nii.gz", "case_0000.nii.gz", "other.nii.gz"):
        write_scan(inp / f)
    out = tmp_path / "out"
    res = infer(inp, out, model)
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "same case 'case'", "case.nii", "case_0000.nii.gz")
    assert not out.exists()

    for bad in ("..nii.gz", "_0000.nii.gz", ".nii.gz"):
        scan = write_scan(tmp_path / "odd" / bad)
        res = infer(scan, out, model)
        assert res.exit_code == 2
        assert_one_line_error(stderr_of(res), "empty or hidden")
        assert not out.exists()
        scan.unlink()
    write_scan(tmp_path / "odd" / "_0000.nii.gz")
    res = infer(tmp_path / "odd", out, model)
    assert res.exit_code == 2 and not out.exists()
    assert_one_line_error(stderr_of(res), "empty or hidden")


def test_output_folder_equal_to_input_folder_is_rerun_cleanly(tmp_path: Path, model: Path) -> None:
    d = tmp_path / "both"
    write_scans(d, ["p", "q_0000"])
    res = infer(d, d, model)
    assert res.exit_code == 0, res.output
    assert (d / "q_seg.nii.gz").exists() and (d / "q_report.json").exists()
    (d / "p_total.nii.gz").unlink()  # a rerun redoes p, skips q, and never takes an output for a scan
    res = infer(d, d, model)
    assert res.exit_code == 0, res.output
    assert "done p" in stderr_of(res) and "skipped q" in stderr_of(res)
    assert "1 done, 1 skipped, 0 failed" in stderr_of(res)
    assert not list(d.glob("*_seg_*")) and not leftovers(d)


def test_dangling_symlink_is_a_named_failed_case(tmp_path: Path, model: Path) -> None:
    inp = tmp_path / "in"
    write_scans(inp, ["good"])
    (inp / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    out = tmp_path / "out"
    res = infer(inp, out, model)
    assert res.exit_code == 1, res.output
    line = next(ln for ln in stderr_of(res).splitlines() if ln.startswith("failed gone"))
    assert "dangling symbolic link" in line and "Traceback" not in res.output
    assert (out / "good_report.json").exists() and not list(out.glob("gone*")) and not leftovers(out)


def test_stale_temps_are_removed_only_for_cases_this_run_locks(tmp_path: Path, model: Path) -> None:
    inp = tmp_path / "in"
    write_scans(inp, ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".a_seg.nii.gz.k1ll3d00.tmp.nii.gz", out / ".a_report.json.x9y8z7w6.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (out / ".a.lock").write_text("999999 deadhost 0\n")  # left by a run killed with -9: not locked
    other = out / ".b_total.nii.gz.abcdefgh.tmp.nii.gz"  # a live run's temporary of case b
    other.write_bytes(b"live")
    fd = os.open(out / ".b.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # case b is being computed by another live run
    try:
        res = infer(inp, out, model)
    finally:
        os.close(fd)
    assert res.exit_code == 0, res.output
    assert "skipped b: in progress elsewhere" in stderr_of(res)
    assert not any(p.exists() for p in stale) and other.exists()
    assert (out / "a_report.json").exists() and not (out / "a" / ".lock").exists()
    assert leftovers(out) == [".b.lock", other.name]


def test_model_error_leaves_no_empty_output_folder(tmp_path: Path, model: Path) -> None:
    write_scans(tmp_path / "in", ["a"])
    bad = tmp_path / "broken.pt"
    bad.write_bytes(model.read_bytes()[:2000])
    out = tmp_path / "new" / "out"
    res = infer(tmp_path / "in", out, bad)
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res))
    assert not out.exists()


def test_write_probe_has_a_unique_name(tmp_path: Path) -> None:
    (tmp_path / ".tunepp_write_test").mkdir()  # the old fixed probe name, taken by something else
    check_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tunepp_write_test"]


def test_every_exception_of_a_case_is_isolated(tmp_path: Path) -> None:
    """nibabel, OS, memory and foreign (ONNX Runtime-like) errors fail one case; the batch goes on."""
    from nibabel.spatialimages import HeaderDataError

    class ForeignError(Exception):
        pass

    inp = tmp_path / "in"
    errors = {"b": HeaderDataError("affine is singular"), "c": OSError(28, "No space left on device"),
              "d": MemoryError(), "e": ForeignError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT"),
              "f": DataError("f: NaN voxels")}
    for n in ["a", *errors, "g"]:
        (inp).mkdir(exist_ok=True)
        (inp / f"{n}.nii.gz").write_bytes(b"")
    out = tmp_path / "out"

    def one(image: Path) -> Path:
        name = image.name.removesuffix(".nii.gz")
        seg = out / f"{name}_seg.nii.gz"
        seg.write_bytes(b"x")
        if name in errors:
            seg.unlink()
            raise errors[name]
        return write_report(report_path(out, name), complete_report({}, {"seg": seg}, {}))

    res = run_batch(inp, out, one)
    assert res.done == ["a", "g"] and [n for n, _ in res.failed] == list(errors)
    msgs = dict(res.failed)
    assert msgs["b"] == "HeaderDataError: affine is singular" and msgs["f"] == "f: NaN voxels"
    assert msgs["d"] == "MemoryError: " and "INVALID_ARGUMENT" in msgs["e"]
    assert all("\n" not in m for m in msgs.values())
    with pytest.raises(KeyboardInterrupt):
        run_batch(inp, out, lambda _im: (_ for _ in ()).throw(KeyboardInterrupt()), overwrite=True)
    assert not leftovers(out)


def test_output_suffixes_cover_every_method() -> None:
    from tunepp_deploy.predictors import saliency, segwithu, variational

    maps = {"aleatoric", "epistemic", "total", *saliency.MAP_NAMES, *segwithu.MAP_NAMES, *variational.MAP_NAMES}
    assert maps | {"seg", "probs"} <= set(OUTPUT_SUFFIXES)


def _tmpfs(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the full-disk case mounts a 2 MB tmpfs, which needs root")
    path.mkdir()
    rc = os.system(f"mount -t tmpfs -o size=2m tmpfs {path} 2>/dev/null")
    if rc != 0:
        pytest.skip("mount -t tmpfs -o size=2m failed here (no mount privilege in this container)")


def test_full_disk_fails_cases_in_one_line_and_leaves_nothing(tmp_path: Path, model: Path) -> None:
    mnt = tmp_path / "small"
    _tmpfs(mnt)
    try:
        write_scans(tmp_path / "in", ["a", "b"])
        out = mnt / "out"
        out.mkdir()
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # leave about 40 KB: less than one case's outputs
            f.write(b"\0" * (shutil.disk_usage(mnt).free - 40_000))
        res = infer(tmp_path / "in", out, model)
        assert res.exit_code == 1, res.output
        failed = [ln for ln in stderr_of(res).splitlines() if ln.startswith("failed ")]
        assert len(failed) == 2 and all("No space left" in ln for ln in failed), res.output
        assert "Traceback" not in res.output and not leftovers(out) and not partial_cases(out, ["a", "b"])
        assert not list(out.iterdir())
        filler.unlink()
        res = infer(tmp_path / "in", out, model)
        assert res.exit_code == 0, res.output
        assert all(nib.load(str(out / f"{n}_seg.nii.gz")).shape == (24, 24, 16) for n in ("a", "b"))
    finally:
        os.system(f"umount {mnt}")
