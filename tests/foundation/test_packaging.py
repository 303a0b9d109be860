"""Packaging: every package folder is listed in pyproject, so a built wheel is complete."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"kernels": "tunepp_deploy.kernels", "export": "tunepp_deploy.export",
          "calibrate": "tunepp_deploy.calibrate", "bench": "tunepp_deploy.bench", "configs": "tunepp_deploy.configs"}


def _package_name(folder: Path) -> str:
    rel = folder.relative_to(ROOT).parts
    head = MAPPED.get(rel[0], rel[0])
    return ".".join([head, *rel[1:]])


def test_every_package_folder_is_listed() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {
        _package_name(init.parent)
        for top in ["tunepp_deploy", *MAPPED]
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set(), f"package folders missing from pyproject: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject lists packages with no folder: {sorted(listed - found)}"
    assert conf["package-dir"] == {v: k for k, v in MAPPED.items()}
    assert all(name.startswith("tunepp_deploy") for name in listed)  # never a top-level `kernels`
    assert "*.cu" in conf["package-data"]["tunepp_deploy.kernels"]
    assert "*.yaml" in conf["package-data"]["tunepp_deploy.configs"]
    # the CUDA C sources the cupy backend loads are really there
    assert sorted(p.name for p in (ROOT / "kernels").glob("*.cu"))


def test_mapped_subpackages_import_from_their_folders() -> None:
    import tunepp_deploy.bench
    import tunepp_deploy.calibrate
    import tunepp_deploy.export
    import tunepp_deploy.kernels

    for mod, folder in ((tunepp_deploy.kernels, "kernels"), (tunepp_deploy.export, "export"),
                        (tunepp_deploy.calibrate, "calibrate"), (tunepp_deploy.bench, "bench")):
        assert Path(mod.__file__).parent == ROOT / folder
