r"""Seg-Grad-CAM (Vinogradova et al. 2020) for 2D and 3D segmentation networks.

For a target layer with activations ``A_k`` (k = channels) and a segmentation score

    S = sum_c sum_{v : pred(v) = c} z_c(v)        (each class's logits over its predicted mask),

the channel weights are the spatial means of the gradient, ``alpha_k = mean_v dS / dA_k(v)``, and
the map is ``ReLU(sum_k alpha_k A_k)`` up-sampled (bi/trilinear) to the input grid. ``classes``
restricts the sum (default: every foreground class 1..K-1); ``region`` replaces the predicted masks.
The target layer is any module (its *output* is ``A``); the bottleneck works well for a U-Net
(coarse, semantic). Works with frozen weights: the activation is made a leaf that requires grad.

:func:`resolve_target` names the target of a 3D TUNE++ network. The bottleneck is the default because
it is the coarsest, most semantic encoder feature (as in the seed's 2D U-Net). In TUNE++ it lies
before the default dropout sites, so its *activation* is the same for every MC sample; what differs
per sample is the gradient flowing back through the sample's dropped channels — exactly what the
saliency variance measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.errors import TuneppError

#: Name :func:`resolve_target` maps to the network's deepest encoder stage.
BOTTLENECK = "bottleneck"


def segmentation_score(logits: Tensor, classes: Sequence[int] | None = None, region: Tensor | None = None) -> Tensor:
    """``S`` of the module docstring, summed over the batch (each item's gradient is its own)."""
    k = logits.shape[1]
    classes = list(range(1, k)) if classes is None else list(classes)
    pred = logits.argmax(1) if region is None else region
    return sum((logits[:, c] * (pred == c).to(logits.dtype)).sum() for c in classes)  # type: ignore[return-value]


def seg_grad_cam(
    model_fn: Callable[[Tensor], Tensor], target: nn.Module, x: Tensor, classes: Sequence[int] | None = None,
    region: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(cam [B, *spatial], logits)`` for one forward of ``model_fn(x) -> logits [B, K, *spatial]``."""
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> Tensor:
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        store["a"] = out
        return out

    handle = target.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model_fn(x)
            a = store["a"]
            (grad,) = torch.autograd.grad(segmentation_score(logits, classes, region), a, allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        grad = torch.zeros_like(a)
    dims = tuple(range(2, a.dim()))
    alpha = grad.mean(dims, keepdim=True)
    cam = F.relu((alpha * a).sum(1, keepdim=True)).detach()
    mode = "bilinear" if a.dim() == 4 else "trilinear"
    cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return cam[:, 0], logits.detach()


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


__all__ = ["BOTTLENECK", "resolve_target", "seg_grad_cam", "segmentation_score"]
