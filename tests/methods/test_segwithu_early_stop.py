"""SegWithU head early stopping: hold-out split, stop after ``patience`` worse validations, best state back."""

from __future__ import annotations

import torch
from tiny_config import ROOT, TINY
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.methods.segwithu.train import HeadSettings, hold_out, train_head, validation_crops, validation_loss
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint


def test_hold_out_is_seeded_and_keeps_one_of_each(tiny_cases) -> None:
    tr, va = hold_out(tiny_cases, 0.2, seed=0)
    assert len(va) == 1 and len(tr) == 2 and {c.name for c in tr + va} == {c.name for c in tiny_cases}
    assert [c.name for c in hold_out(tiny_cases, 0.2, seed=0)[1]] == [c.name for c in va]
    assert hold_out(tiny_cases[:1], 0.5, seed=0)[1] == [] and hold_out(tiny_cases, 0.0, seed=0)[1] == []


def test_stops_early_and_restores_best_state(tiny_backbone, tiny_cfg, tiny_cases) -> None:
    # lr 3 makes AdamW overshoot: the validation loss improves for a few steps, then gets worse
    s = HeadSettings(iters=30, batch=1, width=8, lr=3.0, val_every=1, patience=2, val_crops=2)
    run = train_head(tiny_backbone, tiny_cfg, tiny_cases, s)
    losses = [v["val_loss"] for v in run.val_history]
    assert run.stopped_early and len(run.history) < s.iters
    assert run.best_iter is not None and run.best_iter < run.val_history[-1]["iter"]
    assert run.best_val_loss == min(losses) and losses[-1] > run.best_val_loss  # it did get worse after the best
    assert len(losses) - 1 - losses.index(min(losses)) == s.patience  # stopped after exactly `patience` worse ones
    val = [c for c in tiny_cases if c.name in run.val_cases]
    assert validation_loss(run.model, validation_crops(val, tiny_cfg.data, s.val_crops, s.seed + 2),
                           s.seed + 3) == run.best_val_loss  # the returned head is the best recorded state
    assert not set(run.val_cases) & set(run.train_cases)


def test_patience_zero_runs_all_iterations(tiny_backbone, tiny_cfg, tiny_cases) -> None:
    s = HeadSettings(iters=6, batch=1, width=8, lr=3.0, val_every=1, patience=0, val_crops=1)
    run = train_head(tiny_backbone, tiny_cfg, tiny_cases, s)
    assert len(run.history) == 6 and not run.stopped_early and len(run.val_history) == 6


def test_train_head_cli_patience(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "data", 4, seed=2, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_network(cfg), cfg)
    r = CliRunner().invoke(app, ["train-head", "--backbone", str(ckpt), "--data", str(data), "--out",
                                 str(tmp_path / "head"), "--iters", "3", "--batch", "1", "--width", "8",
                                 "--val-every", "1", "--patience", "1"])
    assert r.exit_code == 0, r.output
    saved = torch.load(tmp_path / "head" / "head.pt", weights_only=True)
    assert saved["val_history"] and saved["best_iter"] in [v["iter"] for v in saved["val_history"]]
