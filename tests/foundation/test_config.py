"""Configs: the shipped YAMLs validate with the seed's values; mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunepp_deploy.config import load_config
from tunepp_deploy.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["synapse", "btcv", "acdc", "phantom"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.data.classes[0] == "background"


@pytest.mark.parametrize("name", ["synapse", "btcv", "acdc"])
def test_seed_values(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.lambda3, cfg.loss.lambda4) == (0.3, 0.2, 0.1, 0.15)
    assert (cfg.loss.w_b, cfg.loss.w_j, cfg.loss.w_a) == (1.0, 2.0, 3.0)
    assert cfg.data.spacing == (1.5, 1.5, 2.0)
    assert cfg.data.crop_size == (96, 96, 96)
    if cfg.data.modality == "ct":
        assert cfg.data.intensity.mode == "ct_window" and cfg.data.intensity.window == (-175.0, 250.0)
    else:
        assert cfg.data.intensity.mode == "zscore"
    assert len(cfg.data.classes) == {"synapse": 9, "btcv": 14, "acdc": 4}[name]


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((CONFIGS / "phantom.yaml").read_text())
    mutate(data)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, lambda d: d["loss"].update({"lamda1": 0.3}))
    with pytest.raises(ConfigError, match=r"loss\.lamda1: unknown key"):
        load_config(p)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, lambda d: d["train"].update({"epochs": "many"}))
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(p)


def test_bad_values_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path, lambda d: d["data"].update({"spacing": [1.0, -1.0, 1.0]}))
    with pytest.raises(ConfigError, match=r"data\.spacing"):
        load_config(p)
    p = _write(tmp_path, lambda d: d["data"]["intensity"].update({"window": [250, -175]}))
    with pytest.raises(ConfigError, match=r"data\.intensity\.window"):
        load_config(p)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml", overrides={"train.epochs": 3})
    assert cfg.train.epochs == 3


def test_shipped_config_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_config("phantom").name == "phantom"
    assert load_config("configs/synapse.yaml").name == "synapse"
    with pytest.raises(ConfigError, match="shipped configs: acdc, btcv, phantom, synapse"):
        load_config("nosuch")
