r"""Saliency-variance fusion on whole 3D volumes (the ``saliency_fusion`` row of ``tunepp compare``).

:mod:`.fusion` works on one network input (a 2D slice or one 3D window). A scan bigger than the
network's window is tiled (:func:`tunepp_deploy.infer.sliding_window.sliding_window`), and a sample
``s`` must stay one network ``f_s`` over the whole scan (the same dropout masks in every window, as
:mod:`tunepp_deploy.infer.masks` explains). So, per window batch and per sample, one forward *and*
one backward (Seg-Grad-CAM needs the gradient of the window's segmentation score at the target
layer), and then

* each sample's softmax ``p_s [K, ...]`` and its Grad-CAM ``G_s [...]`` are stitched over the scan
  with the same Gaussian blend as every other method's softmax;
* ``V_pred = sum_k Var_s p_{s,k}`` over the stitched softmaxes (exactly TUNE++'s epistemic map for
  the same masks);
* ``V_sal = Var_s norm(G_s)`` where ``norm`` min-max normalises **each whole-volume stitched CAM**
  (one min and one max per sample over the whole scan). The seed normalises per image; the scan is
  the 3D analogue of the image. Normalising per window instead would give every window its own
  scale and put seams into ``V_sal`` at window borders — the artefact the stitching avoids;
* ``U = w norm(V_pred) + (1 - w) norm(V_sal)`` (:func:`.fusion.fuse`, one min/max per scan).

Why the bottleneck by default: it is the coarsest, most semantic feature of the encoder (as in the
seed's 2D U-Net); any named submodule can be the target (:func:`resolve_target`). In TUNE++ the
bottleneck lies before the default dropout sites, so its *activation* is the same for every sample —
what differs per sample is the gradient flowing back through the sample's dropped channels, which
is exactly what the saliency variance measures.

Costs: S forward+backward passes per window (no trunk reuse, autograd on). Memory does not grow with
S: samples are stitched one at a time (one sliding-window pass per sample, so each pass's CAM can be
normalised over the whole volume before the next starts) and only float64 running sums of ``p``,
``p^2``, ``norm(G)`` and ``norm(G)^2`` are kept (:class:`SampleMoments`) — a Synapse volume at S = 25
would otherwise need 25 x 15 stitched maps. Torch only: ONNX Runtime and TensorRT have no autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT, fuse, minmax
from tunepp_deploy.methods.saliency.gradcam import seg_grad_cam

#: ``forward_sample(x [B, C, *window], s) -> logits [B, K, *window]`` under sample ``s``'s masks.
ForwardSample = Callable[[Tensor, int], Tensor]
#: Name :func:`resolve_target` maps to the network's deepest encoder stage.
BOTTLENECK = "bottleneck"


@dataclass
class VolumeSaliency:
    """Whole-scan maps: ``mean_probs [K, D, H, W]``, the three uncertainty maps ``[D, H, W]``."""

    mean_probs: Tensor
    predictive_variance: Tensor
    saliency_variance: Tensor
    fused: Tensor
    samples: int


def resolve_target(net: nn.Module, name: str = BOTTLENECK) -> nn.Module:
    """The Grad-CAM target layer: ``"bottleneck"`` (the last encoder stage of a TUNE++ network, i.e.
    ``encoder.{L-1}``) or any name of ``net.named_modules()``; an unknown name is a one-line error."""
    encoder = getattr(net, "encoder", None)
    if name == BOTTLENECK and isinstance(encoder, nn.ModuleList) and len(encoder):
        return encoder[-1]
    modules = dict(net.named_modules())
    if name not in modules or not name:
        top = [n for n, _ in net.named_children()]
        raise TuneppError(f"Grad-CAM target '{name}' is not a module of the network (top level: {top}; "
                          f"use '{BOTTLENECK}' or a dotted name such as 'encoder.1')")
    return modules[name]


class SampleMoments:
    """Running float64 sums over samples of the stitched softmax and the normalised CAM.

    ``Var = E[x^2] - E[x]^2`` is exact enough in float64 for values in [0, 1] and is exactly 0 for
    one sample (both terms are the same product), which the S = 1 case relies on.
    """

    def __init__(self) -> None:
        self.count = 0
        self._p: Tensor | None = None
        self._p2: Tensor | None = None
        self._n: Tensor | None = None
        self._n2: Tensor | None = None

    def add(self, probs: Tensor, cam: Tensor) -> None:
        """One sample: stitched softmax ``probs [K, ...]`` and its stitched CAM ``cam [...]``."""
        if probs.shape[1:] != cam.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and cam {tuple(cam.shape)} disagree")
        p = probs.double()
        n = minmax(cam.double()[None])[0]
        if self._p is None:
            self._p, self._p2, self._n, self._n2 = p.clone(), p * p, n.clone(), n * n
        else:
            assert self._p2 is not None and self._n is not None and self._n2 is not None
            self._p += p
            self._p2 += p * p
            self._n += n
            self._n2 += n * n
        self.count += 1

    def finish(self, w: float = DEFAULT_FUSION_WEIGHT) -> VolumeSaliency:
        """The maps of the module docstring from the samples added so far."""
        if self._p is None or self._p2 is None or self._n is None or self._n2 is None:
            raise ValueError("no samples were added")
        s = float(self.count)
        mean_p = self._p / s
        pv = (self._p2 / s - mean_p * mean_p).clamp_min(0.0).sum(0).float()
        mean_n = self._n / s
        sv = (self._n2 / s - mean_n * mean_n).clamp_min(0.0).float()
        return VolumeSaliency(mean_p.float(), pv, sv, fuse(pv[None], sv[None], w)[0], self.count)


def volume_maps(probs: Tensor, cams: Tensor, w: float = DEFAULT_FUSION_WEIGHT) -> VolumeSaliency:
    """Maps from stitched per-sample softmaxes ``probs [S, K, ...]`` and CAMs ``cams [S, ...]``
    (module docstring: each CAM min-max normalised over the whole volume, then the variance)."""
    if probs.shape[0] != cams.shape[0] or probs.shape[2:] != cams.shape[1:]:
        raise ValueError(f"probs {tuple(probs.shape)} and cams {tuple(cams.shape)} disagree")
    acc = SampleMoments()
    for p, c in zip(probs, cams, strict=True):
        acc.add(p, c)
    return acc.finish(w)


def volume_saliency(
    image: np.ndarray, forward_sample: ForwardSample, target: nn.Module, samples: int, window: Sequence[int],
    overlap: float = 0.5, batch: int = 2, w: float = DEFAULT_FUSION_WEIGHT, classes: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VolumeSaliency:
    """Saliency-variance fusion over a whole preprocessed scan ``image [D, H, W]`` (module docstring):
    one sliding-window pass per sample (softmax + Seg-Grad-CAM on ``target``), moments streamed.
    ``progress(n)`` is called with the windows done, ``samples`` passes in all."""
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    acc = SampleMoments()
    for s in range(samples):

        def predict(x: Tensor, s: int = s) -> list[Tensor]:
            cam, logits = seg_grad_cam(lambda t: forward_sample(t, s), target, x, classes)
            return [torch.softmax(logits.float(), 1), cam.float()[:, None]]

        p, c = sliding_window(vol, predict, window, overlap=overlap, batch=batch, progress=progress)
        acc.add(p, c[0])
    return acc.finish(w)


__all__ = [
    "BOTTLENECK",
    "ForwardSample",
    "SampleMoments",
    "VolumeSaliency",
    "resolve_target",
    "volume_maps",
    "volume_saliency",
]
