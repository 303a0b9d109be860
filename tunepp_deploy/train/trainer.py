"""The training loop: data -> crops -> TUNE++ -> losses -> AdamW, with validation and checkpoints.

What a long run needs and a short one must not break:
* seeded everything (crops are seeded per (epoch, index), so a resumed run draws the same crops);
* ``last.pt`` after every epoch and on Ctrl-C, ``best.pt`` on the best validation mean Dice;
* ``--resume`` continues from ``last.pt`` (model, optimiser, scheduler, epoch, best score), after
  checking the checkpoint belongs to this config;
* per-epoch metrics appended to ``metrics.jsonl`` and ``metrics.csv``;
* AMP (bf16 where supported, else fp16 with a grad scaler) on CUDA; multi-GPU with ``torchrun``
  (DistributedDataParallel; rank 0 validates and writes).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, DistributedSampler

from tunepp_deploy.config.load import config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase, load_case, save_split, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.losses.complexity import structure_weights
from tunepp_deploy.losses.total import TuneppLoss
from tunepp_deploy.metrics.overlap import dice_per_class
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import (
    check_compatible,
    checkpoint_config,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from tunepp_deploy.train.schedule import build_scheduler


@dataclass
class TrainResult:
    """Where the run went and how it ended."""

    out_dir: Path
    epochs_done: int
    best_dice: float
    best_epoch: int
    seconds: float
    interrupted: bool = False
    rank: int = 0  # torchrun rank; only rank 0 validates, writes and reports


def _seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a one-line error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TuneppError("--device cuda requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise TuneppError(f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)")
    return torch.device("cpu")


@torch.no_grad()
def validate(
    model: torch.nn.Module, cases: list[LoadedCase], cfg: TuneppConfig, device: torch.device
) -> dict[str, Any]:
    """Deterministic (dropout off) sliding-window Dice on whole validation volumes."""
    model.eval()
    k = cfg.data.num_classes
    dices = []

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(model(x).logits.float(), dim=1)]

    for case in cases:
        vol = torch.from_numpy(case.image)[None].to(device)
        (prob,) = sliding_window(vol, predict, cfg.window, overlap=cfg.infer.overlap, batch=cfg.infer.max_batch)
        pred = prob.argmax(0).cpu().numpy()
        dices.append(dice_per_class(pred, case.label, k))
    per_class = np.nanmean(np.stack(dices), axis=0) if dices else np.full(k - 1, np.nan)
    model.train()
    return {
        "val_dice": float(np.nanmean(per_class)),
        "val_dice_per_class": {n: float(d) for n, d in zip(cfg.data.classes[1:], per_class, strict=True)},
    }


class _MetricsLog:
    """Append-only per-epoch log in JSON lines and CSV (columns fixed by the first row)."""

    def __init__(self, out_dir: Path) -> None:
        self.jsonl, self.csv = out_dir / "metrics.jsonl", out_dir / "metrics.csv"

    def append(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for k, v in row.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(flat)


def _load_cases(cases: list, cfg: TuneppConfig, console: Console, what: str) -> list[LoadedCase]:
    out = []
    with Progress(TextColumn(f"loading {what}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as prog:
        task = prog.add_task(what, total=len(cases))
        for c in cases:
            out.append(load_case(c, cfg.data))
            prog.advance(task)
    return out


def train(
    cfg: TuneppConfig,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    epochs: int | None = None,
    device: str = "auto",
    resume: bool = False,
    console: Console | None = None,
    init: str | Path | None = None,
) -> TrainResult:
    """Train ``cfg``'s network on ``data_dir`` (default ``cfg.data.root``) into ``out_dir``.

    ``init``: start from that checkpoint's weights (fine-tuning: a fresh optimiser and schedule; the
    network must be the same). With the same ``train.seed`` and data the train/val split is the same
    as the checkpoint's run, so validation cases stay unseen.
    """
    console = console or Console()
    # Softmax tails in the attention branches underflow into denormal floats once the network has
    # trained a little; x86 CPUs handle those in microcode, measured here as a 6x slower step.
    torch.set_flush_denormal(True)
    rank, local_rank, world = _distributed()
    is_main = rank == 0
    dev = resolve_device(device, local_rank)
    out = Path(out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if epochs is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    tc = cfg.train

    ckpt = None
    if resume:
        if not last_path.is_file():
            raise TuneppError(f"{last_path}: nothing to resume (no last.pt in the run folder)")
        ckpt = read_checkpoint(last_path)
        check_compatible(checkpoint_config(ckpt, str(last_path)), cfg, str(last_path))
    elif last_path.exists():
        raise TuneppError(f"{out}: run folder already has last.pt; pass --resume to continue or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(tc.seed + rank)

    all_cases = find_cases(data_dir or cfg.data.root, cfg.data.layout)
    split_path = out / "split.json"
    if resume and split_path.exists():
        names = json.loads(split_path.read_text())
        by_name = {c.name: c for c in all_cases}
        missing = [n for n in names["train"] + names["val"] if n not in by_name]
        if missing:
            raise TuneppError(f"{split_path}: cases {missing[:3]} of the recorded split are not in the data folder")
        train_cases = [by_name[n] for n in names["train"]]
        val_cases = [by_name[n] for n in names["val"]]
    else:
        train_cases, val_cases = split_cases(all_cases, cfg.data.val_fraction, tc.seed)
        if is_main:
            save_split(split_path, train_cases, val_cases)
            (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))

    train_data = _load_cases(train_cases, cfg, console, "train cases")
    if cfg.loss.lambda1 > 0 and cfg.loss.topo_mode != "persistence":  # label-only part of the DT weights:
        # once per case, not per step
        lc = cfg.loss
        for case in train_data:
            case.structure = structure_weights(case.label, lc.w_b, lc.w_j, lc.topo_sigma)
    val_data = _load_cases(val_cases, cfg, console, "val cases") if is_main else []

    per_rank_batch = max(1, tc.batch_size // world)
    dataset = CropDataset(train_data, cfg.data, length=tc.iters_per_epoch * tc.batch_size, seed=tc.seed)
    sampler = DistributedSampler(dataset, shuffle=False) if world > 1 else None
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, shuffle=False,
                        num_workers=tc.num_workers, drop_last=True, persistent_workers=tc.num_workers > 0)

    model = build_network(cfg).to(dev)
    if init is not None and ckpt is None:
        init_ckpt = read_checkpoint(Path(init))
        check_compatible(checkpoint_config(init_ckpt, str(init)), cfg, str(init))
        load_weights(model, init_ckpt, str(init))
    loss_fn = TuneppLoss(cfg.loss)
    optim = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.epochs * tc.iters_per_epoch
    sched = build_scheduler(optim, total_steps, tc.warmup_epochs * tc.iters_per_epoch, tc.schedule)
    use_amp = tc.amp and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, best_dice, best_epoch = 0, -math.inf, -1
    if ckpt is not None:
        load_weights(model, ckpt, str(last_path))
        try:
            optim.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # e.g. a last.pt from before a parameter was retired (without_retired)
            raise TuneppError(f"{last_path}: its optimizer state does not fit this network's parameters "
                              f"({str(e).splitlines()[0][:120]}); start a new run, or fine-tune from its "
                              "weights") from None
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        best_dice, best_epoch = float(ckpt.get("best_dice", -math.inf)), int(ckpt.get("best_epoch", -1))
        if is_main:
            console.print(f"resuming {out} at epoch {start_epoch + 1}/{tc.epochs} (best Dice {best_dice:.4f})")
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if world > 1 else model

    log = _MetricsLog(out)
    t0 = time.perf_counter()
    epoch = start_epoch

    def save_last(ep: int) -> None:
        if is_main:
            save_checkpoint(last_path, model, cfg, epoch=ep, best_dice=best_dice, best_epoch=best_epoch,
                            optimizer=optim.state_dict(), scheduler=sched.state_dict())

    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}  val Dice {task.fields[dice]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not is_main)
    try:
        with progress:
            task = progress.add_task("train", total=(tc.epochs - start_epoch) * tc.iters_per_epoch,
                                     epoch=f"{start_epoch + 1}/{tc.epochs}", loss=float("nan"),
                                     dice="-" if best_epoch < 0 else f"{best_dice:.4f}")
            for epoch in range(start_epoch, tc.epochs):
                model.train()
                dataset.set_epoch(epoch)
                loss_fn.set_epoch(epoch)
                if sampler is not None:
                    sampler.set_epoch(epoch)
                sums: dict[str, float] = {}
                n = 0
                for x, y, s in loader:
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                        outp = net(x)
                    terms = loss_fn(outp, y, structure=s if s.numel() else None)
                    optim.zero_grad(set_to_none=True)
                    scaler.scale(terms["total"]).backward()
                    scaler.unscale_(optim)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    scaler.step(optim)
                    scaler.update()
                    sched.step()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    n += 1
                    progress.update(task, advance=1, loss=sums["total"] / n, epoch=f"{epoch + 1}/{tc.epochs}")
                row: dict[str, Any] = {"epoch": epoch + 1, "lr": optim.param_groups[0]["lr"],
                                       "seconds": round(time.perf_counter() - t0, 2)}
                row.update({f"loss_{k}": v / max(n, 1) for k, v in sums.items()})
                if is_main and ((epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs):
                    row.update(validate(model, val_data, cfg, dev))
                    if row["val_dice"] > best_dice:
                        best_dice, best_epoch = row["val_dice"], epoch + 1
                        save_checkpoint(best_path, model, cfg, epoch=epoch + 1, best_dice=best_dice,
                                        best_epoch=best_epoch)
                    progress.update(task, dice=f"{row['val_dice']:.4f} (best {best_dice:.4f})")
                if is_main:
                    log.append(row)
                save_last(epoch + 1)
    except KeyboardInterrupt:
        save_last(epoch)
        if is_main:
            console.print(f"[yellow]interrupted: saved {last_path} (epoch {epoch}); continue with --resume")
        return TrainResult(out, epoch, best_dice, best_epoch, time.perf_counter() - t0, interrupted=True, rank=rank)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(out, tc.epochs, best_dice, best_epoch, time.perf_counter() - t0, rank=rank)
