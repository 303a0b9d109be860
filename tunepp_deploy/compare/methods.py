"""Each compared method as whole-volume predictors: ``image -> (mean probs [K, ...], {map: u [...]})``.

One predictor per backend a method runs on (torch always; ONNX Runtime where its graph exports),
all on the same preprocessed test volumes, the config's window/overlap, and seeded samples:

* ``tunepp_mc`` — the TUNE++ predictor (:mod:`tunepp_deploy.predictors.tunepp`: streamed exact MC,
  trunk once per window batch, sampled logit noise) on the checkpoint (torch) and on its ONNX export
  (ONNX Runtime); uncertainty = epistemic variance (total in the JSON). Metrics come from the
  torch run. Stored temperatures are *not* applied (``temperature=False``) so that every TUNE++-based
  row (MC, saliency, SegWithU's raw logits) starts from the same probabilities.
* ``saliency_fusion`` / ``saliency_sal_only`` — the same backbone and the same S masks, a
  Seg-Grad-CAM per sample (:mod:`tunepp_deploy.predictors.saliency`); uncertainty = fused map /
  saliency variance alone. Torch only: Grad-CAM needs autograd, which ONNX Runtime does not have.
* ``segwithu`` — backbone + head, one pass; probabilities = tempered softmax, uncertainty = ranking map.
* ``vi_<arch>`` — S weight-noise samples (seeded), per-sample stitched softmax; epistemic variance.

Every row is a predictor of :mod:`tunepp_deploy.predictors` (the ones ``tunepp infer``
runs), opened from the model files with the comparison's overlap, batch, seed and S, and closed with
the comparison's ``ExitStack``.
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
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT
from tunepp_deploy.methods.saliency.gradcam import BOTTLENECK
from tunepp_deploy.methods.segwithu.export import export_segwithu
from tunepp_deploy.methods.variational.export import export_variational_checkpoint
from tunepp_deploy.predictors.base import Predictor
from tunepp_deploy.predictors.open import open_predictor
from tunepp_deploy.predictors.saliency import open_saliency_predictor
from tunepp_deploy.predictors.segwithu import open_segwithu_predictor
from tunepp_deploy.predictors.settings import RunOptions
from tunepp_deploy.predictors.variational import open_variational_predictor

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


def tunepp_method(models: Models, cfg: TuneppConfig, samples: int, out: Path, threads: int,
                  stack: ExitStack) -> Method:
    """``tunepp_mc``: the TUNE++ predictor (streamed exact MC, sampled logit noise) on torch and on ONNX
    Runtime (the checkpoint is exported to ``out``); stored temperatures are not applied (module docstring)."""
    t0 = time.perf_counter()
    onnx_path = export_checkpoint(models.backbone_path, out / "tunepp.onnx").path
    export_s = time.perf_counter() - t0
    opts = _options(cfg, samples)
    on_torch = stack.enter_context(open_predictor(models.backbone_path, "tunepp", "torch", "cpu", opts,
                                                  temperature=False))
    on_ort = stack.enter_context(open_predictor(onnx_path, "tunepp", "ort", "cpu", opts, threads=threads,
                                                temperature=False))
    keys = ("epistemic", "total")
    return Method("tunepp_mc", samples, {"tunepp_mc": "epistemic variance sum_k Var_s p over S dropout-mask samples "
                                                      "(MC engine, trunk once per window)"},
                  _as_predict(on_torch, keys), _as_predict(on_ort, keys), {"epistemic": "tunepp_mc"},
                  models.train_seconds.get("tunepp"), {"onnx_export_s": export_s})


CPU = torch.device("cpu")


def _options(cfg: TuneppConfig, samples: int) -> RunOptions:
    """The comparison's own settings, not each model file's: every row runs the same window overlap,
    batch, seed and S (a loaded model's stored ``infer`` defaults could differ)."""
    i = cfg.infer
    return RunOptions(samples=samples, seed=i.seed, overlap=i.overlap, max_batch=i.max_batch, memory_gb=i.memory_gb)


def _as_predict(predictor: Predictor, keys: tuple[str, ...]) -> Predict:
    """A predictor as a row's :data:`Predict`: the mean probabilities and the maps ``keys`` (numpy)."""

    def predict(image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pred = predictor.predict(image)
        return pred.probs.cpu().numpy(), {k: pred.maps[k].cpu().numpy() for k in keys}

    return predict


def saliency_method(models: Models, cfg: TuneppConfig, samples: int, stack: ExitStack, target: str = BOTTLENECK,
                    w: float = DEFAULT_FUSION_WEIGHT) -> Method:
    """Saliency-variance fusion on the TUNE++ backbone with the tunepp_mc row's masks (torch only,
    :class:`~tunepp_deploy.predictors.saliency.SaliencyPredictor`); nothing of its own to train (its
    train seconds are the backbone's). The predictor loads its own frozen copy of the backbone, so the
    SegWithU head's taps on another copy never see its passes."""
    sal = stack.enter_context(open_saliency_predictor(models.backbone_path, "torch", CPU, None,
                                                      _options(cfg, samples), target, w))
    notes = {"saliency_fusion": f"w norm(V_pred) + (1-w) norm(V_sal), w = {w}; V_sal = Var_s of the per-sample "
                                f"Seg-Grad-CAMs on '{target}', each min-max normalised over the whole stitched volume",
             "saliency_sal_only": "V_sal alone (same run as saliency_fusion)"}
    return Method("saliency_fusion", samples, notes,
                  _as_predict(sal, ("fused", "saliency_variance", "predictive_variance")), None,
                  {"fused": "saliency_fusion", "saliency_variance": "saliency_sal_only"},
                  models.train_seconds.get("tunepp"), {"target": target, "fusion_weight": w})


def segwithu_method(models: Models, cfg: TuneppConfig, out: Path, threads: int, stack: ExitStack) -> Method:
    """SegWithU, one pass, torch (the head checkpoint) and ONNX Runtime (exported to
    ``out/segwithu.onnx``), both opened with the
    :func:`~tunepp_deploy.predictors.segwithu.open_segwithu_predictor` that ``tunepp infer`` uses;
    probabilities = tempered softmax."""
    onnx_path = export_segwithu(models.head, cfg, cfg.window, out / "segwithu.onnx")
    opts = _options(cfg, 1)
    tp = stack.enter_context(open_segwithu_predictor(Path(models.paths["head"]), "torch", CPU, None, opts))
    op = stack.enter_context(open_segwithu_predictor(onnx_path, "ort", CPU, threads, opts))
    return Method("segwithu", 1, {"segwithu": "ranking map U_rnk (one pass; probabilities = tempered softmax)"},
                  _as_predict(tp, ("ranking",)), _as_predict(op, ("ranking",)), {"ranking": "segwithu"},
                  models.train_seconds.get("segwithu"))


def vi_method(models: Models, cfg: TuneppConfig, samples: int, out: Path, threads: int, stack: ExitStack) -> Method:
    """The variational network with S seeded weight-noise samples, torch and ONNX Runtime, through the
    predictor ``tunepp infer --method variational`` uses
    (:func:`~tunepp_deploy.predictors.variational.open_variational_predictor`)."""
    arch = models.vi_arch
    onnx_path = export_variational_checkpoint(models.paths["vi"], out / f"vi_{arch}.onnx").path
    opts = _options(cfg, samples)
    tp = stack.enter_context(open_variational_predictor(Path(models.paths["vi"]), "torch", CPU, None, opts))
    op = stack.enter_context(open_variational_predictor(onnx_path, "ort", CPU, threads, opts))
    return Method(f"vi_{arch}", samples, {f"vi_{arch}": "epistemic variance sum_k Var_s p over S weight-noise samples"},
                  _as_predict(tp, ("epistemic",)), _as_predict(op, ("epistemic",)), {"epistemic": f"vi_{arch}"},
                  models.train_seconds.get("vi"))


__all__ = ["Method", "Predict", "saliency_method", "segwithu_method", "tunepp_method", "vi_method"]
