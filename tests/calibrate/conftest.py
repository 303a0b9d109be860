"""A tiny untrained checkpoint and a tiny phantom dataset (fast enough for CLI tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "phantom"
    return write_phantom_dataset(out, 4, seed=3, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {
        "data.crop_size": [16, 16, 8], "data.spacing": [4.0, 4.0, 5.0], "model.widths": [8, 16],
        "model.depths": [1, 1], "model.decoder_depths": [1], "model.proj_tokens": 8,
        "model.dropout.sites": ["dec0"],
    })
    import torch

    torch.manual_seed(0)
    net = build_network(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", net, cfg)
