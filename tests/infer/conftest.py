"""Shared fixtures for the MC-inference tests: one tiny phantom-config network, its checkpoint and
its ONNX export (made once per session through the CLI — the export takes ~30 s on 2 CPU cores),
and small NIfTI scans."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from infer_helpers import write_scan
from typer.testing import CliRunner

from tunepp_deploy.config import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.model import TUNEPP, build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cfg() -> TuneppConfig:
    return load_config(REPO / "configs" / "phantom.yaml")


@pytest.fixture(scope="session")
def net(cfg: TuneppConfig) -> TUNEPP:
    torch.manual_seed(0)
    model = build_network(cfg).eval()
    with torch.no_grad():  # a freshly initialised network is nearly constant; spread its outputs a little
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def ckpt(net: TUNEPP, cfg: TuneppConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", net, cfg, epoch=0)


@pytest.fixture(scope="session")
def onnx_file(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunepp_deploy.cli.app import app

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    res = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return write_scan(tmp_path / "in" / "case_a_0000.nii.gz")
