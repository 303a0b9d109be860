"""The models of a comparison: trained here (and saved under OUT) or loaded from earlier runs.

* **TUNE++** — ``--backbone CKPT``, else ``tunepp train``'s trainer writes ``OUT/tunepp/`` and the
  comparison uses ``OUT/tunepp/last.pt``: the trainer validates on the config's held-out split, which
  *is* the comparison's test split, so its ``best.pt`` would be chosen on the test cases.
* **SegWithU head** — ``--head CKPT`` (``tunepp train-head`` / ``save_segwithu``), else trained on
  the frozen backbone with early stopping on a seeded hold-out of the *training* cases
  (:mod:`tunepp_deploy.methods.segwithu.train`) and saved as ``OUT/segwithu_head.pt``.
* **variational network** — ``--vi CKPT`` (``save_variational``), else ``--vi-arch`` trained for
  ``--vi-iters`` on the training cases and saved as ``OUT/vi_<arch>.pt``.

A loaded model must have been trained on the same setup as the comparison — same classes, layout,
spacing, normalisation, split (``data.val_fraction``, ``train.seed``) and window — or its test
numbers mean something else (it may have trained on the test cases); a mismatch is one line
naming the first differing setting. A loaded head must sit on the comparison's backbone (its
stored backbone weights are compared with the backbone's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tunepp_deploy.compare.progress import stage_bar
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase
from tunepp_deploy.errors import ConfigError, ModelMismatchError
from tunepp_deploy.methods.segwithu.model import SegWithU, load_segwithu
from tunepp_deploy.methods.segwithu.train import HeadSettings, load_backbone, save_head_run, train_head
from tunepp_deploy.methods.variational.build import ARCHS
from tunepp_deploy.methods.variational.train import (
    VariationalSettings,
    load_variational,
    save_variational,
    train_variational,
)
from tunepp_deploy.model import TUNEPP


@dataclass
class ModelRequest:
    """What to load (paths) or how to train (lengths) each model."""

    backbone: Path | None = None
    head: Path | None = None
    vi: Path | None = None
    epochs: int = 2
    head_iters: int | None = None
    vi_iters: int | None = None
    vi_arch: str = "unet"
    patience: int = 5
    val_every: int = 20


@dataclass
class Models:
    """The models of a comparison: their paths (every row opens its predictors from these), the SegWithU
    head in memory (exported to ONNX from there; the torch row opens the saved checkpoint), and how long
    training took (None: loaded)."""

    backbone_path: Path
    head: SegWithU
    vi_arch: str
    paths: dict[str, str] = field(default_factory=dict)
    train_seconds: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def setup_fields(cfg: TuneppConfig) -> dict[str, Any]:
    """The settings a loaded model must share with the comparison (module docstring)."""
    d = cfg.data
    return {"data.classes": list(d.classes), "data.layout": d.layout, "data.spacing": list(d.spacing),
            "data.intensity": d.intensity.model_dump(mode="json"), "data.val_fraction": d.val_fraction,
            "train.seed": cfg.train.seed, "window": list(cfg.window)}


def check_same_setup(ours: TuneppConfig, theirs: TuneppConfig, source: Path, what: str) -> None:
    """One-line :class:`ModelMismatchError` at the first setting where ``theirs`` differs."""
    a, b = setup_fields(ours), setup_fields(theirs)
    for k in a:
        if a[k] != b[k]:
            raise ModelMismatchError(f"{source}: this {what} was trained with {k} = {b[k]}, the comparison uses "
                                     f"{a[k]} (pass the model's --config or retrain it)")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _backbone(
    cfg: TuneppConfig, data: Path, out: Path, req: ModelRequest, console: Console
) -> tuple[Path, float | None]:
    if req.backbone is not None:
        return req.backbone, None
    from tunepp_deploy.train.trainer import train as train_tunepp

    console.print(f"[bold]training TUNE++[/] for {req.epochs} epochs -> {out / 'tunepp'}")
    t0 = time.perf_counter()
    res = train_tunepp(cfg, out / "tunepp", data_dir=data, epochs=req.epochs, device="cpu", console=console)
    return res.out_dir / "last.pt", time.perf_counter() - t0


def _load_head(cfg: TuneppConfig, path: Path, net: TUNEPP, info: dict[str, Any]) -> tuple[SegWithU, Path, None]:
    head, hcfg = load_segwithu(path)
    check_same_setup(cfg, hcfg, path, "SegWithU head")
    if not _same_weights(head.backbone, net):
        raise ModelMismatchError(f"{path}: this SegWithU head was trained on another TUNE++ backbone than "
                                 "the comparison's (pass its backbone with --backbone)")
    info["head"] = {"loaded": str(path)}
    return head, path, None


def _train_head(cfg: TuneppConfig, net: TUNEPP, train_cases: list[LoadedCase], out: Path, req: ModelRequest,
                console: Console, info: dict[str, Any]) -> tuple[SegWithU, Path, float]:
    iters = req.head_iters or req.epochs * cfg.train.iters_per_epoch
    settings = HeadSettings(iters=iters, batch=cfg.train.batch_size, seed=cfg.train.seed, patience=req.patience,
                            val_every=req.val_every)
    t0 = time.perf_counter()
    with stage_bar(console, "SegWithU head", iters) as update:
        run = train_head(net, cfg, train_cases, settings, progress=lambda i, _n, loss: update(i, loss))
    seconds = time.perf_counter() - t0
    path = save_head_run(out / "segwithu_head.pt", run, cfg)
    info["head"] = {"iters_max": iters, "iters_run": len(run.history), "best_iter": run.best_iter,
                    "best_val_loss": run.best_val_loss, "stopped_early": run.stopped_early,
                    "val_cases": run.val_cases, "patience": req.patience, "val_every": req.val_every}
    return run.model, path, seconds


def _load_vi(cfg: TuneppConfig, path: Path, info: dict[str, Any]) -> tuple[str, Path, None]:
    _, vcfg, s = load_variational(path)
    check_same_setup(cfg, vcfg, path, "variational network")
    info["vi"] = {"arch": s["arch"], "loaded": str(path), "iters": s.get("iters")}
    return str(s["arch"]), path, None


def _train_vi(cfg: TuneppConfig, train_cases: list[LoadedCase], out: Path, req: ModelRequest, console: Console,
              info: dict[str, Any]) -> tuple[str, Path, float]:
    iters = req.vi_iters or req.epochs * cfg.train.iters_per_epoch
    settings = VariationalSettings(arch=req.vi_arch, iters=iters, batch=cfg.train.batch_size, seed=cfg.train.seed)
    t0 = time.perf_counter()
    with stage_bar(console, f"variational {req.vi_arch}", iters) as update:
        run = train_variational(cfg, train_cases, settings, progress=lambda i, parts: update(i, parts["loss"]))
    seconds = time.perf_counter() - t0
    path = save_variational(out / f"vi_{req.vi_arch}.pt", run, cfg)
    info["vi"] = {"arch": req.vi_arch, "iters": iters}
    return req.vi_arch, path, seconds


def prepare_models(cfg: TuneppConfig, data: Path, out: Path, train_cases: list[LoadedCase], req: ModelRequest,
                   console: Console) -> Models:
    """Load or train every model (module docstring); trained ones are written under ``out``.

    Every given file is read and checked before anything is trained, so a wrong one costs seconds.
    """
    out.mkdir(parents=True, exist_ok=True)
    if req.vi is None and req.vi_arch not in ARCHS:
        raise ConfigError(f"unknown variational backbone {req.vi_arch!r} (use {', '.join(ARCHS)})")
    if req.head is not None and req.backbone is None:
        raise ModelMismatchError(f"{req.head}: --head needs --backbone (the TUNE++ checkpoint it was trained on)")
    info: dict[str, Any] = {}
    given: TUNEPP | None = None
    if req.backbone is not None:
        given, bcfg = load_backbone(req.backbone)
        check_same_setup(cfg, bcfg, req.backbone, "TUNE++ checkpoint")
    loaded_vi = _load_vi(cfg, req.vi, info) if req.vi is not None else None
    loaded_head = _load_head(cfg, req.head, given, info) if given is not None and req.head is not None else None
    backbone_path, t_backbone = _backbone(cfg, data, out, req, console)
    net = given if given is not None else load_backbone(backbone_path)[0]
    info["tunepp"] = {"loaded": str(req.backbone)} if req.backbone else {
        "epochs": req.epochs, "iters": req.epochs * cfg.train.iters_per_epoch}
    head, head_path, t_head = loaded_head or _train_head(cfg, net, train_cases, out, req, console, info)
    arch, vi_path, t_vi = loaded_vi or _train_vi(cfg, train_cases, out, req, console, info)
    return Models(backbone_path, head, arch,
                  paths={"backbone": str(backbone_path), "head": str(head_path), "vi": str(vi_path)},
                  train_seconds={"tunepp": t_backbone, "segwithu": t_head, "vi": t_vi}, info=info)


__all__ = ["ModelRequest", "Models", "check_same_setup", "prepare_models", "setup_fields"]
