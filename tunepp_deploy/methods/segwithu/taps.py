"""Read three decoder features out of a frozen TUNE++ backbone with forward hooks.

SegWithU's public code takes the inputs of three decoder modules of a DynUNet (1/4, 1/2 and full
resolution). On TUNE++ the equivalent features are the outputs of the last three positions of
:attr:`TUNEPP.positions` — e.g. ``dec1`` (stride 4), ``dec0`` (stride 2) and ``head`` (stride 1) on
the phantom network — i.e. the decoder TUPA stacks and the full-resolution block, *before* dropout.
Hooks rather than a re-implementation of the decoder: the backbone runs its own ``forward``
unchanged (eval mode, no masks: the deterministic network), so the taps cannot drift from it.
The backbone's parameters are frozen (``requires_grad=False``), never its graph: the head's
gradients do not need it, and nothing downstream back-propagates into the backbone.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from tunepp_deploy.model import TUNEPP


def tap_positions(net: TUNEPP) -> list[str]:
    """The three finest positions of ``net`` (coarsest first)."""
    return list(net.positions[-3:])


def _module_at(net: TUNEPP, position: str) -> nn.Module:
    if position == "bottleneck":
        return net.encoder[-1]
    if position == "head":
        return net.final
    return net.decoder[int(position[3:])]


def tap_channels(net: TUNEPP) -> list[int]:
    """Channels of the tapped features, in :func:`tap_positions` order."""
    out = []
    for p in tap_positions(net):
        if p == "head":
            out.append(net.full_res_channels)
        elif p == "bottleneck":
            out.append(net.widths[-1])
        else:
            out.append(net.widths[int(p[3:])])
    return out


class BackboneTaps(nn.Module):
    """``forward(x) -> (logits, [f_coarse, f_mid, f_full])`` of a frozen, deterministic TUNE++."""

    def __init__(self, net: TUNEPP) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.positions = tap_positions(net)
        self._store: dict[str, Tensor] = {}
        for name in self.positions:
            _module_at(net, name).register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            self._store[name] = out

        return hook

    def train(self, mode: bool = True) -> BackboneTaps:
        """The backbone stays in eval mode whatever the head does (frozen, deterministic)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        self._store.clear()
        logits = self.net(x, with_aux=False).logits
        return logits, [self._store[n] for n in self.positions]


__all__ = ["BackboneTaps", "tap_channels", "tap_positions"]
