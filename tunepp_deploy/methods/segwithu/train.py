"""Train the SegWithU head on a frozen TUNE++ backbone (``tunepp train-head``).

Schedule from the public code, counted in iterations instead of epochs: AdamW lr 1e-3 with a
cosine decay to 3e-4, gradient-norm clip 12. Batches are random crops of the *training* split of
the backbone's run (same config, same seeded split as ``tunepp train``), so the head learns where
the backbone errs on data it was fitted to — the published recipe; a held-out split would give the
head more honest errors and is what ``--val-fraction`` style splits in the comparison use.
The public code's early stopping (patience 10 epochs) is not implemented: a fixed iteration count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase, load_case, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.methods.segwithu.head import DEFAULT_RANK, DEFAULT_WIDTH
from tunepp_deploy.methods.segwithu.losses import segwithu_loss
from tunepp_deploy.methods.segwithu.model import SegWithU, save_segwithu
from tunepp_deploy.model import TUNEPP

LR, LR_END, GRAD_CLIP = 1e-3, 3e-4, 12.0


@dataclass
class HeadSettings:
    iters: int = 200
    batch: int = 2
    width: int = DEFAULT_WIDTH
    rank: int = DEFAULT_RANK
    seed: int = 0


@dataclass
class HeadRun:
    model: SegWithU
    history: list[dict[str, float]] = field(default_factory=list)


def train_head(backbone: TUNEPP, cfg: TuneppConfig, cases: list[LoadedCase], settings: HeadSettings) -> HeadRun:
    """Fit a fresh head on ``cases`` (module docstring); the backbone's weights never change."""
    torch.manual_seed(settings.seed)
    model = SegWithU(backbone, settings.width, settings.rank)
    ds = CropDataset(cases, cfg.data, length=settings.iters * settings.batch, seed=settings.seed + 1)
    loader = DataLoader(ds, batch_size=settings.batch, shuffle=False, num_workers=0)
    opt = torch.optim.AdamW(model.head.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.iters), eta_min=LR_END)
    gen = torch.Generator().manual_seed(settings.seed)
    history = []
    model.train()
    for x, y, _ in loader:
        logits, out = model(x)
        loss, parts = segwithu_loss(out, logits, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.head.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), **parts})
    return HeadRun(model.eval(), history)


def load_backbone(path: str | Path) -> tuple[TUNEPP, TuneppConfig]:
    """A TUNE++ checkpoint (``tunepp train``'s best.pt) as an eval-mode network and its config."""
    from tunepp_deploy.export.onnx_export import load_checkpoint_network

    return load_checkpoint_network(path)


def train_head_from_paths(backbone: Path, data: Path, out: Path, settings: HeadSettings) -> tuple[Path, HeadRun]:
    """``tunepp train-head``: load the backbone, its training split of ``data``, train, write ``out/head.pt``."""
    net, cfg = load_backbone(backbone)
    cases = find_cases(data, cfg.data.layout)
    train_cases, _ = split_cases(cases, cfg.data.val_fraction, cfg.train.seed)
    loaded = [load_case(c, cfg.data) for c in train_cases]
    run = train_head(net, cfg, loaded, settings)
    out.mkdir(parents=True, exist_ok=True)
    path = save_segwithu(out / "head.pt", run.model, cfg, history_tail=run.history[-10:])
    return path, run


__all__ = ["HeadRun", "HeadSettings", "load_backbone", "train_head", "train_head_from_paths"]
