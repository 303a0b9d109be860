"""The seed's 2D comparison: predictive variance alone vs saliency variance vs their fusion.

:func:`run_saliency_comparison` is the original single-run version (phantom slices, one ``w``).
:func:`run_saliency_experiment` is the reproduction behind ``tunepp experiment saliency``:

* **data** (:mod:`.data2d`): 2D phantom slices or an ISIC-style folder; per seed a seeded
  train/test split over cases (phantoms) or images (ISIC);
* **per seed**: train :class:`~tunepp_deploy.methods.unet2d.UNet2d` (Dice + CE, Adam; init and
  batches from the seed), then on the test images S MC samples (dropout masks from the seed) with
  Seg-Grad-CAMs per sample (:func:`~.fusion.mc_saliency`) on ``settings.target`` — by default the
  activation after the last dropout site, one map per foreground class (:mod:`.gradcam`; the first
  version's bottleneck target and summed score stay selectable, ``target="bottleneck"``,
  ``per_class=False``) — **one** MC run per seed; every fusion weight ``w`` is then
  ``fuse(V_pred, V_sal, w)`` of the same two maps, so the sweep differs only in ``w``, not in
  training or sampling noise;
* **scores**, pooled over the test images (:func:`~.fusion.uncertainty_calibration`): foreground
  ECE of ``1 - norm(U)`` over the union of predicted and true foreground pixels, pixel-error AUROC
  over all pixels and over that foreground union; plus pixel accuracy and mean foreground Dice of
  the segmentation (argmax of the MC mean).

``w = 1`` is predictive variance alone and ``w = 0`` saliency variance alone, each **min-max
normalised per image** as the fusion normalises its inputs — so the sweep compares maps on one
scale and the only change along it is the mixing. The raw predictive variance (pooled without the
per-image normalisation, as :func:`run_saliency_comparison` scores it) is scored as well, to show
what that normalisation alone costs; ``w = 1`` is always scored because the verdict compares against
it.

**Noise control.** For every ``w < 1`` the experiment also scores ``w norm(V_pred) + (1 - w) norm(N)``
with ``N`` i.i.d. uniform [0, 1) noise per pixel, the same shape as ``V_sal`` and min-max normalised
per image exactly as ``V_sal`` is (it goes through the same :func:`~.fusion.fuse`). Why: fg-ECE reads
``1 - norm(U)`` as a confidence, and ``V_pred`` alone is near zero on most pixels, so almost every
foreground pixel gets confidence near 1 while the foreground accuracy is lower; *any* spread-out
added term pulls that "confidence" down toward the accuracy and lowers fg-ECE — a one-off check
found uniform noise did so as much as or more than real saliency. So "fused has lower fg-ECE than
``V_pred`` alone" is not evidence that saliency carries information. ``N`` is drawn from
``numpy.random.default_rng([NOISE_STREAM, seed])`` (:func:`noise_map`): reproducible per run seed,
and a stream separate from the split / init / batch / dropout-mask draws, which use ``seed`` itself.

**Best-w comparison** (:func:`best_w`, the verdict's summary). Comparing fused and noise control at
the *same* ``w`` makes the answer depend on which ``w`` is matched: fused and noise reach their
lowest fg-ECE at different ``w`` (noise needs a larger ``w`` to dilute it), so at ``w = 0.5`` fused
can beat noise while noise at ``w = 0.75`` is as good as fused at its best. So per seed and metric
each map gets its **own best** ``w`` over the same ``w < 1`` grid of the sweep (``w = 0`` included
when swept: saliency alone vs noise alone), and the verdict says fusion *helps* on a metric only
where fused-at-its-best beats both ``V_pred`` alone (``w = 1``) and noise-at-its-best. That ``w`` is
picked on the test images themselves — an oracle ``w``, optimistic; there is no separate validation
split at this size (a handful of test cases per seed). The optimism is the same for both maps, each
choosing from the same grid on the same pixels, which is why the noise control at its best ``w`` is a
fair control for fused at its best ``w`` — but the absolute best-w numbers are not what a ``w`` fixed
in advance would get. The matched-``w`` comparisons stay in the verdict as detail.

Also :func:`tunepp_forward_sample` for the same maps on 3D TUNE++ (sample s = mask set s).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunepp_deploy.errors import ConfigError
from tunepp_deploy.infer.masks import SampleMasks, sample_masks
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.methods.saliency.data2d import Data2d, split_groups
from tunepp_deploy.methods.saliency.fusion import (
    DEFAULT_FUSION_WEIGHT,
    fuse,
    mc_saliency,
    uncertainty_calibration,
)
from tunepp_deploy.methods.saliency.gradcam import DEFAULT_TARGET, resolve_target
from tunepp_deploy.methods.saliency.phantom2d import phantom_slices
from tunepp_deploy.methods.unet2d import UNet2d
from tunepp_deploy.metrics.intervals import t_half_width
from tunepp_deploy.metrics.overlap import dice_per_class
from tunepp_deploy.model import TUNEPP

#: Which pixels the foreground ECE counts (the definition in :mod:`.fusion`), stated in every result.
ECE_PIXELS = "union of predicted and true foreground (pred > 0 or label > 0), pooled over the test images"
REFERENCE_W = 1.0
METRICS = ("fg_ece", "auroc", "fg_auroc")
#: Metrics where a lower value is better (the others: higher is better).
LOWER_IS_BETTER = frozenset({"fg_ece"})
_METRIC_NAMES = {"fg_ece": "fg-ECE", "auroc": "AUROC", "fg_auroc": "fg-AUROC"}
#: Second entropy word of the noise control's generator, ``default_rng([NOISE_STREAM, seed])`` ("nois").
NOISE_STREAM = 0x6E6F6973
NOISE_CONTROL = ("i.i.d. uniform [0, 1) noise N per test pixel from numpy.random.default_rng([NOISE_STREAM, seed]), "
                 "NOISE_STREAM = 0x6E6F6973, same shape as V_sal and min-max normalised per image like it; scored "
                 "as w*norm(V_pred) + (1-w)*norm(N) for every w < 1. It controls for the fg-ECE artefact: fg-ECE "
                 "reads 1 - norm(U) as a confidence, so any spread-out added term lowers it, informative or not")
#: ``progress(seed, stage, done, total)``; stages ``train`` (iterations), ``mc`` (test chunks), ``score``.
Progress = Callable[[int, str, int, int], None]
#: One map's scores from a per-seed row.
Getter = Callable[[dict[str, Any]], dict[str, float]]


def tunepp_forward_sample(net: TUNEPP, masks: SampleMasks) -> Callable[[Tensor, int], Tensor]:
    """``(x, s) -> logits`` of TUNE++ under sample ``s``'s dropout masks (Grad-CAM-able)."""
    return lambda x, s: net(x, masks.rows([s], x.shape[0]), with_aux=False).logits


def unet2d_forward_sample(net: UNet2d, masks: SampleMasks) -> Callable[[Tensor, int], Tensor]:
    """``(x, s) -> logits`` of the 2D U-Net under sample ``s``'s dropout masks."""
    return lambda x, s: net(x, masks.rows([s], x.shape[0]))


def train_unet2d(images: np.ndarray, labels: np.ndarray, num_classes: int, iters: int, seed: int = 0,
                 widths: tuple[int, ...] = (16, 32, 64), batch: int = 8, lr: float = 3e-3,
                 on_iter: Callable[[int], None] | None = None) -> UNet2d:
    """Fit a 2D U-Net on random mini-batches of whole images (``on_iter(i)`` after iteration i, 1-based)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet2d(images.shape[1], num_classes, widths)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for i in range(iters):
        idx = rng.integers(0, len(images), size=min(batch, len(images)))
        x, y = torch.from_numpy(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))
        dice, ce = dice_ce_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        (dice + ce).backward()
        opt.step()
        if on_iter is not None:
            on_iter(i + 1)
    return net.eval()


def run_saliency_comparison(
    cases: int = 6, test_cases: int = 2, iters: int = 150, samples: int = 10, w: float = DEFAULT_FUSION_WEIGHT,
    seed: int = 0, shape: tuple[int, int, int] = (64, 64, 48), widths: tuple[int, ...] = (16, 32, 64),
    target: str = DEFAULT_TARGET, per_class: bool = True,
) -> dict[str, Any]:
    """Train on ``cases - test_cases`` phantoms' slices, compare raw V_pred / V_sal / fused on the rest
    (Grad-CAM on ``target``, per class unless ``per_class=False``)."""
    imgs, labs, idx = phantom_slices(cases, seed=seed, shape=shape)
    train = idx < cases - test_cases
    net = train_unet2d(imgs[train], labs[train], 5, iters, seed, widths)
    masks = sample_masks(net.dropout_sites(), (1, 1, 1), samples, seed)
    fwd = unet2d_forward_sample(net, masks)
    x, y = torch.from_numpy(imgs[~train]), labs[~train]
    maps = mc_saliency(fwd, resolve_target(net, target), x, samples, w, per_class=per_class)
    probs = maps.mean_probs.numpy().transpose(1, 0, 2, 3)  # [K, N, H, W]
    pred = probs.argmax(0)
    out: dict[str, Any] = {"test_slices": int((~train).sum()), "train_slices": int(train.sum()), "samples": samples,
                           "fusion_weight": w, "iters": iters, "target": target, "per_class": per_class,
                           "pixel_accuracy": float((pred == y).mean()),
                           "ece_voxels": "union of predicted and true foreground"}
    for name, u in (("predictive_variance", maps.predictive_variance), ("saliency_variance", maps.saliency_variance),
                    ("fused", maps.fused)):
        out[name] = uncertainty_calibration(u.numpy(), probs, y)
    return out


# --------------------------------------------------------------------------- the multi-seed experiment


@dataclass(frozen=True)
class SaliencySettings:
    """Schedule and sweep of :func:`run_saliency_experiment` (CLI flags map 1:1)."""

    iters: int = 300
    samples: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    widths: tuple[int, ...] = (16, 32, 64)
    batch: int = 8
    lr: float = 3e-3
    test_fraction: float = 1 / 3
    chunk: int = 16  # test images per MC + Grad-CAM batch (bounds the backward's memory, not the result)
    target: str = DEFAULT_TARGET  # Grad-CAM activation (gradcam.resolve_target); "bottleneck" = first version
    per_class: bool = True  # one Grad-CAM per foreground class (False: one map of the summed score)


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Sorted unique weights with the reference ``w = 1`` added; :class:`ConfigError` outside [0, 1]."""
    if not weights:
        raise ConfigError("--weights: give at least one fusion weight")
    for w in weights:
        if not (math.isfinite(w) and 0.0 <= w <= 1.0):
            raise ConfigError(f"--weights: fusion weight {w:g} is outside [0, 1]")
    return tuple(sorted({float(w) for w in weights} | {REFERENCE_W}))


def check_settings(s: SaliencySettings) -> SaliencySettings:
    """Validated copy of ``s`` (weights via :func:`check_weights`; seeds unique and non-empty)."""
    if not s.seeds:
        raise ConfigError("--seeds: give at least one seed")
    if min(s.seeds) < 0:
        raise ConfigError(f"--seeds: seeds must be >= 0 (numpy generators), got {min(s.seeds)}")
    if len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"--seeds: repeated seed in {','.join(map(str, s.seeds))}")
    if s.iters < 1 or s.samples < 2:
        raise ConfigError(f"need iters >= 1 and samples >= 2 (a variance over samples), got {s.iters}, {s.samples}")
    if not 0.0 < s.test_fraction < 1.0:
        raise ConfigError(f"test fraction {s.test_fraction} must be in (0, 1)")
    return SaliencySettings(**{**asdict(s), "weights": check_weights(s.weights), "seeds": tuple(s.seeds)})


@dataclass
class SeedMaps:
    """One seed's test predictions and maps: ``probs [K, N, H, W]``, ``labels``, ``V_pred``/``V_sal [N, H, W]``."""

    seed: int
    test: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    predictive_variance: Tensor
    saliency_variance: Tensor


def train_seed_net(data: Data2d, seed: int, s: SaliencySettings, progress: Progress | None = None) -> UNet2d:
    """The network :func:`seed_maps` trains for ``seed`` (its split, init and batches), on its own so
    that several Grad-CAM set-ups can share one training (:mod:`.target_study`)."""
    test = split_groups(data.groups, seed, s.test_fraction)
    report = progress or (lambda *_: None)
    return train_unet2d(data.images[~test], data.labels[~test], data.num_classes, s.iters, seed, s.widths, s.batch,
                        s.lr, on_iter=lambda i: report(seed, "train", i, s.iters))


def seed_maps(data: Data2d, seed: int, s: SaliencySettings, progress: Progress | None = None,
              net: UNet2d | None = None) -> SeedMaps:
    """Split, train (unless ``net``, which must be :func:`train_seed_net`'s for the same data, seed and
    schedule) and run the one MC + Grad-CAM pass of ``seed`` (module doc)."""
    test = split_groups(data.groups, seed, s.test_fraction)
    report = progress or (lambda *_: None)
    if net is None:
        net = train_seed_net(data, seed, s, progress)
    masks = sample_masks(net.dropout_sites(), (1, 1, 1), s.samples, seed)
    fwd = unet2d_forward_sample(net, masks)
    x = torch.from_numpy(data.images[test])
    chunks = range(0, len(x), s.chunk)
    probs, pv, sv = [], [], []
    layer = resolve_target(net, s.target)
    for j, start in enumerate(chunks):
        m = mc_saliency(fwd, layer, x[start:start + s.chunk], s.samples, per_class=s.per_class)
        probs.append(m.mean_probs)
        pv.append(m.predictive_variance)
        sv.append(m.saliency_variance)
        report(seed, "mc", j + 1, len(chunks))
    return SeedMaps(seed, test, torch.cat(probs).numpy().transpose(1, 0, 2, 3), data.labels[test], torch.cat(pv),
                    torch.cat(sv))


def noise_map(seed: int, like: Tensor) -> Tensor:
    """The noise control's ``N``: i.i.d. uniform [0, 1) per pixel, shape and dtype of ``like`` (module doc).

    Drawn from ``default_rng([NOISE_STREAM, seed])`` so two runs of one seed get the same ``N`` and the
    draw is independent of the split / init / mask draws that use ``seed`` directly.
    """
    rng = np.random.default_rng([NOISE_STREAM, seed])
    return torch.from_numpy(rng.random(tuple(like.shape))).to(like.dtype)


def score_maps(maps: SeedMaps, weights: Sequence[float], num_classes: int) -> dict[str, Any]:
    """Segmentation quality and, per ``w``, :func:`uncertainty_calibration` of ``fuse(V_pred, V_sal, w)``;
    for ``w < 1`` also of the noise control ``fuse(V_pred, N, w)`` (:func:`noise_map`)."""
    pred = maps.probs.argmax(0)
    region = (pred > 0) | (maps.labels > 0)
    dice = dice_per_class(pred, maps.labels, num_classes)
    out: dict[str, Any] = {
        "pixel_accuracy": float((pred == maps.labels).mean()),
        "dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "dice_per_class": [float(d) for d in dice],
        "fg_pixels": int(region.sum()),
        "fg_error_rate": float((pred != maps.labels)[region].mean()) if region.any() else float("nan"),
        "predictive_variance_raw": uncertainty_calibration(maps.predictive_variance.numpy(), maps.probs, maps.labels),
        "weights": {},
        "noise_control": {},
    }
    noise = noise_map(maps.seed, maps.saliency_variance)
    for w in weights:
        u = fuse(maps.predictive_variance, maps.saliency_variance, w).numpy()
        out["weights"][_wkey(w)] = uncertainty_calibration(u, maps.probs, maps.labels)
        if w < REFERENCE_W:
            un = fuse(maps.predictive_variance, noise, w).numpy()
            out["noise_control"][_wkey(w)] = uncertainty_calibration(un, maps.probs, maps.labels)
    return out


def _wkey(w: float) -> str:
    return f"{w:g}"


def t_ci95(values: Sequence[float]) -> float | None:
    """Half-width of the two-sided 95% Student-t interval of the mean of the finite ``values``; None
    below two values (:func:`tunepp_deploy.metrics.intervals.t_half_width`)."""
    return t_half_width(values)


def _mean_sd(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return {"mean": float(v.mean()) if v.size else None, "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "ci95": t_ci95(list(v)), "n": int(v.size)}


def _label(w: float) -> str:
    if w == REFERENCE_W:
        return "predictive variance alone (w=1)"
    return "saliency variance alone (w=0)" if w == 0.0 else f"fused (w={w:g})"


def _better(x: float, y: float, metric: str) -> bool:
    """``x`` strictly better than ``y`` (NaN is never better)."""
    return x < y if metric in LOWER_IS_BETTER else x > y


def _pairs(per_seed: list[dict[str, Any]], a: Getter, b: Getter, metric: str) -> list[tuple[float, float]]:
    return [(a(r)[metric], b(r)[metric]) for r in per_seed]


def _wins(per_seed: list[dict[str, Any]], a: Getter, b: Getter, metric: str) -> int:
    """Seeds where map ``a`` is strictly better than map ``b`` on ``metric``."""
    return sum(_better(x, y, metric) for x, y in _pairs(per_seed, a, b, metric))


def _mean_diff(per_seed: list[dict[str, Any]], a: Getter, b: Getter, metric: str) -> float:
    """Mean over seeds of ``a - b`` (seeds where either is undefined left out; NaN if none is left)."""
    d = [x - y for x, y in _pairs(per_seed, a, b, metric) if math.isfinite(x) and math.isfinite(y)]
    return float(np.mean(d)) if d else float("nan")


def _beats(per_seed: list[dict[str, Any]], a: Getter, b: Getter, metric: str) -> bool:
    """``a`` beats ``b``: strictly better in a strict majority of all seeds *and* better on the mean difference.

    The majority alone would let 3/5 small wins outvote 2/5 large losses; the mean alone would let one
    outlier seed decide. An undefined number in a seed counts against ``a``.
    """
    diff = _mean_diff(per_seed, a, b, metric)
    return (2 * _wins(per_seed, a, b, metric) > len(per_seed) and math.isfinite(diff)
            and _better(diff, 0.0, metric))


def _compare(per_seed: list[dict[str, Any]], a: Getter, b: Getter, metric: str) -> str:
    """``fg-ECE lower in 2/3 seeds (mean diff +0.0123)`` for map ``a`` vs map ``b`` (diff = a - b).

    The direction word is the metric's better direction, so the count is always "a better than b".
    """
    pairs = [(x, y) for x, y in _pairs(per_seed, a, b, metric) if math.isfinite(x) and math.isfinite(y)]
    name = _METRIC_NAMES[metric]
    if not pairs:
        return f"{name} undefined"
    diff = _mean_diff(per_seed, a, b, metric)
    word = "lower" if metric in LOWER_IS_BETTER else "higher"
    return f"{name} {word} in {_wins(per_seed, a, b, metric)}/{len(pairs)} seeds (mean diff {diff:+.4f})"


def _fused(k: str) -> Getter:
    return lambda r: r["weights"][k]


def _noise(k: str) -> Getter:
    return lambda r: r["noise_control"][k]


def _ws(ws: Sequence[float]) -> str:
    return ", ".join(f"{w:g}" for w in ws) if ws else "none"


def _pick(maps: dict[str, dict[str, float]], grid: Sequence[float], metric: str) -> tuple[float | None, float]:
    """``(w, value)`` of the best defined ``metric`` among ``maps[w]`` for ``w`` in ``grid``.

    Ties go to the first (smallest) ``w`` so the choice is reproducible; ``(None, nan)`` when no ``w``
    has a defined value (then the seed counts against the map in :func:`_beats`, as an undefined number does).
    """
    finite = [(w, maps[_wkey(w)][metric]) for w in grid if math.isfinite(maps[_wkey(w)][metric])]
    if not finite:
        return None, float("nan")
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(finite, key=lambda t: t[1])


def _best(kind: str, grid: Sequence[float]) -> Getter:
    """Getter of each metric's best value over ``grid`` in ``r[kind]`` (``weights`` or ``noise_control``)."""
    return lambda r: {m: _pick(r[kind], grid, m)[1] for m in METRICS}


def _grid(weights: Sequence[float]) -> list[float]:
    """The ``w < 1`` weights both maps choose their best ``w`` from (the noise control exists only there)."""
    return [w for w in weights if w < REFERENCE_W]


def best_w(per_seed: list[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """Per metric and seed: fused's and the noise control's own best ``w < 1`` and values (module doc).

    The record behind the verdict's best-``w`` lines, kept in the JSON so they can be checked seed by
    seed. Each ``w`` is chosen on the test images (an oracle ``w``, optimistic for both maps alike).
    """
    grid = _grid(weights)
    out: dict[str, Any] = {"grid": grid, "metrics": {}}
    for m in METRICS:
        fused = [_pick(r["weights"], grid, m) for r in per_seed]
        noise = [_pick(r["noise_control"], grid, m) for r in per_seed]
        out["metrics"][m] = {"fused_w": [w for w, _ in fused], "fused": [v for _, v in fused],
                             "noise_w": [w for w, _ in noise], "noise": [v for _, v in noise],
                             "predictive": [r["weights"][_wkey(REFERENCE_W)][m] for r in per_seed]}
    return out


def _wlist(ws: Sequence[float | None]) -> str:
    return ", ".join("–" if w is None else f"{w:g}" for w in ws)


def verdict(per_seed: list[dict[str, Any]], weights: Sequence[float]) -> list[str]:
    """Lines computed from the per-seed numbers: each ``w < 1`` vs ``w = 1`` and vs its noise control,
    then per metric which fused weights beat which at matched ``w``, then per metric the best-``w``
    comparison, then the summary.

    Lower fg-ECE is better, higher AUROC / fg-AUROC is better. Map ``a`` *beats* map ``b`` on a metric
    when it is strictly better in a strict majority of **all** seeds and its mean difference over seeds
    is in the better direction (:func:`_beats`). Fusion *helps* on a metric only when fused at its own
    best ``w < 1`` per seed beats both predictive variance alone (``w = 1``) and the noise control at
    *its* own best ``w < 1`` (module doc: matched ``w`` would make the answer depend on which ``w`` is
    matched; beating ``w = 1`` alone is what any spread-out added term does to fg-ECE). Both ``w`` are
    picked on the test images — an oracle, optimistic for both maps alike, which is why the comparison
    between them is fair. The matched-``w`` lines stay as detail; where they alone would say "helps" but
    the best-``w`` comparison does not, the summary says so.
    """
    ref = _wkey(REFERENCE_W)
    n = len(per_seed)
    lines = []
    for w in weights:
        if w >= REFERENCE_W:
            continue
        k = _wkey(w)
        noise = "noise alone (w=0)" if w == 0.0 else f"noise control (w={k})"
        lines.append(f"{_label(w)}: vs predictive variance alone (w=1): "
                     + ", ".join(_compare(per_seed, _fused(k), _fused(ref), m) for m in METRICS)
                     + f"; vs {noise}: " + ", ".join(_compare(per_seed, _fused(k), _noise(k), m) for m in METRICS))
    fused = [w for w in weights if 0.0 < w < REFERENCE_W]
    if not fused:
        lines.append("no fused weight (0 < w < 1) in the sweep: the seed's claim is not tested")
    else:
        matched: dict[str, list[float]] = {}
        for m in METRICS:
            beats_pred = [w for w in fused if _beats(per_seed, _fused(_wkey(w)), _fused(ref), m)]
            beats_noise = [w for w in fused if _beats(per_seed, _fused(_wkey(w)), _noise(_wkey(w)), m)]
            matched[m] = [w for w in beats_pred if w in beats_noise]
            lines.append(f"{_METRIC_NAMES[m]}, matched w: fused beats (majority of {n} seeds and mean) predictive "
                         f"variance alone at w = {_ws(beats_pred)}, its noise control (same w) at "
                         f"w = {_ws(beats_noise)}, both at w = {_ws(matched[m])}")
        grid, record = _grid(weights), best_w(per_seed, weights)["metrics"]
        fbest, nbest = _best("weights", grid), _best("noise_control", grid)
        missed: dict[str, list[str]] = {}
        for m in METRICS:
            missed[m] = [what for what, b in (("predictive variance alone", _fused(ref)),
                                              ("the noise control at its best w", nbest))
                         if not _beats(per_seed, fbest, b, m)]
            lines.append(f"{_METRIC_NAMES[m]}, each map at its own best w < 1 per seed (w = {_ws(grid)}; an oracle "
                         f"w picked on the test images, optimistic for both alike): fused-best vs predictive variance "
                         f"alone (w=1): {_compare(per_seed, fbest, _fused(ref), m)}; vs noise-best: "
                         f"{_compare(per_seed, fbest, nbest, m)}; best w per seed: fused "
                         f"{_wlist(record[m]['fused_w'])}, noise {_wlist(record[m]['noise_w'])}")
        yes = [_METRIC_NAMES[m] for m in METRICS if not missed[m]]
        no = [f"{_METRIC_NAMES[m]} (fused-best does not beat {' nor '.join(missed[m])})" for m in METRICS if missed[m]]
        head = (f"fusion helps on {', '.join(yes)} — fused at its best w beats both predictive variance alone and the "
                f"noise control at its best w (majority of {n} seeds and mean): the seed's null result is NOT "
                f"reproduced on {', '.join(yes)}" if yes else
                f"fusion helps on no metric (fused at its best w never beats both predictive variance alone and the "
                f"noise control at its best w in a majority of {n} seeds and on the mean)")
        tail = f"; the seed's null result is reproduced on {', '.join(no)}" if no else ""
        only_matched = [f"{_METRIC_NAMES[m]} (w = {_ws(matched[m])})" for m in METRICS if matched[m] and missed[m]]
        note = (f"; matched w alone would say fusion helps on {'; '.join(only_matched)}, which does not survive "
                "each map taking its own best w" if only_matched else "")
        lines.append(head + tail + note)
    raw = [{"a": r["weights"][ref], "b": r["predictive_variance_raw"]} for r in per_seed]
    lines.append("per-image normalisation alone (w=1 vs raw predictive variance): "
                 + ", ".join(_compare(raw, lambda r: r["a"], lambda r: r["b"], m) for m in ("fg_ece", "auroc")))
    return lines


def summarize(per_seed: list[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd and 95% t-interval half-width (:func:`t_ci95`) over seeds of every reported number."""
    out: dict[str, Any] = {k: _mean_sd([r[k] for r in per_seed]) for k in ("pixel_accuracy", "dice")}
    out["predictive_variance_raw"] = {m: _mean_sd([r["predictive_variance_raw"][m] for r in per_seed])
                                      for m in METRICS}
    for key in ("weights", "noise_control"):
        out[key] = {_wkey(w): {m: _mean_sd([r[key][_wkey(w)][m] for r in per_seed]) for m in METRICS}
                    for w in weights if key == "weights" or w < REFERENCE_W}
    return out


def run_saliency_experiment(data: Data2d, settings: SaliencySettings, progress: Progress | None = None,
                            nets: Mapping[int, UNet2d] | None = None) -> dict[str, Any]:
    """Every seed of ``settings`` on ``data``: per-seed scores, mean ± sd, verdict (module doc).

    ``nets``: already trained networks by seed (:func:`train_seed_net` with the same data and
    schedule); a seed missing from it is trained here. Its ``seconds`` then exclude the training."""
    s = check_settings(settings)
    resolve_target(UNet2d(data.images.shape[1], data.num_classes, s.widths), s.target)  # fail before training
    t0 = time.perf_counter()
    per_seed = []
    for seed in s.seeds:
        t = time.perf_counter()
        maps = seed_maps(data, seed, s, progress, None if nets is None else nets.get(seed))
        row = {"seed": seed, "train_images": int((~maps.test).sum()), "test_images": int(maps.test.sum()),
               "test_groups": len(np.unique(data.groups[maps.test]))}
        row |= score_maps(maps, s.weights, data.num_classes)
        row["seconds"] = time.perf_counter() - t
        per_seed.append(row)
        if progress is not None:
            progress(seed, "score", 1, 1)
    return {"source": data.source, "data": data.info, "num_classes": data.num_classes, "settings": asdict(s),
            "ece_pixels": ECE_PIXELS, "target": s.target, "per_class": s.per_class,
            "normalisation": "V_pred and V_sal min-max normalised per image before fusing (fusion.fuse); every w row "
                             "uses that scale, w=1 is V_pred alone on it; predictive_variance_raw skips it",
            "noise_control": NOISE_CONTROL,
            "per_seed": per_seed, "summary": summarize(per_seed, s.weights), "best_w": best_w(per_seed, s.weights),
            "verdict": verdict(per_seed, s.weights), "seconds": time.perf_counter() - t0}


__all__ = [
    "ECE_PIXELS",
    "NOISE_CONTROL",
    "NOISE_STREAM",
    "Progress",
    "SaliencySettings",
    "SeedMaps",
    "best_w",
    "check_settings",
    "check_weights",
    "noise_map",
    "run_saliency_comparison",
    "run_saliency_experiment",
    "score_maps",
    "seed_maps",
    "summarize",
    "t_ci95",
    "train_seed_net",
    "train_unet2d",
    "tunepp_forward_sample",
    "unet2d_forward_sample",
    "verdict",
]
