"""``tunepp evaluate --model`` with the other methods' real models: SegWithU and a variational network.

Tiny models trained for a few iterations (what is tested is the plumbing, not their quality): the
method is read from the model file (``--method auto``), every case gets the method's maps plus the
probabilities, and the evaluation ranks and triages by the method's flag map (SegWithU: ``ranking``;
variational: ``total``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config.load import config_to_dict, load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data.crop_size": [16, 16, 8], "data.spacing": [4.0, 4.0, 5.0], "model.widths": [8, 16],
    "model.depths": [1, 1], "model.decoder_depths": [1], "model.proj_tokens": 8,
    "model.dropout.sites": ["dec0", "head"],
}


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("d") / "data", 3, seed=2, shape=(24, 24, 16),
                                 spacing=(4.0, 4.0, 5.0))


def _evaluate(model: Path, data: Path, out: Path, *extra: str) -> tuple[dict, Path]:
    res = cli("evaluate", "--model", model, "--data", data, "-o", out, "--device", "cpu", "--worst", "1", *extra)
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text())["summary"], out / "predictions"


def test_segwithu(data: Path, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_network(cfg), cfg)
    r = cli("train-head", "--backbone", ckpt, "--data", data, "--out", tmp_path / "head", "--iters", "2",
            "--batch", "1", "--width", "8")
    assert r.exit_code == 0, r.output
    s, pred = _evaluate(tmp_path / "head" / "head.pt", data, tmp_path / "rep")  # one pass: no --samples
    rep = json.loads((pred / "phantom_000_report.json").read_text())
    assert rep["method"] == "segwithu" and rep["flag_map"] == "ranking"
    for m in ("seg", "temperature", "calibration", "ranking", "probs"):
        assert (pred / f"phantom_000_{m}.nii.gz").is_file(), m
    assert s["cases"] == 3 and s["calibration"]["cases_with_probabilities"] == 3
    assert s["taus_map"] == "ranking" and {"temperature", "calibration", "ranking", "msp"} <= set(s["ranking"])


def test_variational(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(load_config(ROOT / "configs" / "phantom.yaml", TINY))))
    r = cli("train-vi", "--config", config, "--data", data, "--out", tmp_path / "run", "--iters", "2", "--batch", "1",
            "--widths", "4,8", "--seed", "1")
    assert r.exit_code == 0, r.output
    s, pred = _evaluate(tmp_path / "run" / "vi_unet.pt", data, tmp_path / "rep", "--samples", "2")
    rep = json.loads((pred / "phantom_000_report.json").read_text())
    assert rep["method"] == "variational" and rep["flag_map"] == "total" and rep["samples"] == 2
    assert (pred / "phantom_000_probs.nii.gz").is_file()
    assert s["cases"] == 3 and s["taus_map"] == "total" and {"total", "epistemic", "aleatoric"} <= set(s["ranking"])
