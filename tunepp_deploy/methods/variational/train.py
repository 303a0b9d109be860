"""Train a variational network on preprocessed cases with the ELBO; save and load it safely.

Optimiser as in the seed's code (Adam, learning rate halved in steps; the seed uses 1e-3 halved
every 50 epochs), with defaults changed for short CPU schedules and measured on the phantoms
(250 iterations, 32 training cases, validation Dice on 4 held-out cases): lr 3e-3 halved once
half-way, and the posterior started narrower (``log sigma^2 = -10``, see
:attr:`VariationalSettings.log_var_init`); the seed's values are options away (``--lr 1e-3
--log-var-init -5 --decay-every N``). The ``log sigma^2`` parameters get their own, 10x larger Adam
learning rate (:attr:`VariationalSettings.log_var_lr_scale`), without which the posterior width
never left the neighbourhood of its initial value in a short schedule (the ELBO and the study:
:mod:`.elbo`, docs/results/variational_posterior.md). Crops come from
:class:`tunepp_deploy.data.dataset.CropDataset` with the config's crop size and augmentation, so
every method in a comparison sees the same batches. Checkpoints are plain dicts
(``torch.load(weights_only=True)``) carrying the config, so inference preprocesses a new scan exactly
like training did; checkpoints from before the ``objective`` / ``kl_warmup`` / ``log_var_lr_scale``
settings load unchanged (only ``arch`` and ``widths`` are needed to rebuild the network).

:func:`train_variational_from_paths` is ``tunepp train-vi``: the training split of a dataset folder
(the seeded split ``tunepp train`` and ``tunepp compare`` use, so the held-out cases are the same),
training, validation Dice on the held-out split (:mod:`.validate`) and ``OUT/vi_<arch>.pt``, written
atomically and never over an existing file unless asked: a finished model is the expensive thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase, load_case, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ConfigError, DataError, ModelMismatchError, TuneppError
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.build import ARCHS, DEFAULT_WIDTHS, build_variational
from tunepp_deploy.methods.variational.elbo import OBJECTIVES, KLScale, Objective, elbo_loss, kl_warmup_weight
from tunepp_deploy.methods.variational.validate import validation_dice
from tunepp_deploy.train.checkpoint import read_method_checkpoint

CHECKPOINT_METHOD = "variational"
#: Default initial ``log sigma^2`` (see :attr:`VariationalSettings.log_var_init` for why not the seed's -5).
DEFAULT_LOG_VAR_INIT = -10.0
#: ``progress(iteration, parts)`` after each step: 1-based iteration, ``{"loss", "dice_loss", "ce", "kl"}``.
TrainProgress = Callable[[int, dict[str, float]], None]


@dataclass
class VariationalSettings:
    """Backbone and schedule of one variational model."""

    arch: str = "unet"
    widths: Sequence[int] = DEFAULT_WIDTHS
    iters: int = 400
    batch: int = 2
    lr: float = 3e-3
    #: Halve the learning rate every this many iterations; 0 = once, half-way through ``iters``.
    decay_every: int = 0
    kl_scale: KLScale = "voxel"
    #: Data term of the ELBO: ``"dice"`` (``0.01 CE + 0.99 Dice``, the seed's) or ``"nll"`` (the
    #: categorical likelihood of Bayes by Backprop; did not segment in short schedules), see :mod:`.elbo`.
    objective: Objective = "dice"
    #: KL warm-up: the KL weight rises linearly from 0 to 1 over this fraction of ``iters``.
    kl_warmup: float = 0.0
    #: Adam's learning rate of the ``log sigma^2`` parameters is ``lr`` times this. Adam moves a
    #: parameter by at most ~lr per step whatever the gradient, and the KL's pull dominates the
    #: gradient of ``log sigma^2`` from the start, so with one lr for all parameters ``log sigma^2``
    #: only travels ~0.75 lr iters (0.9 in 400 steps at 3e-3): the width was set by ``log_var_init``
    #: and the schedule. 10 lets the data term hold the layers that matter narrow while the rest widen
    #: 7x in 200 steps for a Dice cost within seed noise; 30 reaches the prior in the unneeded layers but
    #: cost Dice (docs/results/variational_posterior.md); 1 is the behaviour before.
    log_var_lr_scale: float = 10.0
    seed: int = 0
    #: Initial ``log sigma^2`` of every weight. The seed's code starts at -5 (sigma 0.082), i.e.
    #: four times the std of the initial means (0.02): the weight noise swamps the signal and on
    #: the phantoms 250 iterations reached validation Dice 0.36 (torus and tube never learned);
    #: -10 (sigma 0.0067, Bayes-by-Backprop's usual start) reached 0.90 with everything else equal.
    log_var_init: float = DEFAULT_LOG_VAR_INIT


@dataclass
class VariationalRun:
    net: BayesianSegNet
    settings: VariationalSettings
    history: list[dict[str, float]] = field(default_factory=list)


def train_variational(
    cfg: TuneppConfig, cases: list[LoadedCase], settings: VariationalSettings, progress: TrainProgress | None = None
) -> VariationalRun:
    """Fit ``settings.arch`` on random crops of ``cases`` for ``settings.iters`` Adam steps (CPU)."""
    _check_settings(settings)
    torch.manual_seed(settings.seed)
    net = build_variational(settings.arch, cfg.model.in_channels, cfg.data.num_classes, settings.widths)
    net.check_window(cfg.data.crop_size)
    net.init_log_var(settings.log_var_init)
    ds = CropDataset(cases, cfg.data, length=settings.iters * settings.batch, seed=settings.seed)
    loader = DataLoader(ds, batch_size=settings.batch, shuffle=False, num_workers=0)
    log_vars = [m.weight_log_var for m in net.bayes_layers()]
    lv_ids = {id(p) for p in log_vars}
    others = [p for p in net.parameters() if id(p) not in lv_ids]
    opt = torch.optim.Adam([{"params": others, "lr": settings.lr},
                            {"params": log_vars, "lr": settings.lr * settings.log_var_lr_scale}])
    warmup = round(settings.kl_warmup * settings.iters)
    step = max(1, settings.decay_every or settings.iters // 2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=0.5)
    voxels = int(np.mean([c.label.size for c in cases]))
    history = []
    net.train()
    for x, y, _ in loader:
        beta = kl_warmup_weight(len(history) + 1, warmup)
        loss, parts = elbo_loss(net(x), y, net.kl(), len(cases), settings.batch, voxels, settings.kl_scale,
                                settings.objective, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), **parts})
        if progress is not None:
            progress(len(history), history[-1])
    net.eval()
    return VariationalRun(net, settings, history)


def _check_settings(s: VariationalSettings) -> None:
    if s.objective not in OBJECTIVES:
        raise ConfigError(f"unknown variational objective {s.objective!r} (use {' or '.join(OBJECTIVES)})")
    if not 0.0 <= s.kl_warmup <= 1.0:
        raise ConfigError(f"kl_warmup must be a fraction of the iterations in [0, 1], got {s.kl_warmup}")
    if not s.log_var_lr_scale > 0.0:
        raise ConfigError(f"log_var_lr_scale must be > 0, got {s.log_var_lr_scale}")


def save_variational(path: str | Path, run: VariationalRun, cfg: TuneppConfig, **extra: Any) -> Path:
    """Write the network, its settings and ``cfg`` (plus JSON-like ``extra``) atomically."""
    s = asdict(run.settings)
    s["widths"] = list(s["widths"])
    state = {"format": 1, "method": CHECKPOINT_METHOD, "settings": s, "config": config_to_dict(cfg),
             "state_dict": {k: v.detach().cpu() for k, v in run.net.state_dict().items()}, **extra}
    p = Path(path)
    write_atomic(p, lambda t: torch.save(state, t))
    return p


def load_variational(path: str | Path) -> tuple[BayesianSegNet, TuneppConfig, dict[str, Any]]:
    """``(net in eval mode, config, settings dict)``; refuses other checkpoints in one line."""
    p = Path(path)
    ckpt = read_method_checkpoint(p, CHECKPOINT_METHOD, "variational-method", "tunepp train-vi")
    cfg = config_from_dict(ckpt["config"], str(p))
    s = ckpt["settings"]
    net = build_variational(s["arch"], cfg.model.in_channels, cfg.data.num_classes, s["widths"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelMismatchError(f"{p}: weights do not fit a {s['arch']} of widths {s['widths']} "
                                 f"({str(e).splitlines()[0][:160]})") from None
    return net.eval(), cfg, s


@dataclass
class TrainedVariational:
    """What :func:`train_variational_from_paths` produced."""

    path: Path
    run: VariationalRun
    validation: dict[str, Any]
    train_cases: list[str]
    val_cases: list[str]


def checkpoint_path(out: Path, arch: str) -> Path:
    """``OUT/vi_<arch>.pt``."""
    return out / f"vi_{arch}.pt"


def train_variational_from_paths(
    cfg: TuneppConfig, data: Path, out: Path, settings: VariationalSettings, overwrite: bool = False,
    progress: TrainProgress | None = None,
) -> TrainedVariational:
    """``tunepp train-vi`` (module docstring). Refuses an existing checkpoint before any work."""
    path = checkpoint_path(out, settings.arch)
    if path.exists() and not overwrite:
        raise TuneppError(f"{path}: exists; pass --overwrite to replace it")
    if settings.arch not in ARCHS:
        raise ConfigError(f"unknown variational backbone {settings.arch!r} (use {', '.join(ARCHS)})")
    if not Path(data).is_dir():
        raise DataError(f"{data}: dataset folder not found")
    train_paths, val_paths = split_cases(find_cases(data, cfg.data.layout), cfg.data.val_fraction, cfg.train.seed)
    train_cases = [load_case(c, cfg.data) for c in train_paths]
    run = train_variational(cfg, train_cases, settings, progress)
    val = validation_dice(run.net, cfg, [load_case(c, cfg.data) for c in val_paths])
    save_variational(path, run, cfg, validation=val, split={"train": [c.name for c in train_paths],
                                                            "val": [c.name for c in val_paths]},
                     history_tail=run.history[-10:])
    return TrainedVariational(path, run, val, [c.name for c in train_paths], [c.name for c in val_paths])


__all__ = [
    "TrainProgress",
    "TrainedVariational",
    "VariationalRun",
    "VariationalSettings",
    "checkpoint_path",
    "load_variational",
    "save_variational",
    "train_variational",
    "train_variational_from_paths",
]
