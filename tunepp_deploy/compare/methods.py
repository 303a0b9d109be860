"""Each compared method as whole-volume predictors: ``image -> (mean probs [K, ...], {map: u [...]})``.

One predictor per backend a method runs on (torch always; ONNX Runtime where its graph exports),
all on the same preprocessed test volumes, the config's window/overlap, and seeded samples:

* ``tunepp_mc`` — the real MC engine (:func:`tunepp_deploy.infer.mc.mc_predict`: trunk once per
  window, head for all S masks, exact per-sample blend) on ``open_runner(ckpt, "torch")`` and on
  ``open_runner(exported .onnx, "ort")``; uncertainty = epistemic variance. Metrics come from the
  torch run. Stored temperatures are *not* applied (``temperature=False``) so that every TUNE++-based
  row (MC, saliency, SegWithU's raw logits) starts from the same probabilities.
* ``saliency_fusion`` / ``saliency_sal_only`` — the same backbone and the same S masks, a
  Seg-Grad-CAM per sample (:mod:`tunepp_deploy.methods.saliency.volume`); uncertainty = fused map /
  saliency variance alone. Torch only: Grad-CAM needs autograd, which ONNX Runtime does not have.
* ``segwithu`` — backbone + head, one pass; probabilities = tempered softmax, uncertainty = ranking map.
* ``vi_<arch>`` — S weight-noise samples (seeded), per-sample stitched softmax; epistemic variance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunepp_deploy.compare.models import Models
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.export.onnx_export import export_checkpoint
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners import Runner, open_runner
from tunepp_deploy.infer.uncertainty import epistemic_variance
from tunepp_deploy.methods.saliency.experiment import tunepp_forward_sample
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT
from tunepp_deploy.methods.saliency.volume import BOTTLENECK, resolve_target, volume_saliency
from tunepp_deploy.methods.segwithu.export import export_segwithu
from tunepp_deploy.methods.segwithu.predict import predict_volume
from tunepp_deploy.methods.segwithu.runner import WindowFn, open_segwithu, torch_window_fn
from tunepp_deploy.methods.segwithu.train import load_backbone
from tunepp_deploy.methods.variational.export import export_variational_checkpoint
from tunepp_deploy.methods.variational.noise import sample_weight_noise
from tunepp_deploy.methods.variational.runners import VariationalRunner, open_variational
from tunepp_deploy.methods.volume import per_sample_probs

#: ``image [D, H, W] -> (mean probs [K, ...], {map name: uncertainty [...]})``; the first map is the row's.
Predict = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass
class Method:
    """One method: its predictors and which of its maps become table rows (others go to the JSON)."""

    name: str
    samples: int
    notes: dict[str, str]  # row name -> what its uncertainty map is
    torch: Predict
    ort: Predict | None = None
    rows: dict[str, str] = field(default_factory=dict)  # map name -> row name
    train_seconds: float | None = None
    extra: dict[str, float | str] = field(default_factory=dict)


def _mc_settings(cfg: TuneppConfig, samples: int) -> MCSettings:
    return MCSettings(samples=samples, seed=cfg.infer.seed, overlap=cfg.infer.overlap, max_batch=cfg.infer.max_batch,
                      blend="sample")


def _engine(runner: Runner, cfg: TuneppConfig, samples: int) -> Predict:
    masks = sample_masks(runner.meta.sites, runner.meta.window, samples, cfg.infer.seed)
    settings = _mc_settings(cfg, samples)

    def predict(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        maps = mc_predict(x, runner, masks, settings).maps
        return maps.mean_probs.cpu().numpy(), {"epistemic": maps.epistemic.cpu().numpy()}

    return predict


def tunepp_method(models: Models, cfg: TuneppConfig, samples: int, out: Path, threads: int,
                  stack: ExitStack) -> Method:
    """``tunepp_mc`` on the MC engine, torch and ONNX Runtime (the checkpoint is exported to ``out``)."""
    t0 = time.perf_counter()
    onnx_path = export_checkpoint(models.backbone_path, out / "tunepp.onnx").path
    export_s = time.perf_counter() - t0
    torch_runner = stack.enter_context(open_runner(models.backbone_path, "torch", "cpu", temperature=False))
    ort_runner = stack.enter_context(open_runner(onnx_path, "ort", "cpu", threads=threads, temperature=False))
    return Method("tunepp_mc", samples, {"tunepp_mc": "epistemic variance sum_k Var_s p over S dropout-mask samples "
                                                      "(MC engine, trunk once per window)"},
                  _engine(torch_runner, cfg, samples), _engine(ort_runner, cfg, samples), {"epistemic": "tunepp_mc"},
                  models.train_seconds.get("tunepp"), {"onnx_export_s": export_s})


def saliency_method(models: Models, cfg: TuneppConfig, samples: int, target: str = BOTTLENECK,
                    w: float = DEFAULT_FUSION_WEIGHT) -> Method:
    """Saliency-variance fusion on the TUNE++ backbone with the tunepp_mc row's masks (torch only);
    nothing of its own to train (its train seconds are the backbone's).

    A fresh copy of the backbone, frozen: the SegWithU head's taps hook the shared one, and frozen
    weights keep autograd from recording the encoder below the target layer.
    """
    net, _ = load_backbone(models.backbone_path)
    net.requires_grad_(False)
    layer = resolve_target(net, target)
    masks = sample_masks(net.dropout_sites(), cfg.window, samples, cfg.infer.seed)
    fwd = tunepp_forward_sample(net, masks)

    def predict(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = volume_saliency(image, fwd, layer, samples, cfg.window, cfg.infer.overlap, cfg.infer.max_batch, w)
        return m.mean_probs.numpy(), {"fused": m.fused.numpy(), "saliency_variance": m.saliency_variance.numpy(),
                                      "predictive_variance": m.predictive_variance.numpy()}

    notes = {"saliency_fusion": f"w norm(V_pred) + (1-w) norm(V_sal), w = {w}; V_sal = Var_s of the per-sample "
                                f"Seg-Grad-CAMs on '{target}', each min-max normalised over the whole stitched volume",
             "saliency_sal_only": "V_sal alone (same run as saliency_fusion)"}
    return Method("saliency_fusion", samples, notes, predict, None,
                  {"fused": "saliency_fusion", "saliency_variance": "saliency_sal_only"},
                  models.train_seconds.get("tunepp"), {"target": target, "fusion_weight": w})


def segwithu_method(models: Models, cfg: TuneppConfig, out: Path, threads: int) -> Method:
    """SegWithU, one pass, torch and ONNX Runtime (exported to ``out/segwithu.onnx``, opened with the
    same :func:`~tunepp_deploy.methods.segwithu.runner.open_segwithu` that ``tunepp infer`` uses)."""

    def run(fn: WindowFn) -> Predict:
        def predict(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            m = predict_volume(image, fn, tuple(cfg.window), cfg.infer.overlap, cfg.infer.max_batch)
            return m.tempered.numpy(), {"ranking": m.u_rnk.numpy()}

        return predict

    onnx_path = export_segwithu(models.head, cfg, cfg.window, out / "segwithu.onnx")
    ort_runner = open_segwithu(onnx_path, "ort", "cpu", threads)
    return Method("segwithu", 1, {"segwithu": "ranking map U_rnk (one pass; probabilities = tempered softmax)"},
                  run(torch_window_fn(models.head)), run(ort_runner.window_fn), {"ranking": "segwithu"},
                  models.train_seconds.get("segwithu"))


def vi_method(models: Models, cfg: TuneppConfig, samples: int, out: Path, threads: int) -> Method:
    """The variational network with S seeded weight-noise samples, torch and ONNX Runtime, through the
    runners ``tunepp infer --method variational`` uses
    (:func:`~tunepp_deploy.methods.variational.runners.open_variational`)."""
    arch = models.vi_arch
    onnx_path = export_variational_checkpoint(models.paths["vi"], out / f"vi_{arch}.onnx").path
    runners = [open_variational(models.paths["vi"], "torch", "cpu"), open_variational(onnx_path, "ort", "cpu", threads)]
    noise = sample_weight_noise(runners[0].noise_shapes, samples, cfg.infer.seed)

    def run(runner: VariationalRunner) -> Predict:
        def predict(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            p = per_sample_probs(image, lambda x, s: runner.logits(x, noise, s), samples, cfg.window,
                                 cfg.infer.overlap, cfg.infer.max_batch)
            return p.mean(0).numpy(), {"epistemic": epistemic_variance(p).numpy()}

        return predict

    return Method(f"vi_{arch}", samples, {f"vi_{arch}": "epistemic variance sum_k Var_s p over S weight-noise samples"},
                  run(runners[0]), run(runners[1]), {"epistemic": f"vi_{arch}"}, models.train_seconds.get("vi"))


__all__ = ["Method", "Predict", "saliency_method", "segwithu_method", "tunepp_method", "vi_method"]
