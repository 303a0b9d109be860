"""Helpers of the batch reliability tests (imported by module name: pytest puts this folder on sys.path).

A tiny TUNE++ checkpoint (32^3 window, widths 4-8) and 24x24x16 phantoms keep a case well under a
second of compute, so the tests can afford real ``tunepp infer`` runs, in-process and as subprocesses
(kill -9, SIGTERM, concurrent runs). Every run uses one thread and a fixed seed, so outputs are
deterministic and comparable across processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from typer.testing import CliRunner

from tunepp_deploy.config import load_config
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
#: Arguments every run shares: two samples, no logit noise draws, one thread, a fixed seed.
FAST = ["--samples", "2", "--noise-draws", "0", "--threads", "1", "--seed", "0"]
MAPS = ("seg", "aleatoric", "epistemic", "total")


def make_model(folder: Path) -> Path:
    """A tiny phantom-config TUNE++ checkpoint (random weights, fixed torch seed)."""
    cfg = load_config(REPO / "configs" / "phantom.yaml")
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"crop_size": (32, 32, 32)}),
        "model": cfg.model.model_copy(update={"widths": [4, 8, 8, 8], "full_res_channels": 4, "proj_tokens": 8}),
    })
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder / "model.pt", net, cfg, epoch=0)


def write_scan(path: Path, seed: int = 0, shape: tuple[int, int, int] = (24, 24, 16)) -> Path:
    """A small CT-like phantom saved with a diagonal 2 x 2 x 2.5 mm affine."""
    data = generate_case(np.random.default_rng(seed), shape=shape, spacing=(2.0, 2.0, 2.5)).image
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([2.0, 2.0, 2.5, 1.0])), str(path))
    return path


def write_scans(folder: Path, names: list[str]) -> list[Path]:
    return [write_scan(folder / f"{n}.nii.gz", seed=i) for i, n in enumerate(names)]


def infer(inp: Path, out: Path, model: Path, *extra: str):
    """``tunepp infer`` in-process; restores torch's thread count (``--threads 1`` sets it globally)."""
    from tunepp_deploy.cli.app import app

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(app, ["infer", "-i", str(inp), "-o", str(out), "-m", str(model), *FAST, *extra])
    finally:
        torch.set_num_threads(threads)


def stderr_of(res) -> str:
    try:
        return res.stderr
    except (ValueError, AttributeError):
        return res.output


def assert_one_line_error(text: str, *needles: str) -> None:
    """Exactly one non-empty line, starting ``error:``, no traceback, containing every needle."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert "Traceback" not in text
    for n in needles:
        assert n in lines[0], lines[0]


def cli_command(inp: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunepp_deploy", "infer", "-i", str(inp), "-o", str(out), "-m", str(model), *FAST,
            *extra]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "COLUMNS": "400", "NO_COLOR": "1"}


def start_cli(inp: Path, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    """``tunepp infer`` as a subprocess with stderr piped (its per-case lines are read as they come)."""
    return subprocess.Popen(cli_command(inp, out, model, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(), cwd=REPO)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 240.0) -> list[str]:
    """Read ``proc``'s stderr until a line starts with ``prefix``; returns the lines read."""
    import select
    import time

    lines: list[str] = []
    end = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting with {prefix!r} in {lines}")


def leftovers(out: Path) -> list[str]:
    """Hidden files in an output folder: temporaries, locks or probes a run left behind."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.is_dir() else []


def partial_cases(out: Path, names: list[str]) -> list[str]:
    """Cases with some outputs but no report (a half-written case)."""
    bad = []
    for n in names:
        files = [out / f"{n}_{m}.nii.gz" for m in MAPS]
        if any(f.exists() for f in files) and not (out / f"{n}_report.json").exists():
            bad.append(n)
    return bad


def arrays(out: Path, name: str) -> dict[str, np.ndarray]:
    """The segmentation and maps of case ``name`` as arrays."""
    return {m: np.asarray(nib.load(str(out / f"{name}_{m}.nii.gz")).dataobj) for m in MAPS}


def assert_same_arrays(x: dict[str, np.ndarray], y: dict[str, np.ndarray], what: str = "") -> None:
    """Segmentations equal; maps equal to float32 rounding (torch's CPU kernels are not bitwise
    reproducible between two runs, even in one process: ~1e-7 seen on these maps)."""
    assert np.array_equal(x["seg"], y["seg"]), f"{what} seg differs"
    for m in MAPS[1:]:
        assert np.allclose(x[m], y[m], rtol=0, atol=1e-6), f"{what} {m} differs"


def assert_same_outputs(a: Path, b: Path, names: list[str]) -> None:
    for n in names:
        assert_same_arrays(arrays(a, n), arrays(b, n), f"{n} ({a} vs {b})")
