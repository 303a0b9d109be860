"""Networks built from the shipped configs, the summary and the model-info command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunepp_deploy.config import load_config
from tunepp_deploy.errors import ConfigError
from tunepp_deploy.model import build_network
from tunepp_deploy.model.summary import summarize

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_phantom_config_builds_a_tiny_fast_network() -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")
    net = build_network(cfg)
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    out = net.eval()(torch.randn(1, 1, *cfg.data.crop_size))
    assert out.logits.shape == (1, cfg.data.num_classes, *cfg.data.crop_size)


@pytest.mark.parametrize("name", ["synapse", "btcv", "acdc"])
def test_large_configs_are_unetrpp_sized(name: str) -> None:
    s = summarize(load_config(CONFIGS / f"{name}.yaml"))
    assert 20e6 <= s.parameters <= 45e6
    assert 20 <= s.gflops <= 300
    assert s.trunk_gflops + s.head_gflops == pytest.approx(s.gflops, rel=1e-6)


def test_summary_of_phantom() -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")
    s = summarize(cfg, window=(64, 64, 48))
    assert s.window == (64, 64, 48)
    assert [x.name for x in s.sites] == cfg.model.dropout.sites
    assert 0 < s.trunk_share < 1
    assert s.mc_gflops(10) == pytest.approx(s.trunk_gflops + 10 * s.head_gflops)


def test_crop_not_divisible_is_a_config_error() -> None:
    cfg = load_config(CONFIGS / "phantom.yaml", {"data.crop_size": [40, 48, 32]})
    with pytest.raises(ConfigError, match="divisible"):
        build_network(cfg)


def test_model_info_command_prints_table() -> None:
    import typer

    from tunepp_deploy.cli.model_cmd import model_info

    app = typer.Typer()
    app.command()(model_info)
    res = CliRunner().invoke(app, ["--config", str(CONFIGS / "phantom.yaml"), "--window", "64,64,48"])
    assert res.exit_code == 0, res.output
    for word in ("Parameters", "GFLOPs", "dec0", "trunk"):
        assert word in res.output
