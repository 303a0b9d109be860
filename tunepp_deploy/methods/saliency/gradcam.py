r"""Seg-Grad-CAM (Vinogradova et al. 2020) for 2D and 3D segmentation networks, per class.

For a target activation ``A_k`` (k = channels) and the segmentation score of class ``c``

    S_c = sum_{v : pred(v) = c} z_c(v)          (class c's logit over its predicted mask),

the channel weights are the spatial means of the gradient, ``alpha_{c,k} = mean_v dS_c / dA_k(v)``,
and class c's map is ``G_c = ReLU(sum_k alpha_{c,k} A_k)`` up-sampled (bi/trilinear) to the input
grid. :func:`seg_grad_cam_per_class` returns one map per class (default: every foreground class
1..K-1), as the seed does: one Grad-CAM per foreground class. :func:`seg_grad_cam` keeps the
summed score ``S = sum_c S_c`` (one map). ``region`` replaces the predicted masks.

**Which activation** (:class:`CamTarget`): the output of any module, or the *input* of one (a
forward pre-hook). The default, :data:`LAST_CONV`, is the input of the network's 1x1 classifier
``out``: the output of the last convolution block after every dropout site *with the masks
applied* (the 2D U-Net's ``dec0`` block times its ``dec0`` mask; TUNE++'s ``final`` ResConvBlock,
times the ``head`` mask when that site is configured). Why there: the saliency variance is meant to
measure how the explanation changes between MC samples. A target upstream of every site (the old
default, :data:`BOTTLENECK` = ``encoder[-1]`` in TUNE++) has the *same activation* in every sample;
only the channel weights vary, so the variance says little about dropout. Downstream of the last
site both ``A`` and ``alpha`` change with the masks.

**What the map then is** (worth knowing when reading results): between this ``A`` and the logits
there is only the 1x1 classifier ``z = W A + b`` (linear), so ``dS_c/dA_k(v) = W_{c,k} [pred(v) = c]``,
``alpha_{c,k} = W_{c,k} |M_c| / N`` and

    G_c = ReLU(|M_c| / N * (z_c - b_c))          (|M_c| = predicted voxels of c, N = all voxels)

exactly: class c's bias-free logit, rectified and scaled by its predicted area. After the per-image
min-max normalisation of :mod:`.fusion` only the rectified logit shape is left (an empty mask gives
an all-zero map). The tests check this closed form and a brute-force autograd reference.

Works with frozen weights: the activation is replaced by a leaf that requires grad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.errors import TuneppError

#: Name :func:`resolve_target` maps to the network's deepest encoder stage (upstream of every dropout site).
BOTTLENECK = "bottleneck"
#: Name :func:`resolve_target` maps to the input of the classifier ``out`` (after every dropout site).
LAST_CONV = "last_conv"
#: The target the saliency method uses unless told otherwise.
DEFAULT_TARGET = LAST_CONV


@dataclass(frozen=True)
class CamTarget:
    """A Grad-CAM activation: the ``output`` of ``module`` or its (first positional) ``input``."""

    module: nn.Module
    at: Literal["input", "output"] = "output"


def _as_target(target: nn.Module | CamTarget) -> CamTarget:
    return target if isinstance(target, CamTarget) else CamTarget(target, "output")


def segmentation_score(logits: Tensor, classes: Sequence[int] | None = None, region: Tensor | None = None) -> Tensor:
    """``S = sum_c S_c`` of the module docstring, summed over the batch (each item's gradient is its own)."""
    k = logits.shape[1]
    classes = list(range(1, k)) if classes is None else list(classes)
    pred = logits.argmax(1) if region is None else region
    return sum((logits[:, c] * (pred == c).to(logits.dtype)).sum() for c in classes)  # type: ignore[return-value]


def _leaf(t: Tensor) -> Tensor:
    return t if t.requires_grad else t.detach().requires_grad_(True)


def _forward_with_activation(model_fn: Callable[[Tensor], Tensor], target: CamTarget, x: Tensor
                             ) -> tuple[Tensor, Tensor]:
    """``(logits, A)``: one forward with the target's activation made a grad-requiring leaf."""
    store: dict[str, Tensor] = {}

    def out_hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> Tensor:
        store["a"] = _leaf(out)
        return store["a"]

    def in_hook(_m: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        store["a"] = _leaf(args[0])
        return (store["a"], *args[1:])

    if target.at == "output":
        handle = target.module.register_forward_hook(out_hook)
    else:
        handle = target.module.register_forward_pre_hook(in_hook)
    try:
        with torch.enable_grad():
            logits = model_fn(x)
    finally:
        handle.remove()
    if "a" not in store:
        raise TuneppError("Grad-CAM target layer was not run by the forward pass (is it part of the network?)")
    return logits, store["a"]


def _cam(a: Tensor, grad: Tensor | None, size: Sequence[int]) -> Tensor:
    """``ReLU(sum_k mean_v(grad_k) A_k)`` up-sampled to ``size``: ``[B, *size]``."""
    if grad is None:  # the score does not depend on A (e.g. no class in the region): a zero map
        grad = torch.zeros_like(a)
    alpha = grad.mean(tuple(range(2, a.dim())), keepdim=True)
    cam = F.relu((alpha * a).sum(1, keepdim=True)).detach()
    mode = "bilinear" if a.dim() == 4 else "trilinear"
    return F.interpolate(cam, size=tuple(size), mode=mode, align_corners=False)[:, 0]


def seg_grad_cam(
    model_fn: Callable[[Tensor], Tensor], target: nn.Module | CamTarget, x: Tensor,
    classes: Sequence[int] | None = None, region: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(cam [B, *spatial], logits)`` for the summed score ``S`` of ``model_fn(x) -> logits [B, K, ...]``."""
    logits, a = _forward_with_activation(model_fn, _as_target(target), x)
    (grad,) = torch.autograd.grad(segmentation_score(logits, classes, region), a, allow_unused=True)
    return _cam(a, grad, x.shape[2:]), logits.detach()


def seg_grad_cam_per_class(
    model_fn: Callable[[Tensor], Tensor], target: nn.Module | CamTarget, x: Tensor,
    classes: Sequence[int] | None = None, region: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(cams [B, C, *spatial], logits)``: one Seg-Grad-CAM per class of ``classes`` (default 1..K-1),
    channel ``j`` for score ``S_{classes[j]}``; one forward, one backward per class."""
    logits, a = _forward_with_activation(model_fn, _as_target(target), x)
    k = logits.shape[1]
    cls = list(range(1, k)) if classes is None else list(classes)
    if not cls:
        raise TuneppError("Grad-CAM per class: no class to explain (a 1-class network has no foreground)")
    bad = [c for c in cls if not 0 <= c < k]
    if bad:
        raise TuneppError(f"Grad-CAM classes {bad} are outside the network's 0..{k - 1}")
    cams = []
    for j, c in enumerate(cls):
        score = segmentation_score(logits, [c], region)
        (grad,) = torch.autograd.grad(score, a, allow_unused=True, retain_graph=j < len(cls) - 1)
        cams.append(_cam(a, grad, x.shape[2:]))
    return torch.stack(cams, 1), logits.detach()


def resolve_target(net: nn.Module, name: str = DEFAULT_TARGET) -> CamTarget:
    """The Grad-CAM activation named ``name``: ``"last_conv"`` (the input of the 1x1 classifier ``out``:
    after every dropout site, module docstring), ``"bottleneck"`` (the deepest encoder stage's output:
    TUNE++ ``encoder.{L-1}``, the 2D U-Net's ``enc.{L-1}``), or the output of any module of
    ``net.named_modules()``; an unknown name is a one-line error."""
    if name == LAST_CONV:
        out = getattr(net, "out", None)
        if not isinstance(out, nn.Conv2d | nn.Conv3d):
            raise TuneppError(f"Grad-CAM target '{LAST_CONV}' needs a 1x1 classifier conv named 'out' "
                              f"(this network is a {type(net).__name__})")
        return CamTarget(out, "input")
    if name == BOTTLENECK:
        for attr in ("encoder", "enc"):
            stages = getattr(net, attr, None)
            if isinstance(stages, nn.ModuleList) and len(stages):
                return CamTarget(stages[-1], "output")
    modules = dict(net.named_modules())
    if name not in modules or not name:
        top = [n for n, _ in net.named_children()]
        raise TuneppError(f"Grad-CAM target '{name}' is not a module of the network (top level: {top}; "
                          f"use '{LAST_CONV}', '{BOTTLENECK}' or a dotted name such as 'encoder.1')")
    return CamTarget(modules[name], "output")


__all__ = [
    "BOTTLENECK",
    "DEFAULT_TARGET",
    "LAST_CONV",
    "CamTarget",
    "resolve_target",
    "seg_grad_cam",
    "seg_grad_cam_per_class",
    "segmentation_score",
]
