"""``make gpu-check-dry`` in CI: the GPU suite's CPU rehearsal at tiny sizes, in-process.

Every code path of ``tunepp bench gpu`` that needs no device runs here: the wheel list and its budget,
the install step (copy layout and import check), the kernel parity / timing code with scipy standing in
for the device backends, the MC paths (CUDA-only ones recorded as skipped), the 4 GB-budget planning,
the naive loop, the pytest child with its JUnit parsing, the JSON shape, the Markdown and the plot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tunepp_deploy.bench import gpu_wheels
from tunepp_deploy.bench.gpu import OUT_FILES, dry_settings, parse_junit, run_gpu_suite
from tunepp_deploy.bench.gpu_report import summary_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_dry")
    s = dry_settings(out, paths=("fp32", "tf32", "bf16", "bf16_graphs", "bf16_compile"), samples=(3, 1),
                     kernel_sizes=((16, 16, 16),), tests=("tests/bench/test_gpu_parity.py",),
                     wheels=out / "no_wheels")
    r = run_gpu_suite(s, log=lambda _m: None)
    r["_out"] = str(out)
    return r


@pytest.mark.slow
def test_dry_suite_writes_its_files(result: dict) -> None:
    out = Path(result["_out"])
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)  # within the device's 8-file limit
    data = json.loads((out / "gpu.json").read_text())
    assert data["dry"] is True and data["environment"]["device"] == "cpu"
    md = (out / "gpu.md").read_text()
    assert "DRY RUN" in md and "| mc/fp32/S3 |" in md
    assert (out / "gpu.png").stat().st_size > 1000
    assert "== GPU suite summary (dry run, CPU) ==" in summary_text(result)


@pytest.mark.slow
def test_dry_suite_covers_every_section(result: dict) -> None:
    mc = result["mc"]
    keys = {e["key"] for e in mc["entries"]}
    assert {"mc/fp32/S3", "mc/fp32/S1", "jetson/fp32/S3"} <= keys
    skipped = {x["what"]: x["reason"] for x in mc["skipped"]}
    assert all(skipped[p] == "needs a CUDA device" for p in ("tf32", "bf16", "bf16_graphs", "bf16_compile"))
    for e in mc["entries"]:
        assert e["latency_s"]["median"] > 0 and e["floor_s"] > 0 and e["windows"] == 8
    jet = next(e for e in mc["entries"] if e["kind"] == "jetson")
    assert 0 < jet["planned_gb"]["total_gb"] <= result["settings"]["jetson_gb"]
    assert jet["parity_vs_unbounded"]["max_abs_diff_probs"] < 1e-5  # the streamed plan gives the same maps
    assert mc["naive"]["engine_equivalent_s"] > 0
    assert result["tiny_parity"]["fp32"]["ok"]
    kern = result["kernels"]
    assert kern["stand_in"] and all(p["ok"] for p in kern["parity"])
    assert {r["kernel"] for r in kern["timing"]["rows"]} == {"edt", "ccl26", "euler26", "betti", "betti 9 labels"}
    tests = result["tests"]
    assert tests["tests"] == tests["skipped"] == 6 and tests["failures"] == 0  # the GPU tests skip on a CPU
    wheels = result["environment"]["wheels"]
    assert {"nibabel", "pydantic", "pydantic-core", "gudhi"} <= {p["name"] for p in wheels["pins"]}
    assert wheels["inventory"]["missing"] and wheels["inventory"]["fits"]


def test_wheel_list_and_budget(tmp_path: Path) -> None:
    pins = gpu_wheels.needed_wheels()
    names = {p.name for p in pins}
    assert "nibabel" in names and "torch" not in names and "numba" not in names  # the image has those
    assert all(p.version for p in pins)  # pinned to what CI tested
    cmd = gpu_wheels.pip_download_command(pins, tmp_path)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in cmd and "--no-deps" in cmd
    nib = next(p for p in pins if p.name == "nibabel")
    (tmp_path / f"nibabel-{nib.version}-py3-none-any.whl").write_bytes(b"x" * 1000)
    (tmp_path / "nibabel-0.0.1-py3-none-any.whl").write_bytes(b"x")
    inv = gpu_wheels.inventory(tmp_path, pins, tree=gpu_wheels.CALL_LIMIT_BYTES)
    assert "nibabel" not in inv["missing"] and inv["duplicates"] == ["nibabel"]
    assert inv["wheel_bytes"] == 1001 and not inv["fits"]  # a full tree leaves no room


def test_download_skips_cleanly_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_wheels, "no_network_reason", lambda *a, **k: "no network: test")
    said: list[str] = []
    p = gpu_wheels.download(tmp_path / "whl", None, log=said.append)
    assert p["skipped"] == "no network: test" and any("skipping the download" in m for m in said)
    assert not (tmp_path / "whl").exists()


def test_install_step_copy_layout(tmp_path: Path) -> None:
    rec_path = tmp_path / "install.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "device" / "install.py"), "--wheels",
                        str(tmp_path / "none"), "--target", str(tmp_path / "site"), "--mode", "copy",
                        "--record", str(rec_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads(rec_path.read_text())
    assert rec["project"] == "copy" and rec["imports_from"] == str(tmp_path / "site" / "tunepp_deploy")
    assert (tmp_path / "site" / "tunepp_deploy" / "kernels" / "edt.cu").is_file()
    assert set(rec["modules"]) == {"nibabel", "pydantic", "gudhi"}


def test_parse_junit(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                   '<testcase classname="a" name="t1"/><testcase classname="a" name="t2"><failure/></testcase>'
                   '<testcase classname="a" name="t3"><skipped message="no gpu"/></testcase></testsuite></testsuites>')
    r = parse_junit(xml)
    assert (r["tests"], r["passed"], r["failures"], r["skipped"]) == (3, 1, 1, 1)
    assert r["failed"] == ["a::t2"] and r["skipped_tests"] == ["a::t3: no gpu"]
