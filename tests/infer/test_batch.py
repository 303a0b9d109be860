"""The shared case loop (``infer/batch.py``) with a fake method: resume, overwrite, isolation, cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.infer.batch import case_outputs, report_path, run_batch, write_report
from tunepp_deploy.infer.manifest import complete_report


def _scans(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        p = folder / f"{n}_0000.nii.gz"
        p.write_bytes(b"")  # the loop never opens scans itself
        out.append(p)
    return out


class FakeMethod:
    """Writes NAME_map.txt then the report; fails (after writing the map) for names in ``fail``."""

    def __init__(self, out: Path, fail: dict[str, BaseException] | None = None) -> None:
        self.out, self.fail, self.calls = out, fail or {}, []

    def __call__(self, image: Path) -> Path:
        name = image.name.removesuffix("_0000.nii.gz")
        self.calls.append(name)
        with case_outputs() as written:
            m = self.out / f"{name}_map.txt"
            m.write_text("map")
            written.append(m)
            if name in self.fail:
                raise self.fail[name]
            return write_report(report_path(self.out, name), complete_report({"case": name}, {"map": m}, {}))


def test_resume_skips_complete_cases_and_redoes_missing_reports(tmp_path: Path) -> None:
    _scans(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    fake = FakeMethod(out)
    seen: list[tuple[str, str]] = []
    res = run_batch(tmp_path / "in", out, fake, on_case=lambda n, s, _m: seen.append((n, s)))
    assert res.done == ["a", "b", "c"] and not res.skipped and not res.failed
    assert seen == [("a", "done"), ("b", "done"), ("c", "done")]

    report_path(out, "b").unlink()
    fake.calls.clear()
    res = run_batch(tmp_path / "in", out, fake)
    assert fake.calls == ["b"] and res.done == ["b"] and res.skipped == ["a", "c"]

    fake.calls.clear()
    res = run_batch(tmp_path / "in", out, fake, overwrite=True)
    assert fake.calls == ["a", "b", "c"] and not res.skipped


def test_failures_are_isolated_and_leave_nothing(tmp_path: Path) -> None:
    _scans(tmp_path / "in", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    fake = FakeMethod(out, {"b": DataError("b: NaN voxels"), "c": RuntimeError("CUDA out of memory\nmore")})
    res = run_batch(tmp_path / "in", out, fake)
    assert res.done == ["a", "d"]
    assert res.failed == [("b", "b: NaN voxels"), ("c", "RuntimeError: CUDA out of memory")]
    assert sorted(p.name for p in out.iterdir()) == ["a_map.txt", "a_report.json", "d_map.txt", "d_report.json"]


def test_single_file_reraises_as_one_line(tmp_path: Path) -> None:
    (scan,) = _scans(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="NaN"):
        run_batch(scan, out, FakeMethod(out, {"a": DataError("a: NaN voxels")}))
    with pytest.raises(TuneppError, match=r"inference failed \(ValueError: bad shape\)$"):
        run_batch(scan, out, FakeMethod(out, {"a": ValueError("bad shape\ntraceback")}))
    assert not any(out.iterdir())
    with pytest.raises(KeyboardInterrupt):  # not a case failure: ends the batch, still cleans up
        run_batch(scan, out, FakeMethod(out, {"a": KeyboardInterrupt()}))
    assert not any(out.iterdir())
