"""``tunepp bench gpu``: the GPU acceptance suite, one command for one device call (``make gpu-check``).

On a lent GPU machine (no network; installed by ``bench/device/install.py`` from the working tree and
carried wheels) it runs, within ``budget_s`` of wall time (sections past the deadline are skipped and
say so, so one call always returns its files):

1. the environment: GPU, driver, versions, kernel backends, the install record, the wheel list;
2. kernel parity and timing (:mod:`tunepp_deploy.bench.gpu_kernels`);
3. MC parity on a tiny network (device vs CPU) and the Synapse-size MC paths, the 4 GB budget, the
   naive loop (:mod:`tunepp_deploy.bench.gpu_mc`);
4. the GPU-marked pytest tests (``-m gpu``), their counts and failures;

and writes ``gpu.json`` (every figure), ``gpu.md`` (the tables) and ``gpu.png`` into ``--out`` ($OUT
on the device: at most 8 files come back; the make target adds ``gpu.log``), printing the summary.

``dry=True`` (``make gpu-check-dry``, and the CI test) runs the same code on the CPU at tiny sizes:
the tiny phantom network on a 48^3 volume, 16^3 / 24x20x16 kernels with ``scipy`` standing in for the
device backend, and the CUDA-only paths recorded as skipped — every path that needs no device.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import gpu_kernels, gpu_mc, gpu_wheels


def repo_root() -> Path:
    """The checkout (configs, tests): this file's parent in an editable install, else the working directory
    (an installed copy lives in site-packages; ``gpu_check.sh`` runs from the checkout's root)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


REPO = repo_root()
GPU_TESTS = ("tests/kernels/test_kernels_gpu_sources.py", "tests/bench/test_gpu_parity.py")
OUT_FILES = ("gpu.json", "gpu.md", "gpu.png")


@dataclass(frozen=True)
class GpuSettings:
    """Everything ``tunepp bench gpu`` takes (CLI flags map 1:1)."""

    out: Path
    dry: bool = False
    budget_s: float = 420.0
    config: Path = Path("configs/synapse.yaml")
    volume: tuple[int, int, int] = (240, 240, 160)
    samples: tuple[int, ...] = (25, 1)
    paths: tuple[str, ...] = ("fp32", "tf32", "bf16", "bf16_graphs", "bf16_compile")
    kernel_sizes: tuple[tuple[int, int, int], ...] = gpu_kernels.SIZES
    repeats: int = 3
    warmup: int = 1
    memory_gb: float = 64.0
    jetson_gb: float = 4.0
    tests: tuple[str, ...] = GPU_TESTS
    naive: bool = True
    install_record: Path | None = None
    wheels: Path = Path(".whl")
    extra: dict[str, Any] = field(default_factory=dict)


def dry_settings(out: Path, **kw: Any) -> GpuSettings:
    """The CPU rehearsal's sizes (module docstring)."""
    base = {"dry": True, "budget_s": 600.0, "config": REPO / "configs" / "phantom.yaml", "volume": (48, 48, 48),
            "samples": (3, 1), "paths": ("fp32", "fp32_compile", "tf32", "bf16", "bf16_graphs", "bf16_compile"),
            "kernel_sizes": ((16, 16, 16), (24, 20, 16)), "repeats": 1, "warmup": 0, "memory_gb": 1.0,
            "jetson_gb": 0.5}
    return GpuSettings(out=out, **{**base, **kw})


class Clock:
    """Wall time left before the suite's deadline."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def environment(device: torch.device, s: GpuSettings) -> dict[str, Any]:
    """Host, GPU, library versions, kernel backends, install record and wheel inventory."""
    from tunepp_deploy.kernels import available_backends

    env: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "device": str(device), "loadavg_start": list(os.getloadavg())}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                      "memory_gb": p.total_memory / 2**30}
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    for mod in ("numpy", "numba", "cupy", "triton", "nibabel", "pydantic", "gudhi", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # a missing or broken module is a finding, not a crash
            env[mod] = f"unavailable ({type(e).__name__})"
    env["kernel_backends"] = {k: list(v) for k, v in available_backends().items()}
    if s.install_record and s.install_record.is_file():
        env["install"] = json.loads(s.install_record.read_text())
    env["wheels"] = gpu_wheels.plan(s.wheels if s.wheels.is_absolute() else REPO / s.wheels, REPO)
    return env


def run_pytest(tests: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` on ``tests`` in a child process; counts and failures from its JUnit XML."""
    if not tests:
        return {"skipped": "no tests selected"}
    if timeout_s <= 10:
        return {"skipped": "suite deadline"}
    with tempfile.TemporaryDirectory(prefix="tunepp_gpu_tests_") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}",
               *tests]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
            rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = None, f"timed out after {timeout_s:.0f} s: {str(e.stdout or '')[-2000:]}"
        out: dict[str, Any] = {"command": " ".join(cmd[1:]), "returncode": rc, "seconds": time.perf_counter() - t0,
                               "tail": tail}
        if xml.is_file():
            out.update(parse_junit(xml))
    return out


def parse_junit(path: Path) -> dict[str, Any]:
    """Totals and the failed / skipped test names of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(su.get(k, 0)) for su in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed, skipped = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        sk = case.find("skipped")
        if sk is not None:
            skipped.append(f"{name}: {sk.get('message', '')[:160]}")
    return {**tot, "passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"], "failed": failed,
            "skipped_tests": skipped}


def run_gpu_suite(s: GpuSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite (module docstring); writes ``gpu.json``, ``gpu.md`` and ``gpu.png`` into ``s.out``."""
    from .gpu_report import markdown, plot

    clock = Clock(s.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() and not s.dry else "cpu")
    if not s.dry and device.type != "cuda":
        log("no CUDA device: every GPU section is skipped (use --dry for the CPU rehearsal)")
    s.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "dry": s.dry, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in asdict(s).items()}}
    result["environment"] = environment(device, s)
    log(f"device {device}; {result['environment'].get('gpu', {}).get('name', 'no GPU')}")

    # kernels: the device backends, or scipy standing in for them in the dry run
    avail = result["environment"]["kernel_backends"]
    if s.dry:
        backends = ["scipy"]
    else:
        backends = [b for b in ("cupy", "numba-cuda") if avail[b][0] and "simulator" not in avail[b][1]]
    cupyx = not s.dry and avail["cupy"][0]
    kern: dict[str, Any] = {"backends": backends, "stand_in": s.dry}
    if backends:
        kern["parity"] = gpu_kernels.parity(backends)
        kern["timing"] = gpu_kernels.timing(backends, s.kernel_sizes, s.repeats, cupyx, clock.left, log)
    else:
        kern["skipped"] = "no CUDA kernel backend: " + "; ".join(f"{b}: {avail[b][1]}" for b in ("cupy", "numba-cuda"))
    if not cupyx:
        kern["cupyx_skipped"] = "dry run (CPU)" if s.dry else "cupy unavailable"
    result["kernels"] = kern
    log(f"kernels done at {clock.elapsed():.0f} s")

    # MC: tiny parity against the CPU, then the Synapse-size paths
    # compile paths are left to the pytest child (test_gpu_parity.py): a second inductor build of the tiny
    # network here would cost device time before the Synapse-size figures
    parity_paths = [p for p in s.paths if not gpu_mc.PATHS[p].compile]
    compile_backend = "aot_eager" if s.dry else "inductor"
    if device.type == "cuda" or s.dry:
        result["tiny_parity"] = gpu_mc.tiny_parity(device, parity_paths, s.config, compile_backend)
        mcs = gpu_mc.McSuiteSettings(config=s.config, overrides=gpu_mc.TINY if s.dry else None, volume=s.volume,
                                     samples=s.samples, paths=s.paths, repeats=s.repeats, warmup=s.warmup,
                                     memory_gb=s.memory_gb, jetson_gb=s.jetson_gb,
                                     matmul_n=256 if s.dry else 8192, compile_backend=compile_backend,
                                     naive=s.naive, dry_run=s.dry)
        result["mc"] = gpu_mc.run_mc(mcs, device, clock.left, log)
    else:
        result["mc"] = {"skipped": "no CUDA device"}
    log(f"MC done at {clock.elapsed():.0f} s")

    result["tests"] = run_pytest(s.tests, min(max(clock.left(), 0.0) + 60.0, 180.0))
    result["environment"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = clock.elapsed()
    result["summary"] = summary_rows(result)
    (s.out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))
    (s.out / "gpu.md").write_text(markdown(result))
    plot(result, s.out / "gpu.png")
    return result


def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline table: one row per MC path x S, kernels vs cupyx, parity, tests."""
    rows: list[dict[str, Any]] = []
    for e in r.get("mc", {}).get("entries", []):
        rows.append({"what": e["key"], "median_s": e["latency_s"]["median"], "events_s": e["events_s"],
                     "peak_device_mb": e["peak_device_mb"], "windows_per_s": e["windows_per_s"],
                     "over_floor": e["measured_over_floor"]})
    return rows


__all__ = ["GPU_TESTS", "OUT_FILES", "GpuSettings", "dry_settings", "parse_junit", "run_gpu_suite", "run_pytest"]
