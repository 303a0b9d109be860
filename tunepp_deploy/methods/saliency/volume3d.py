"""A small 3D saliency comparison on whole phantom volumes, with seeds (the CPU-sized stand-in for
the saliency rows of ``tunepp compare``).

``tunepp compare`` runs the saliency predictor on one trained TUNE++ backbone (40 phantoms of
64x64x48, hours of CPU training), so it has one training seed and no interval. This module repeats
the same *measurement* — :class:`~tunepp_deploy.predictors.saliency.SaliencyPredictor` on whole test
volumes, scored with the comparison's own per-case metrics
(:func:`tunepp_deploy.compare.evaluate.case_metrics`: U-ECE fg, AUROC, AURC) — at a size that fits a
few CPU minutes per seed, so that it can be repeated over seeds:

* **data**: ``cases`` phantoms (:func:`tunepp_deploy.data.phantom.generate_case`, generator
  ``[data_seed, i]``) of ``shape`` voxels at ``spacing`` mm (the default 32x32x24 at 4x4x5 mm is the
  standard phantom's field of view at half resolution), CT-windowed like the 3D pipeline;
* **per seed**: a seeded split (``test_cases`` held out), a small TUNE++ (the phantom config with
  ``widths``, one TUPA block per stage, dropout sites ``dec1, dec0`` as in the phantom config)
  trained from the seed with Dice + CE on random full-width slabs of ``window`` (no topology loss and
  no deep supervision: it is the Grad-CAM target that is compared, not the training recipe);
* **maps**: for every variant of :data:`VARIANTS` the saliency predictor with ``S`` mask sets drawn
  from the seed (the same masks in every variant, so the predictive variance is the same map), the
  three maps of the predictor plus a **noise control** ``fuse(V_pred, N, w)`` with ``N`` i.i.d.
  uniform noise per voxel (as in the 2D experiment, :mod:`.experiment`: U-ECE fg rewards any spread-out
  added term, so fused beating ``V_pred`` alone is only evidence for saliency where it also beats the
  noise);
* **per seed score**: the mean over the test volumes of each per-case metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tunepp_deploy.compare.evaluate import case_metrics
from tunepp_deploy.config.load import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.preprocess import normalize_intensity
from tunepp_deploy.errors import ConfigError
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.methods.saliency.experiment import NOISE_STREAM, t_ci95
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT, fuse
from tunepp_deploy.methods.saliency.gradcam import BOTTLENECK, LAST_CONV
from tunepp_deploy.model import TUNEPP, build_network
from tunepp_deploy.predictors.saliency import SaliencyPredictor
from tunepp_deploy.predictors.settings import RunOptions, resolve

#: Compared Grad-CAM set-ups: name -> (target, per_class). ``before`` is the toolkit's first version
#: (bottleneck, one summed-score map), ``after`` the seed's (after the last dropout site, per class).
VARIANTS: dict[str, tuple[str, bool]] = {"before": (BOTTLENECK, False), "after": (LAST_CONV, True)}
#: Maps scored per variant (the predictor's three and the noise control).
MAPS = ("fused", "saliency_variance", "predictive_variance", "noise_control")
#: Per-case metrics kept (compare.evaluate names); u_ece_fg and aurc lower is better, auroc higher.
METRICS = ("u_ece_fg", "auroc", "aurc")
LOWER_IS_BETTER = frozenset({"u_ece_fg", "aurc"})
#: ``progress(seed, stage, done, total)``; stages ``train`` (iterations) and ``predict`` (volumes).
Progress = Callable[[int, str, int, int], None]


@dataclass(frozen=True)
class Volume3dSettings:
    """Sizes and schedule of :func:`run_volume3d` (module docstring)."""

    cases: int = 8
    test_cases: int = 2
    shape: tuple[int, int, int] = (32, 32, 24)
    spacing: tuple[float, float, float] = (4.0, 4.0, 5.0)
    window: tuple[int, int, int] = (32, 32, 16)
    widths: tuple[int, ...] = (8, 16, 32)
    iters: int = 300
    batch: int = 2
    lr: float = 3e-3
    samples: int = 8
    weight: float = DEFAULT_FUSION_WEIGHT
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0


def _check(s: Volume3dSettings) -> None:
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or min(s.seeds) < 0:
        raise ConfigError(f"3D saliency: seeds must be distinct and >= 0, got {s.seeds}")
    if not 1 <= s.test_cases < s.cases:
        raise ConfigError(f"3D saliency: need 1 <= test_cases < cases, got {s.test_cases} of {s.cases}")
    if s.samples < 2 or s.iters < 1:
        raise ConfigError(f"3D saliency: need samples >= 2 and iters >= 1, got {s.samples}, {s.iters}")
    if any(w > a for w, a in zip(s.window, s.shape, strict=True)):
        raise ConfigError(f"3D saliency: window {s.window} larger than the volumes {s.shape}")


def small_config(s: Volume3dSettings) -> TuneppConfig:
    """The phantom config with the module docstring's small network and window."""
    levels = len(s.widths)
    return load_config("phantom", {
        "data.crop_size": list(s.window), "data.spacing": list(s.spacing), "model.widths": list(s.widths),
        "model.depths": [1] * levels, "model.decoder_depths": [1] * (levels - 1), "model.proj_tokens": 16,
        "infer.window": list(s.window)})


@dataclass
class Volumes:
    """Network-ready phantoms: ``images [N, D, H, W]`` float32 in [0, 1], ``labels`` uint8."""

    images: np.ndarray
    labels: np.ndarray


def phantom_volumes(s: Volume3dSettings, cfg: TuneppConfig) -> Volumes:
    """``s.cases`` phantoms from generators ``[s.data_seed, i]``, CT-windowed as the 3D pipeline does."""
    imgs, labs = [], []
    for i in range(s.cases):
        c = generate_case(np.random.default_rng([s.data_seed, i]), shape=s.shape, spacing=s.spacing)
        imgs.append(normalize_intensity(c.image, cfg.data.intensity).astype(np.float32))
        labs.append(c.labels.astype(np.uint8))
    return Volumes(np.stack(imgs), np.stack(labs))


def split(cases: int, test_cases: int, seed: int) -> np.ndarray:
    """Boolean test mask over the cases: ``test_cases`` of them, drawn from ``default_rng(seed)``."""
    test = np.zeros(cases, bool)
    test[np.random.default_rng(seed).permutation(cases)[:test_cases]] = True
    return test


def train_small_tunepp(cfg: TuneppConfig, vols: Volumes, seed: int, s: Volume3dSettings,
                       on_iter: Callable[[int], None] | None = None) -> TUNEPP:
    """Fit the small TUNE++ with Dice + CE on random slabs of ``s.window`` (init and draws from ``seed``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    net.train()
    win = s.window
    for i in range(s.iters):
        xs, ys = [], []
        for _ in range(s.batch):
            j = int(rng.integers(0, len(vols.images)))
            o = [int(rng.integers(0, a - w + 1)) for a, w in zip(s.shape, win, strict=True)]
            sl = tuple(slice(a, a + w) for a, w in zip(o, win, strict=True))
            xs.append(vols.images[j][sl][None])
            ys.append(vols.labels[j][sl].astype(np.int64))
        dice, ce = dice_ce_loss(net(torch.from_numpy(np.stack(xs)), with_aux=False).logits,
                                torch.from_numpy(np.stack(ys)))
        opt.zero_grad(set_to_none=True)
        (dice + ce).backward()
        opt.step()
        if on_iter is not None:
            on_iter(i + 1)
    return net.eval()


def noise_volume(seed: int, case: int, shape: Sequence[int]) -> torch.Tensor:
    """The noise control's ``N`` for one test volume: uniform [0, 1) from ``[NOISE_STREAM, seed, case]``."""
    return torch.from_numpy(np.random.default_rng([NOISE_STREAM, seed, case]).random(tuple(shape)))


def seed_row(vols: Volumes, cfg: TuneppConfig, seed: int, s: Volume3dSettings,
             progress: Progress | None = None) -> dict[str, Any]:
    """Split, train and score every variant of one seed (module docstring)."""
    report = progress or (lambda *_: None)
    t0 = time.perf_counter()
    test = split(s.cases, s.test_cases, seed)
    train_vols = Volumes(vols.images[~test], vols.labels[~test])
    net = train_small_tunepp(cfg, train_vols, seed, s, on_iter=lambda i: report(seed, "train", i, s.iters))
    train_s = time.perf_counter() - t0
    settings = resolve(cfg, RunOptions(samples=s.samples, seed=seed, overlap=0.5, max_batch=4))
    row: dict[str, Any] = {"seed": seed, "test_cases": [int(i) for i in np.flatnonzero(test)],
                           "train_seconds": train_s, "variants": {}}
    for name, (target, per_class) in VARIANTS.items():
        t = time.perf_counter()
        pred = SaliencyPredictor(net, cfg, settings, torch.device("cpu"), target, s.weight, per_class=per_class)
        per_map: dict[str, list[dict[str, float]]] = {m: [] for m in MAPS}
        dice = []
        for k, i in enumerate(np.flatnonzero(test)):
            p = pred.predict(vols.images[i])
            probs, labels = p.probs.numpy(), vols.labels[i]
            maps = {m: p.maps[m] for m in MAPS[:3]}
            pv = p.maps["predictive_variance"].double()
            maps["noise_control"] = fuse(pv[None], noise_volume(seed, int(i), pv.shape)[None], s.weight)[0]
            for m, u in maps.items():
                per_map[m].append(case_metrics(probs, u.numpy(), labels))
            dice.append(per_map["fused"][-1]["dice"])
            report(seed, "predict", k + 1, s.test_cases)
        row["variants"][name] = {
            "target": target, "per_class": per_class,
            "maps": {m: {q: float(np.nanmean([c[q] for c in v])) for q in METRICS} for m, v in per_map.items()},
            "dice": float(np.mean(dice)), "seconds": time.perf_counter() - t}
        net.requires_grad_(True)  # the predictor froze it; the next variant freezes it again
    row["seconds"] = time.perf_counter() - t0
    return row


def _stat(values: Sequence[float]) -> dict[str, float | int | None]:
    v = [float(x) for x in values if np.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None, "ci95": t_ci95(v), "n": len(v)}


def summarize_3d(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds of every map's metrics, and of the paired per-seed
    differences fused - predictive variance alone and fused - noise control, per variant."""
    out: dict[str, Any] = {}
    for name in VARIANTS:
        vs = [r["variants"][name] for r in rows]
        out[name] = {
            "maps": {m: {q: _stat([v["maps"][m][q] for v in vs]) for q in METRICS} for m in MAPS},
            "fused_minus_predictive": {q: _stat([v["maps"]["fused"][q] - v["maps"]["predictive_variance"][q]
                                                 for v in vs]) for q in METRICS},
            "fused_minus_noise": {q: _stat([v["maps"]["fused"][q] - v["maps"]["noise_control"][q] for v in vs])
                                  for q in METRICS},
            "dice": _stat([v["dice"] for v in vs]),
        }
    return out


def run_volume3d(s: Volume3dSettings | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Every seed of ``s``: per-seed rows and their summary (module docstring)."""
    s = s or Volume3dSettings()
    _check(s)
    cfg = small_config(s)
    t0 = time.perf_counter()
    vols = phantom_volumes(s, cfg)
    rows = [seed_row(vols, cfg, seed, s, progress) for seed in s.seeds]
    return {"settings": asdict(s), "variants": {k: {"target": t, "per_class": pc} for k, (t, pc) in VARIANTS.items()},
            "per_seed": rows, "summary": summarize_3d(rows), "threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - t0}


__all__ = ["MAPS", "METRICS", "VARIANTS", "Volume3dSettings", "Volumes", "noise_volume", "phantom_volumes",
           "run_volume3d", "seed_row", "small_config", "split", "summarize_3d", "train_small_tunepp"]
