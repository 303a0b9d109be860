"""Multi-process training under torchrun (DDP with the gloo backend on CPU, loopback only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.train.checkpoint import read_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_torchrun_two_processes(tmp_path: Path) -> None:
    cfg = yaml.safe_load((CONFIGS / "phantom.yaml").read_text())
    cfg["data"]["crop_size"] = [32, 32, 16]
    cfg["train"].update({"iters_per_epoch": 2, "batch_size": 2, "warmup_epochs": 0})
    conf = tmp_path / "small.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    data = write_phantom_dataset(tmp_path / "ph", cases=3, seed=2)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tunepp_deploy", "train", "--config", str(conf), "--data", str(data), "--out", str(out),
         "--epochs", "1", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.count("done in") == 1  # only rank 0 reports
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # only rank 0 writes
