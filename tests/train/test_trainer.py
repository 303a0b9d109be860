"""Training: the loss goes down, a run writes its files, resumes, and survives Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunepp_deploy.config import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.losses.total import TuneppLoss
from tunepp_deploy.model import build_network
from tunepp_deploy.train import trainer as trainer_mod
from tunepp_deploy.train.checkpoint import read_checkpoint
from tunepp_deploy.train.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = {"data.crop_size": [32, 32, 16], "train.iters_per_epoch": 3, "train.batch_size": 2,
         "train.warmup_epochs": 0, "infer.max_batch": 4}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), cases=3, seed=1)


def test_steps_lower_the_full_loss() -> None:
    """Thirty AdamW steps on one batch lower every-term TUNE++ loss (a net that cannot learn fails)."""
    cfg = load_config(CONFIGS / "phantom.yaml", overrides=SMALL)
    torch.manual_seed(0)
    net = build_network(cfg).train()
    loss_fn = TuneppLoss(cfg.loss)
    x = torch.rand(2, 1, 32, 32, 16)
    y = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.8).long()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        terms = loss_fn(net(x), y)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        losses.append(float(terms["total"].detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_run_files_resume_and_refusal(phantoms: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml", overrides=SMALL)
    out = tmp_path / "run"
    res = train(cfg, out, data_dir=phantoms, epochs=2, device="cpu")
    assert res.epochs_done == 2 and not res.interrupted
    for f in ("best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "split.json", "config.json"):
        assert (out / f).is_file(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in rows) and "loss_topology" in rows[0]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    with pytest.raises(TuneppError, match="--resume"):
        train(cfg, out, data_dir=phantoms, epochs=2, device="cpu")
    res = train(cfg, out, data_dir=phantoms, epochs=3, device="cpu", resume=True)
    assert res.epochs_done == 3
    assert read_checkpoint(out / "last.pt")["epoch"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    other = load_config(CONFIGS / "phantom.yaml", overrides={**SMALL, "model.widths": [16, 16, 32, 64]})
    with pytest.raises(TuneppError, match="model differs"):
        train(other, out, data_dir=phantoms, epochs=4, device="cpu", resume=True)
    # a last.pt whose optimizer state has other parameters (a layout that still had the retired detector
    # bias): one line, not PyTorch's ValueError, and the run's files stay as they were
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["optimizer"]["param_groups"][0]["params"] += [10_000, 10_001, 10_002]
    torch.save(ckpt, out / "last.pt")
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(TuneppError, match="optimizer state does not fit"):
        train(cfg, out, data_dir=phantoms, epochs=4, device="cpu", resume=True)
    assert (out / "metrics.jsonl").read_text() == before


def test_ctrl_c_saves_last(phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(CONFIGS / "phantom.yaml", overrides=SMALL)
    calls = {"n": 0}
    real = TuneppLoss.forward

    def interrupt_on_fifth(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(trainer_mod.TuneppLoss, "forward", interrupt_on_fifth)
    out = tmp_path / "run"
    res = train(cfg, out, data_dir=phantoms, epochs=3, device="cpu")
    assert res.interrupted and res.epochs_done == 1
    assert read_checkpoint(out / "last.pt")["epoch"] == 1  # epoch 2 was cut short: resume redoes it
    monkeypatch.setattr(trainer_mod.TuneppLoss, "forward", real)
    assert train(cfg, out, data_dir=phantoms, epochs=3, device="cpu", resume=True).epochs_done == 3


def test_device_errors() -> None:
    with pytest.raises(TuneppError, match="unknown device"):
        trainer_mod.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TuneppError, match="no CUDA"):
            trainer_mod.resolve_device("cuda")
