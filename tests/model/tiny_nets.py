"""Tiny TUNE++ networks for fast model tests (total stride 4 -> windows like 16x16x8)."""

from __future__ import annotations

import torch

from tunepp_deploy.model import TUNEPP


def make_net(sites: tuple[str, ...] = ("dec0", "head"), mode: str = "channel", p: float = 0.25) -> TUNEPP:
    """A 2-stage network (widths 8/16) with 3 classes and the given dropout sites."""
    torch.manual_seed(0)
    return TUNEPP(
        in_channels=1,
        num_classes=3,
        widths=[8, 16],
        depths=[1, 1],
        decoder_depths=[1],
        stem_stride=(2, 2, 2),
        heads=2,
        proj_tokens=8,
        dropout_sites=sites,
        dropout_p=p,
        dropout_mode=mode,  # type: ignore[arg-type]
    )
