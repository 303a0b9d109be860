"""Frozen TUNE++ backbone + SegWithU head as one module, and its safe checkpoint format.

``SegWithU.forward(x)`` runs the backbone once (deterministic: eval mode, no masks), taps its
decoder (:mod:`.taps`) and applies the head (:mod:`.head`). The checkpoint is self-contained: the
backbone's config and weights travel with the head's, loadable with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.methods.segwithu.head import DEFAULT_RANK, DEFAULT_WIDTH, SegWithUHead, SegWithUOutput
from tunepp_deploy.methods.segwithu.taps import BackboneTaps, tap_channels
from tunepp_deploy.model import TUNEPP, build_network
from tunepp_deploy.model.blocks.topology_branch import without_retired
from tunepp_deploy.train.checkpoint import read_method_checkpoint

CHECKPOINT_METHOD = "segwithu"


class SegWithU(nn.Module):
    """``forward(x) -> (raw logits, SegWithUOutput)``."""

    def __init__(self, backbone: TUNEPP, width: int = DEFAULT_WIDTH, rank: int = DEFAULT_RANK) -> None:
        super().__init__()
        self.taps = BackboneTaps(backbone)
        self.head = SegWithUHead(tap_channels(backbone), backbone.num_classes, width, rank)
        self.width, self.rank = width, rank

    @property
    def backbone(self) -> TUNEPP:
        return self.taps.net

    def forward(self, x: Tensor) -> tuple[Tensor, SegWithUOutput]:
        with torch.no_grad():
            logits, feats = self.taps(x)
        return logits, self.head(logits, feats)


def save_segwithu(path: str | Path, model: SegWithU, cfg: TuneppConfig, **extra: Any) -> Path:
    state = {
        "format": 1, "method": CHECKPOINT_METHOD, "config": config_to_dict(cfg),
        "head": {"width": model.width, "rank": model.rank},
        "backbone_state": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "head_state": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        **extra,
    }
    p = Path(path)
    write_atomic(p, lambda t: torch.save(state, t))
    return p


def load_segwithu(path: str | Path) -> tuple[SegWithU, TuneppConfig]:
    """``(model in eval mode, backbone config)``; other files are refused in one line."""
    p = Path(path)
    ckpt = read_method_checkpoint(p, CHECKPOINT_METHOD, "SegWithU head", "tunepp train-head")
    cfg = config_from_dict(ckpt["config"], str(p))
    backbone = build_network(cfg)
    backbone.load_state_dict(without_retired(backbone, ckpt["backbone_state"]))
    model = SegWithU(backbone, **ckpt["head"])
    model.head.load_state_dict(ckpt["head_state"])
    return model.eval(), cfg


__all__ = ["CHECKPOINT_METHOD", "SegWithU", "load_segwithu", "save_segwithu"]
