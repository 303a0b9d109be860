"""Train a variational network on preprocessed cases with the ELBO; save and load it safely.

Optimiser as in the seed's code: Adam, lr 1e-3, halved every ``decay_every`` iterations (the seed
halves every 50 epochs). Crops come from :class:`tunepp_deploy.data.dataset.CropDataset` with the
config's crop size and augmentation, so every method in a comparison sees the same kind of batches.
Checkpoints are plain dicts (``torch.load(weights_only=True)``) carrying the config, so inference
preprocesses a new scan exactly like training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.build import DEFAULT_WIDTHS, build_variational
from tunepp_deploy.methods.variational.elbo import KLScale, elbo_loss

CHECKPOINT_METHOD = "variational"


@dataclass
class VariationalSettings:
    """Backbone and schedule of one variational model."""

    arch: str = "unet"
    widths: Sequence[int] = DEFAULT_WIDTHS
    iters: int = 400
    batch: int = 2
    lr: float = 1e-3
    decay_every: int = 200
    kl_scale: KLScale = "voxel"
    seed: int = 0


@dataclass
class VariationalRun:
    net: BayesianSegNet
    settings: VariationalSettings
    history: list[dict[str, float]] = field(default_factory=list)


def train_variational(cfg: TuneppConfig, cases: list[LoadedCase], settings: VariationalSettings) -> VariationalRun:
    """Fit ``settings.arch`` on random crops of ``cases`` for ``settings.iters`` Adam steps (CPU)."""
    torch.manual_seed(settings.seed)
    net = build_variational(settings.arch, cfg.model.in_channels, cfg.data.num_classes, settings.widths)
    net.check_window(cfg.data.crop_size)
    ds = CropDataset(cases, cfg.data, length=settings.iters * settings.batch, seed=settings.seed)
    loader = DataLoader(ds, batch_size=settings.batch, shuffle=False, num_workers=0)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, settings.decay_every), gamma=0.5)
    voxels = int(np.mean([c.label.size for c in cases]))
    history = []
    net.train()
    for x, y, _ in loader:
        loss, parts = elbo_loss(net(x), y, net.kl(), len(cases), settings.batch, voxels, settings.kl_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), **parts})
    net.eval()
    return VariationalRun(net, settings, history)


def save_variational(path: str | Path, run: VariationalRun, cfg: TuneppConfig) -> Path:
    s = asdict(run.settings)
    s["widths"] = list(s["widths"])
    state = {"format": 1, "method": CHECKPOINT_METHOD, "settings": s, "config": config_to_dict(cfg),
             "state_dict": {k: v.detach().cpu() for k, v in run.net.state_dict().items()}}
    p = Path(path)
    write_atomic(p, lambda t: torch.save(state, t))
    return p


def load_variational(path: str | Path) -> tuple[BayesianSegNet, TuneppConfig, dict[str, Any]]:
    """``(net in eval mode, config, settings dict)``; refuses other checkpoints in one line."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("method") != CHECKPOINT_METHOD:
        raise ModelMismatchError(f"{path}: not a variational-method checkpoint")
    cfg = config_from_dict(ckpt["config"], str(path))
    s = ckpt["settings"]
    net = build_variational(s["arch"], cfg.model.in_channels, cfg.data.num_classes, s["widths"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), cfg, s


__all__ = ["VariationalRun", "VariationalSettings", "load_variational", "save_variational", "train_variational"]
