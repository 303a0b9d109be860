"""Size, cost and MC-dropout layout of a configured network (``tunepp model-info``).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; counts
convolutions, transposed convolutions and matrix products — not norms, activations, softmax or
pooling, which are memory-bound and a few percent at most). The count runs on the ``meta`` device:
shapes only, no memory and no arithmetic, so a UNETR++-sized network at 96^3 is summarised in
about a second on a laptop CPU.

The trunk/head split tells the deployer what MC dropout costs: the trunk runs once per window, the
head once per sample, so S samples cost ``trunk + S * head``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.model.blocks.conv import Int3
from tunepp_deploy.model.blocks.dropout import DropoutSite
from tunepp_deploy.model.network import TUNEPP, build_network


@dataclass(frozen=True)
class ModelSummary:
    """What ``tunepp model-info`` prints.

    ``gflops`` is one deterministic forward of one window; ``trunk_gflops + head_gflops`` equals it
    (up to the deep-supervision heads, which inference does not run).
    """

    parameters: int
    window: Int3
    total_stride: Int3
    gflops: float
    trunk_gflops: float
    head_gflops: float
    sites: list[DropoutSite]
    trunk_outputs: list[tuple[str, tuple[int, ...]]]

    @property
    def trunk_share(self) -> float:
        """Fraction of a single pass's FLOPs spent before the first dropout site."""
        total = self.trunk_gflops + self.head_gflops
        return self.trunk_gflops / total if total else 0.0

    def mc_gflops(self, samples: int) -> float:
        """FLOPs of ``samples`` MC samples of one window with the trunk run once."""
        return self.trunk_gflops + samples * self.head_gflops


def _count(fn: Callable[..., object], *args: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def summarize_network(net: TUNEPP, window: Sequence[int], in_channels: int) -> ModelSummary:
    """Count parameters and FLOPs of ``net`` (any device) for one window of size ``window``."""
    win: Int3 = tuple(int(w) for w in window)  # type: ignore[assignment]
    net.check_window(win)
    params = sum(p.numel() for p in net.parameters())
    meta = _to_meta(net)
    meta.eval()
    x = torch.empty(1, in_channels, *win, device="meta")
    with torch.no_grad():
        total = _count(meta, x)
        trunk_out = meta.trunk(x)
        trunk = _count(meta.trunk, x)
        masks = [s.ones_mask(win, 1, device="meta") for s in meta.dropout_sites()]
        head = _count(meta.head, *trunk_out, *masks)
    names = net.trunk_output_names()
    shapes = net.trunk_output_shapes(win, 1)
    return ModelSummary(
        parameters=params,
        window=win,
        total_stride=net.total_stride,
        gflops=total,
        trunk_gflops=trunk,
        head_gflops=head,
        sites=net.dropout_sites(),
        trunk_outputs=list(zip(names, shapes, strict=True)),
    )


def _to_meta(net: TUNEPP) -> TUNEPP:
    """A shape-only copy of ``net`` (parameters on ``meta``); ``net`` itself is left untouched."""
    import copy

    with torch.device("meta"):
        clone = copy.deepcopy(net).to("meta")
    return clone


def summarize(cfg: TuneppConfig, window: Sequence[int] | None = None) -> ModelSummary:
    """Build the network of ``cfg`` and summarise it at ``window`` (default: the training crop)."""
    with torch.device("meta"):
        net = build_network(cfg)
    return summarize_network(net, window or cfg.data.crop_size, cfg.model.in_channels)


__all__ = ["ModelSummary", "summarize", "summarize_network"]
