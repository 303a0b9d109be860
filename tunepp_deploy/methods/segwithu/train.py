"""Train the SegWithU head on a frozen TUNE++ backbone (``tunepp train-head``), with early stopping.

Schedule from the public code, counted in iterations instead of epochs: AdamW lr 1e-3 with a
cosine decay to 3e-4, gradient-norm clip 12. Batches are random crops of the *training* split of
the backbone's run (same config, same seeded split as ``tunepp train``), so the head learns where
the backbone errs on data it was fitted to — the published recipe.

**Early stopping** (the public code stops after 10 epochs without improvement): a seeded part of
the given cases (``val_fraction``, at least one case when there are two or more) — or explicit
``val_cases`` — is held out. Every ``val_every`` iterations the head loss is computed on fixed
validation crops (seeded once, no augmentation, a fixed pair-sampling seed, so successive
evaluations differ only by the head's weights); the best head state is kept and training stops
after ``patience`` evaluations without improvement (``patience=0``: never stop early). The best
state is restored at the end. The validation loss is the training loss, not a Dice: the head does
not change the segmentation, what it learns is the ranking/calibration the loss measures.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from tunepp_deploy.config.schema import DataConfig, TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase, load_case, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.methods.segwithu.head import DEFAULT_RANK, DEFAULT_WIDTH
from tunepp_deploy.methods.segwithu.losses import segwithu_loss
from tunepp_deploy.methods.segwithu.model import SegWithU, save_segwithu
from tunepp_deploy.model import TUNEPP

LR, LR_END, GRAD_CLIP = 1e-3, 3e-4, 12.0
#: Progress callback: ``(iteration done, iterations planned, last training loss)``.
HeadProgress = Callable[[int, int, float], None]


@dataclass
class HeadSettings:
    """Head size, schedule and early stopping (``patience`` in evaluations; 0 disables it)."""

    iters: int = 200
    batch: int = 2
    width: int = DEFAULT_WIDTH
    rank: int = DEFAULT_RANK
    seed: int = 0
    lr: float = LR
    val_fraction: float = 0.2
    val_every: int = 20
    patience: int = 5
    val_crops: int = 8


@dataclass
class HeadRun:
    """The trained head (best validation state when validated) and what training did."""

    model: SegWithU
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_iter: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)


def hold_out(cases: list[LoadedCase], fraction: float, seed: int) -> tuple[list[LoadedCase], list[LoadedCase]]:
    """Seeded ``(train, val)`` split of ``cases``: ``round(n * fraction)`` but at least one validation
    and one training case; no validation part with fewer than two cases or ``fraction <= 0``."""
    n = len(cases)
    if n < 2 or fraction <= 0:
        return list(cases), []
    order = np.random.default_rng([seed, 17]).permutation(n)
    n_val = min(n - 1, max(1, round(n * fraction)))
    val_idx = set(order[:n_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx]


def _no_augment(cfg: DataConfig) -> DataConfig:
    aug = cfg.augment.model_copy(update={"flip": False, "rot90": False, "intensity_scale": 0.0,
                                         "intensity_shift": 0.0})
    return cfg.model_copy(update={"augment": aug})


def validation_crops(cases: list[LoadedCase], cfg: DataConfig, n: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``n`` fixed, un-augmented crops ``(x [1, 1, *crop], y [1, *crop])`` of ``cases`` (seeded)."""
    ds = CropDataset(cases, _no_augment(cfg), length=n, seed=seed)
    return [(x[None], y[None]) for x, y, _ in (ds[i] for i in range(n))]


def validation_loss(model: SegWithU, crops: list[tuple[torch.Tensor, ...]], seed: int) -> float:
    """Mean head loss over ``crops`` with a fixed pair-sampling generator (deterministic per state)."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = 0.0
        for x, y in crops:
            logits, out = model(x)
            total += float(segwithu_loss(out, logits, y, gen)[0])
    model.train(was_training)
    return total / max(1, len(crops))


def train_head(
    backbone: TUNEPP, cfg: TuneppConfig, cases: list[LoadedCase], settings: HeadSettings,
    val_cases: list[LoadedCase] | None = None, progress: HeadProgress | None = None,
) -> HeadRun:
    """Fit a fresh head on ``cases`` (module docstring); the backbone's weights never change.

    ``val_cases`` given: they are the validation set and all ``cases`` train; else a seeded
    ``settings.val_fraction`` of ``cases`` is held out (:func:`hold_out`).
    """
    if val_cases is None:
        cases, val_cases = hold_out(cases, settings.val_fraction, settings.seed)
    torch.manual_seed(settings.seed)
    model = SegWithU(backbone, settings.width, settings.rank)
    ds = CropDataset(cases, cfg.data, length=settings.iters * settings.batch, seed=settings.seed + 1)
    loader = DataLoader(ds, batch_size=settings.batch, shuffle=False, num_workers=0)
    opt = torch.optim.AdamW(model.head.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.iters),
                                                       eta_min=settings.lr * LR_END / LR)
    gen = torch.Generator().manual_seed(settings.seed)
    run = HeadRun(model, train_cases=[c.name for c in cases], val_cases=[c.name for c in val_cases])
    crops = validation_crops(val_cases, cfg.data, settings.val_crops, settings.seed + 2) if val_cases else []
    val_seed = settings.seed + 3
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0

    def evaluate(it: int) -> bool:
        """Validate at iteration ``it``; True when training should stop."""
        nonlocal best_state, bad
        v = validation_loss(model, crops, val_seed)
        run.val_history.append({"iter": it, "val_loss": v})
        if run.best_val_loss is None or v < run.best_val_loss:
            run.best_val_loss, run.best_iter, bad = v, it, 0
            best_state = copy.deepcopy(model.head.state_dict())
            return False
        bad += 1
        return settings.patience > 0 and bad >= settings.patience

    model.train()
    it = 0
    for x, y, _ in loader:
        logits, out = model(x)
        loss, parts = segwithu_loss(out, logits, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.head.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        it += 1
        run.history.append({"loss": float(loss.detach()), **parts})
        if progress is not None:
            progress(it, settings.iters, run.history[-1]["loss"])
        if crops and settings.val_every > 0 and it % settings.val_every == 0 and evaluate(it):
            run.stopped_early = it < settings.iters
            break
    if crops and (not run.val_history or run.val_history[-1]["iter"] != it):
        evaluate(it)  # the iterations after the last scheduled evaluation count too
    if best_state is not None:
        model.head.load_state_dict(best_state)
    run.model = model.eval()
    return run


def load_backbone(path: str | Path) -> tuple[TUNEPP, TuneppConfig]:
    """A TUNE++ checkpoint (``tunepp train``'s best.pt) as an eval-mode network and its config."""
    from tunepp_deploy.export.onnx_export import load_checkpoint_network

    return load_checkpoint_network(path)


def save_head_run(path: str | Path, run: HeadRun, cfg: TuneppConfig) -> Path:
    """:func:`save_segwithu` plus the run's record (training tail, validation history, best iteration)."""
    return save_segwithu(path, run.model, cfg, history_tail=run.history[-10:], val_history=run.val_history,
                         best_iter=run.best_iter, stopped_early=run.stopped_early, iters_run=len(run.history))


def train_head_from_paths(
    backbone: Path, data: Path, out: Path, settings: HeadSettings, progress: HeadProgress | None = None,
) -> tuple[Path, HeadRun]:
    """``tunepp train-head``: load the backbone, its training split of ``data``, train, write ``out/head.pt``."""
    net, cfg = load_backbone(backbone)
    cases = find_cases(data, cfg.data.layout)
    train_cases, _ = split_cases(cases, cfg.data.val_fraction, cfg.train.seed)
    loaded = [load_case(c, cfg.data) for c in train_cases]
    run = train_head(net, cfg, loaded, settings, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    return save_head_run(out / "head.pt", run, cfg), run


__all__ = [
    "HeadProgress",
    "HeadRun",
    "HeadSettings",
    "hold_out",
    "load_backbone",
    "save_head_run",
    "train_head",
    "train_head_from_paths",
    "validation_crops",
    "validation_loss",
]
