"""``tunepp compare`` at a tiny size: every method trains, evaluates and is timed on its backends;
a rerun loads every model it wrote instead of training; a model of another setup is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from rich.console import Console
from tiny_config import ROOT, TINY
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.compare.models import ModelRequest, check_same_setup, prepare_models
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

ROWS = {"tunepp_mc", "saliency_fusion", "saliency_sal_only", "segwithu", "vi_unet"}


def test_compare_tiny(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "data", 3, seed=1, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {**TINY, "train.iters_per_epoch": 2,
                                                           "train.batch_size": 1, "data.val_fraction": 0.34})
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_network(cfg), cfg)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", "--data", str(data), "--out", str(out), "-c", str(cfg_path),
                                 "--epochs", "1", "--samples", "2", "--backbone", str(ckpt), "--repeats", "1",
                                 "--val-every", "1", "--patience", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "compare.json").read_text())
    assert set(res["methods"]) == ROWS
    for name, row in res["methods"].items():
        for k in ("dice", "ece", "ece_fg", "aurc", "latency_torch_s"):
            assert math.isfinite(row[k]), (name, k)
    for name in ("tunepp_mc", "segwithu", "vi_unet"):
        assert res["methods"][name]["latency_ort_s"] > 0, name
        assert res["methods"][name]["ort_max_abs_diff"] < 1e-3, name  # same masks/noise on both backends
    assert res["methods"]["saliency_fusion"]["latency_ort_s"] is None
    assert res["methods"]["segwithu"]["samples"] == 1 and res["methods"]["tunepp_mc"]["samples"] == 2
    # the saliency run uses the same backbone and masks; tunepp_mc also averages the aleatoric head's logit
    # noise into each sample (saliency fusion has no such term), which only moves near-tie voxels
    sal, mc = res["methods"]["saliency_fusion"], res["methods"]["tunepp_mc"]
    assert sal["dice"] == pytest.approx(mc["dice"], abs=0.02)
    assert (out / "segwithu_head.pt").is_file() and (out / "vi_unet.pt").is_file()
    md = (out / "compare.md").read_text()
    assert all(f"| {n} |" in md for n in ROWS) and "union of predicted and true foreground" in md
    assert (out / "compare.png").is_file()

    # a rerun loads what the first run wrote: nothing is trained
    req = ModelRequest(backbone=ckpt, head=out / "segwithu_head.pt", vi=out / "vi_unet.pt")
    again = prepare_models(cfg, data, tmp_path / "rerun", [], req, Console(quiet=True))
    assert set(again.train_seconds.values()) == {None} and again.vi_arch == "unet"
    assert again.paths == res["models"] and again.info["head"] == {"loaded": str(out / "segwithu_head.pt")}

    # a model of another split is one line, before any evaluation
    other = load_config(cfg_path, {"train.seed": 5})
    with pytest.raises(ModelMismatchError, match=r"train\.seed"):
        check_same_setup(cfg, other, ckpt, "TUNE++ checkpoint")
    r = CliRunner().invoke(app, ["compare", "--data", str(data), "--out", str(tmp_path / "bad"), "-c", str(cfg_path),
                                 "--backbone", str(ckpt), "--vi", str(ckpt)])
    assert r.exit_code == 2 and "not a variational-method checkpoint" in r.output
