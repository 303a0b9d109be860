r"""Saliency-variance fusion on whole 3D scans as a :class:`~.base.Predictor` (torch only).

:mod:`tunepp_deploy.methods.saliency.fusion` works on one network input (a 2D slice or one 3D
window). A scan bigger than the window is tiled, and a sample ``s`` must stay one network ``f_s``
over the whole scan (the same dropout masks in every window, :mod:`tunepp_deploy.infer.masks`). So
per window batch and per sample one forward and one backward per explained class (Seg-Grad-CAM
needs the gradient of each class's segmentation score at the target activation,
:mod:`~tunepp_deploy.methods.saliency.gradcam`; by default the input of the 1x1 classifier, i.e.
after every dropout site, so the backward is one 1x1 conv), and then

* each sample's softmax ``p_s [K, ...]`` and its Grad-CAMs ``G_{s,c} [...]`` (one per foreground
  class ``c``, as the seed does) are stitched over the scan with the same Gaussian blend as every
  other method's softmax;
* ``predictive_variance = sum_k Var_s p_{s,k}`` over the stitched softmaxes (TUNE++'s epistemic map
  for the same masks, without the logit noise);
* ``saliency_variance = sum_c Var_s norm(G_{s,c})`` where ``norm`` min-max normalises **each
  whole-volume stitched class CAM** (one min and one max per sample and class over the whole
  scan). The seed normalises per image; the scan is the 3D analogue of the image. Normalising per
  window instead would give every window its own scale and put seams into the map at window
  borders — the artefact stitching avoids;
* ``fused = w norm(V_pred) + (1 - w) norm(V_sal)`` (:func:`~tunepp_deploy.methods.saliency.fusion.fuse`,
  one min/max per scan) — the flag map.

The samples run in chunks through :func:`~tunepp_deploy.infer.sampling.stream_chunks` (outputs
``[probs, cam]`` per chunk): the softmaxes go into :class:`~tunepp_deploy.infer.moments.SampleStats`
and each stitched class CAM, normalised over its whole volume before the next arrives, into one
:class:`~tunepp_deploy.infer.moments.RunningMoments` per class (:class:`SaliencyStats`). Memory
does not grow with S and any chunk size gives the same maps (tested against the stacked samples).

Costs: S forward passes per window plus S x C backward passes from the logits to the target (no
trunk reuse, autograd on; on the default target each backward is one 1x1 conv). Torch only: ONNX
Runtime and TensorRT have no autograd. The network's stored temperature is not applied: the CAMs and the
softmax are of the raw logits, as in the seed (and as ``tunepp compare``'s rows start from).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import mask_alignment, sample_masks
from tunepp_deploy.infer.moments import RunningMoments, SampleStats
from tunepp_deploy.infer.sampling import plan_chunk, stream_chunks
from tunepp_deploy.infer.sliding_window import aligned_size, count_windows
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT, fuse, minmax
from tunepp_deploy.methods.saliency.gradcam import DEFAULT_TARGET, resolve_target, seg_grad_cam, seg_grad_cam_per_class
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.model_file import model_kind
from tunepp_deploy.predictors.base import Prediction, Predictor, Progress, counting
from tunepp_deploy.predictors.settings import RunOptions, RunSettings, resolve

MAP_NAMES = ("fused", "saliency_variance", "predictive_variance")
DEFINITIONS = ("see tunepp_deploy/predictors/saliency.py: predictive_variance = sum_k Var_s p_sk; "
               "saliency_variance = sum over foreground classes c of Var_s of each sample's class-c Seg-Grad-CAM "
               "(default target: the classifier's input, after every dropout site), min-max normalised over the "
               "whole volume; fused = w norm(predictive_variance) + (1 - w) norm(saliency_variance)")
#: Window-level buffers per sample and window of one call: outputs, their stack and stream_chunks' copy.
_CALL_COPIES = 3
#: float64 maps besides SampleStats': two RunningMoments sums per CAM channel ...
_CAM_SUMS = 2
#: ... plus the normalised CAM with its temporary.
_CAM_TEMPS = 2


@dataclass
class VolumeSaliency:
    """Whole-scan maps: ``mean_probs [K, ...]``, the three uncertainty maps ``[...]``."""

    mean_probs: Tensor
    predictive_variance: Tensor
    saliency_variance: Tensor
    fused: Tensor
    samples: int


class SaliencyStats:
    """Running statistics of the stitched samples: softmaxes in :class:`SampleStats`, whole-volume
    min-max normalised CAMs in one :class:`RunningMoments` per class (float64, so one sample has
    variance 0 exactly); the saliency variance is the sum of the class variances."""

    def __init__(self) -> None:
        self.probs = SampleStats()
        self.cams: list[RunningMoments] = []

    def add(self, probs: Tensor, cams: Tensor) -> None:
        """A chunk of samples: stitched softmaxes ``probs [n, K, ...]`` and CAMs, per class
        ``cams [n, C, ...]`` or one map per sample ``cams [n, ...]`` (C = 1)."""
        if cams.dim() == probs.dim() - 1:
            cams = cams[:, None]
        if cams.dim() != probs.dim() or probs.shape[0] != cams.shape[0] or probs.shape[2:] != cams.shape[2:]:
            raise ValueError(f"probs {tuple(probs.shape)} and cams {tuple(cams.shape)} disagree")
        if not self.cams:
            self.cams = [RunningMoments() for _ in range(cams.shape[1])]
        if cams.shape[1] != len(self.cams):
            raise ValueError(f"cams have {cams.shape[1]} classes, earlier chunks had {len(self.cams)}")
        self.probs.add(probs)
        for sample in cams:
            for acc, c in zip(self.cams, sample, strict=True):
                acc.add(minmax(c.double()[None])[0])

    def maps(self, w: float = DEFAULT_FUSION_WEIGHT) -> VolumeSaliency:
        """The module docstring's maps of the samples added so far."""
        m = self.probs.maps()
        pv = m.epistemic
        sv = sum((acc.variance() for acc in self.cams[1:]), self.cams[0].variance())
        return VolumeSaliency(m.mean_probs, pv, sv, fuse(pv[None], sv[None], w)[0], self.probs.count)


class SaliencyPredictor(Predictor):
    """A frozen TUNE++ network, its S seeded mask sets and the Grad-CAM target (module docstring).

    ``chunk`` fixes the samples per sliding-window pass (tests, benchmarks); None plans it from
    ``settings.memory_gb`` per volume. ``classes``: the classes explained, one Seg-Grad-CAM each
    (default every foreground class); ``per_class=False`` makes one map of their summed score (the
    first version, kept for the before/after comparison).
    """

    method = "saliency"
    map_names = MAP_NAMES
    flag_map = "fused"
    definitions = DEFINITIONS

    def __init__(self, net: TUNEPP, cfg: TuneppConfig, settings: RunSettings, device: torch.device,
                 target: str = DEFAULT_TARGET, weight: float = DEFAULT_FUSION_WEIGHT, chunk: int | None = None,
                 classes: Sequence[int] | None = None, per_class: bool = True) -> None:
        super().__init__(cfg, cfg.window, "torch", device)
        if not 0.0 <= weight <= 1.0:
            raise TuneppError(f"fusion weight must be in [0, 1], got {weight}")
        if settings.blend == "window":
            raise TuneppError("--blend window applies to TUNE++ MC dropout; saliency fusion normalises each "
                              "sample's whole stitched CAM, so it always uses the exact per-sample blend")
        self.net = net.to(device).eval()
        self.net.requires_grad_(False)  # frozen: autograd records nothing below the target layer
        self.layer = resolve_target(self.net, target)
        self.target, self.weight, self.settings, self.chunk = target, float(weight), settings, chunk
        self.cam_classes = list(range(1, len(self.classes))) if classes is None else list(classes)
        self.per_class = bool(per_class)
        bad = [c for c in self.cam_classes if not 0 <= c < len(self.classes)]
        if not self.cam_classes or bad:
            raise TuneppError(f"Grad-CAM classes {self.cam_classes} must be a non-empty subset of "
                              f"0..{len(self.classes) - 1}")
        self.masks = sample_masks(self.net.dropout_sites(), self.window, settings.samples, settings.seed)
        #: window starts on the element sites' stride grid, so element masks follow the volume position
        self.align = mask_alignment(self.net.dropout_sites())

    def sample_chunk(self, shape: Sequence[int]) -> int:
        """Samples per pass for a volume of ``shape``: ``chunk``, else the most the budget allows
        (:func:`~tunepp_deploy.infer.sampling.plan_chunk`; autograd's own buffers
        are per window batch and are not counted)."""
        s = self.settings
        if self.chunk is not None:
            return max(1, min(int(self.chunk), s.samples))
        c = len(self.classes) + self.cam_channels  # the K softmax channels and the CAM(s)
        padded = [aligned_size(int(a), int(w), al) for a, w, al in zip(shape, self.window, self.align, strict=True)]
        call = _CALL_COPIES * 4 * c * math.prod(self.window) * s.max_batch
        fixed = (_CAM_SUMS * self.cam_channels + _CAM_TEMPS) * 8 * math.prod(padded)
        return plan_chunk(padded, self.window, c, s.samples, s.memory_gb, fixed, per_sample_bytes=call,
                          hint="raise --memory-gb")

    @property
    def cam_channels(self) -> int:
        """Stitched CAM channels per sample: one per explained class, or 1 for the summed score."""
        return len(self.cam_classes) if self.per_class else 1

    def _logits(self, x: Tensor, s: int, starts: Sequence[tuple[int, ...]] | None) -> Tensor:
        masks = self.masks.rows([s], x.shape[0], self.device, starts)
        return self.net(x, masks, with_aux=False).logits

    def _chunk(self, x: Tensor, ids: Sequence[int], starts: Sequence[tuple[int, ...]] | None) -> list[Tensor]:
        x = x.to(self.device)
        probs, cams = [], []
        for s in ids:
            fwd = lambda t, s=s: self._logits(t, s, starts)  # noqa: E731
            if self.per_class:
                cam, logits = seg_grad_cam_per_class(fwd, self.layer, x, self.cam_classes)
            else:
                cam, logits = seg_grad_cam(fwd, self.layer, x, self.cam_classes)
                cam = cam[:, None]
            probs.append(torch.softmax(logits.float(), 1).cpu())
            cams.append(cam.float().cpu())
        return [torch.stack(probs), torch.stack(cams)]

    def volume_saliency(self, image: np.ndarray,
                        progress: Progress | None = None) -> tuple[VolumeSaliency, int, int]:
        """The maps of a preprocessed ``image [D, H, W]`` on the model grid, the chunk size and the windows."""
        s = self.settings
        vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        windows = count_windows(image.shape, self.window, s.overlap, self.align)
        chunk = self.sample_chunk(image.shape)
        step = counting(progress, windows * s.samples)

        stats = SaliencyStats()
        for _ids, (p, c) in stream_chunks(vol, self._chunk, self.window, s.samples, chunk, s.overlap, s.max_batch,
                                          step, align=self.align):
            stats.add(p, c)
        return stats.maps(self.weight), chunk, windows

    def predict(self, image: np.ndarray, progress: Progress | None = None) -> Prediction:
        s = self.settings
        m, chunk, windows = self.volume_saliency(image, progress)
        maps = {"fused": m.fused, "saliency_variance": m.saliency_variance,
                "predictive_variance": m.predictive_variance}
        info: dict[str, Any] = {"samples": s.samples, "seed": s.seed, "overlap": s.overlap,
                                "windows": windows, "blend": "sample",
                                "sample_chunk": chunk, "target": self.target, "fusion_weight": self.weight,
                                "cam_classes": list(self.cam_classes), "per_class": self.per_class}
        return Prediction(m.mean_probs, maps, info)

    def finish_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Variances >= 0 and the fused map in [0, 1] again after trilinear round-off."""
        out = {k: np.maximum(v, 0.0).astype(np.float32) for k, v in maps.items()}
        out["fused"] = np.minimum(out["fused"], 1.0)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "target": self.target, "fusion_weight": self.weight,
                "per_class": self.per_class}

    def describe_runner(self) -> str:
        how = "per class" if self.per_class else "summed score"
        return f"torch on {self.device} (fp32, autograd), Seg-Grad-CAM ({how}) on '{self.target}'"


def open_saliency_predictor(path: Path, backend: str, device: torch.device, threads: int | None, opts: RunOptions,
                            target: str = DEFAULT_TARGET, weight: float = DEFAULT_FUSION_WEIGHT,
                            per_class: bool = True) -> SaliencyPredictor:
    """A TUNE++ checkpoint as a saliency-fusion predictor; ``backend`` must be ``auto`` or ``torch``
    (Seg-Grad-CAM needs autograd, which ONNX Runtime and TensorRT do not have)."""
    from tunepp_deploy.export.onnx_export import load_checkpoint_network

    p = Path(path)
    if backend not in ("auto", "torch"):
        raise TuneppError(f"saliency fusion needs autograd (Seg-Grad-CAM): it runs on --backend torch, not {backend}")
    if not p.is_file():
        raise TuneppError(f"{p}: model file not found")
    if model_kind(p) != "checkpoint":
        raise TuneppError(f"{p}: saliency fusion needs a TUNE++ checkpoint (.pt): an exported {model_kind(p)} "
                          "has no autograd")
    net, cfg = load_checkpoint_network(p)
    if threads:
        torch.set_num_threads(threads)
    return SaliencyPredictor(net, cfg, resolve(cfg, opts), device, target, weight, per_class=per_class)


__all__ = ["DEFINITIONS", "MAP_NAMES", "SaliencyPredictor", "SaliencyStats", "VolumeSaliency",
           "open_saliency_predictor"]
