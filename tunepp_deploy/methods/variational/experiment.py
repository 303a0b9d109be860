"""Posterior-width study: does the objective let the variational posterior learn its width?

Behind docs/results/variational_posterior.md. Per variant (a set of :class:`~.train.VariationalSettings`
overrides, e.g. the old ``objective="dice"`` against the new ``"nll"``) and per run seed: train on
phantoms generated in memory (the data are fixed, ``generate_case`` with ``default_rng([11, i])`` for
training and ``[12, i]`` for validation; the run seed sets initialisation and crops), then record

* the posterior widths (:func:`~.posterior.sigma_summary`: sigma mean / median / 5-95 % per layer),
* validation Dice of the posterior mean (:func:`~.validate.validation_dice`) and the S-sample
  uncertainty scores (:func:`~.validate.validation_uncertainty`),
* the training time (wall and process CPU seconds, with the torch thread count);

and once, :func:`log_var_gradients`: how large the data term's and the KL's gradients on
``log sigma^2`` are at the start of training.

:func:`summarise` gives mean and a 95 % t-interval over seeds per variant. Run as
``python -m tunepp_deploy.methods.variational.experiment --out results.json`` (CPU; the defaults are
the documented run).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunepp_deploy.config.load import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import CropDataset, LoadedCase
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.preprocess import normalize_intensity
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.methods.variational.build import build_variational
from tunepp_deploy.methods.variational.elbo import elbo_loss
from tunepp_deploy.methods.variational.posterior import sigma_summary
from tunepp_deploy.methods.variational.train import VariationalSettings, train_variational
from tunepp_deploy.methods.variational.validate import validation_dice, validation_uncertainty
from tunepp_deploy.metrics.intervals import mean_ci95

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "phantom.yaml"
#: Half the phantom config's resolution (same physical extent): the study fits in CPU minutes.
OVERRIDES: dict[str, Any] = {"data.crop_size": [32, 32, 16], "data.spacing": [4.0, 4.0, 5.0]}
SHAPE, SPACING = (32, 32, 24), (4.0, 4.0, 5.0)
#: The documented comparison (docs/results/variational_posterior.md; its single-seed rows B, C, E, G
#: and W are ``--variants`` runs of the same entry point).
VARIANTS: dict[str, dict[str, Any]] = {
    "A dice lr1": {"objective": "dice", "log_var_lr_scale": 1.0},
    "D dice lr10": {"objective": "dice", "log_var_lr_scale": 10.0},
    "F dice lr30": {"objective": "dice", "log_var_lr_scale": 30.0},
}


def phantom_cases(cfg: TuneppConfig, n: int, stream: int) -> list[LoadedCase]:
    """``n`` phantoms from ``default_rng([stream, i])``, intensity-normalised like training data."""
    out = []
    for i in range(n):
        c = generate_case(np.random.default_rng([stream, i]), shape=SHAPE, spacing=SPACING)
        out.append(LoadedCase(f"p{stream}_{i}", normalize_intensity(c.image, cfg.data.intensity), c.labels))
    return out


def run_one(cfg: TuneppConfig, train: list[LoadedCase], val: list[LoadedCase], settings: VariationalSettings,
            samples: int) -> dict[str, Any]:
    """Train once and score (module docstring)."""
    t0, c0 = time.perf_counter(), time.process_time()
    run = train_variational(cfg, train, settings)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    widths = [s.as_dict() for s in sigma_summary(run.net)]
    res: dict[str, Any] = {"settings": {**asdict(settings), "widths": list(settings.widths)},
                           "train_seconds": seconds, "train_cpu_seconds": cpu, "torch_threads": torch.get_num_threads(),
                           "sigma": widths, "final_ce": float(np.mean([h["ce"] for h in run.history[-20:]]))}
    res.update(validation_dice(run.net, cfg, val))
    res.update(validation_uncertainty(run.net, cfg, val, samples=samples, seed=settings.seed))
    return res


def log_var_gradients(cfg: TuneppConfig, cases: list[LoadedCase], objective: str, widths: Sequence[int] = (8, 16, 32),
                      log_var_init: float = -10.0, seed: int = 0, batch: int = 2) -> dict[str, float]:
    """Mean ``|d/d log sigma^2|`` per weight of the data term alone and of the KL term alone, at the
    start of training (one minibatch of ``batch`` crops, same local-reparameterisation noise): which
    of the two drives the posterior width."""
    torch.manual_seed(seed)
    net = build_variational("unet", cfg.model.in_channels, cfg.data.num_classes, widths).train()
    net.init_log_var(log_var_init)
    ds = CropDataset(cases, cfg.data, length=batch, seed=seed)
    items = [ds[i] for i in range(batch)]
    x = torch.stack([torch.as_tensor(it[0]) for it in items])
    y = torch.stack([torch.as_tensor(it[1]) for it in items])
    lvs = [m.weight_log_var for m in net.bayes_layers()]
    voxels = int(np.mean([c.label.size for c in cases]))
    zero = torch.zeros(())
    data, _ = elbo_loss(net(x), y, zero, len(cases), batch, voxels, "voxel", objective)  # type: ignore[arg-type]
    g_data = torch.cat([g.flatten() for g in torch.autograd.grad(data, lvs)])
    g_kl = torch.cat([g.flatten() for g in torch.autograd.grad(net.kl() / float(len(cases) * voxels), lvs)])
    return {"data": float(g_data.abs().mean()), "kl": float(g_kl.abs().mean()),
            "ratio_kl_to_data": float(g_kl.abs().mean() / g_data.abs().mean())}


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width of the 95 % t-interval)``; the half-width is NaN for fewer than 2 values."""
    mean, half, _ = mean_ci95(values)
    return mean, float("nan") if half is None else half


SCORES = ("val_dice", "mc_dice", "fg_entropy", "fg_mutual_info", "error_auroc_near_fg", "error_rate_near_fg")


def summarise(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean and 95 % CI over seeds of :data:`SCORES` and of each layer's sigma statistics."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        row: dict[str, Any] = {k: mean_ci([r[k] for r in rs]) for k in SCORES}
        layers = [s["layer"] for s in rs[0]["sigma"]]
        row["sigma"] = {
            layer: {k: mean_ci([r["sigma"][i][k] for r in rs]) for k in ("mean", "median", "p05", "p95")}
            for i, layer in enumerate(layers)
        }
        row["train_seconds"] = mean_ci([r["train_seconds"] for r in rs])
        out[name] = row
    return out


def run_experiment(
    variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], iters: int, n_train: int = 8, n_val: int = 4,
    widths: Sequence[int] = (8, 16, 32), samples: int = 8, out: Path | None = None,
) -> dict[str, Any]:
    """All variants x seeds (module docstring) -> ``{"runs", "summary", "setup"}``, also written to
    ``out`` (JSON) after every run, so an interrupted study keeps what it finished."""
    if not seeds or iters < 1 or n_train < 1 or n_val < 1:
        raise TuneppError("need >= 1 seed, iteration, training and validation case")
    cfg = load_config(CONFIG, OVERRIDES)
    train, val = phantom_cases(cfg, n_train, 11), phantom_cases(cfg, n_val, 12)
    grads = {o: log_var_gradients(cfg, train, o, widths) for o in ("dice", "nll")}
    setup = {"log_var_gradients_at_init": grads,
             "shape": SHAPE, "spacing": SPACING, "overrides": OVERRIDES, "n_train": n_train, "n_val": n_val,
             "iters": iters, "seeds": list(seeds), "samples": samples, "widths": list(widths)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, over in variants.items():
        for seed in seeds:
            settings = replace(VariationalSettings(widths=tuple(widths), iters=iters, seed=seed), **over)
            runs.setdefault(name, []).append(run_one(cfg, train, val, settings, samples))
            r = runs[name][-1]
            print(f"{name} seed {seed}: dice {r['val_dice']:.3f} sigma median {r['sigma'][-1]['median']:.4g} "
                  f"({r['train_seconds']:.0f} s)", flush=True)
            if out is not None:
                out.write_text(json.dumps({"setup": setup, "runs": runs, "summary": summarise(runs)}, indent=1))
    return {"setup": setup, "runs": runs, "summary": summarise(runs)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", type=str, default=None, help="JSON {name: settings overrides}")
    a = ap.parse_args(argv)
    variants = json.loads(a.variants) if a.variants else VARIANTS
    torch.set_num_threads(1)
    run_experiment(variants, a.seeds, a.iters, out=a.out)


if __name__ == "__main__":
    main()


__all__ = ["OVERRIDES", "SCORES", "VARIANTS", "log_var_gradients", "mean_ci", "phantom_cases", "run_experiment",
           "run_one", "summarise"]
