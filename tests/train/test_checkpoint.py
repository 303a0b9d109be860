"""Checkpoints: round trip with weights_only=True, refusal of other configs and foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunepp_deploy.config import load_config
from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import (
    check_compatible,
    checkpoint_config,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    p = save_checkpoint(tmp_path / "m.pt", net, cfg, epoch=3)
    raw = torch.load(p, weights_only=True)  # what users will do: no pickled code
    assert raw["epoch"] == 3
    ckpt = read_checkpoint(p)
    assert checkpoint_config(ckpt) == cfg
    torch.manual_seed(1)
    other = build_network(cfg).eval()
    load_weights(other, ckpt, str(p))
    x = torch.randn(1, 1, *cfg.data.crop_size)
    with torch.no_grad():
        torch.testing.assert_close(net(x).logits, other(x).logits)


def test_wrong_config_is_one_line(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml")
    p = save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg)
    wider = load_config(CONFIGS / "phantom.yaml", overrides={"model.widths": [16, 32, 64, 128]})
    ckpt = read_checkpoint(p)
    with pytest.raises(ModelMismatchError, match="model differs in widths") as e:
        check_compatible(checkpoint_config(ckpt), wider, str(p))
    assert "\n" not in str(e.value)
    with pytest.raises(ModelMismatchError, match="do not fit"):
        load_weights(build_network(wider), ckpt, str(p))
    fewer = load_config(CONFIGS / "phantom.yaml", overrides={"data.classes": ["background", "solid", "torus",
                                                                              "hollow", "vessel"]})
    with pytest.raises(ModelMismatchError, match="classes"):
        check_compatible(checkpoint_config(ckpt), fewer, str(p))


def test_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(TuneppError, match="not found"):
        read_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelMismatchError, match="not a tunepp checkpoint"):
        read_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ModelMismatchError, match="missing state_dict"):
        read_checkpoint(plain)
    old = tmp_path / "old.pt"
    torch.save({"state_dict": {}, "config": {}, "format": 0, "version": "0.0.1"}, old)
    with pytest.raises(ModelMismatchError, match="format 0"):
        read_checkpoint(old)
