"""``tunepp compare`` at a tiny size: every method trains, evaluates and is timed on both backends."""

from __future__ import annotations

import json

import torch
from conftest import ROOT, TINY
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint


def test_compare_tiny(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "data", 3, seed=1, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {**TINY, "train.iters_per_epoch": 2,
                                                           "train.batch_size": 1, "data.val_fraction": 0.34})
    cfg_path = tmp_path / "tiny.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_network(cfg), cfg)
    r = CliRunner().invoke(app, ["compare", "--data", str(data), "--out", str(tmp_path / "cmp"), "-c", str(cfg_path),
                                 "--epochs", "1", "--samples", "2", "--backbone", str(ckpt), "--repeats", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(res["methods"]) == {"tunepp_mc", "segwithu", "vi_unet"}
    for name, row in res["methods"].items():
        for k in ("dice", "ece", "ece_fg", "aurc", "latency_torch_s"):
            assert row[k] == row[k], (name, k)  # not NaN
    assert res["methods"]["vi_unet"]["latency_ort_s"] > 0 and res["methods"]["segwithu"]["samples"] == 1
    assert (tmp_path / "cmp" / "compare.md").read_text().count("|") > 20
    assert (tmp_path / "cmp" / "compare.png").is_file()
