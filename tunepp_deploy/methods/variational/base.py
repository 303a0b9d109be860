"""What every variational (Bayesian-weight) segmentation network offers the rest of the toolkit.

Contract, parallel to TUNE++'s dropout-mask interface: ``forward(x, noise)`` with ``noise`` one
standard-normal tensor per Bayesian layer, shaped like that layer's kernel and ordered as
:meth:`BayesianSegNet.bayes_layers` lists them (``None``: local reparameterisation in training,
posterior mean in eval). :meth:`kl` is the sum of the layers' closed-form KL terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed


class BayesianSegNet(nn.Module):
    """Base class: subclasses implement ``_forward(x, feed)`` and set ``total_stride``."""

    total_stride: int = 1
    num_classes: int

    def bayes_layers(self) -> list[BayesConv3d]:
        """The Bayesian layers in :meth:`modules` order = the order of the noise inputs."""
        return [m for m in self.modules() if isinstance(m, BayesConv3d)]

    def noise_shapes(self) -> list[tuple[int, ...]]:
        """Shape of each noise input (= its layer's kernel shape)."""
        return [m.weight_shape for m in self.bayes_layers()]

    def kl(self) -> Tensor:
        """Sum of the layers' ``KL(q || N(0, 1))``."""
        return torch.stack([m.kl() for m in self.bayes_layers()]).sum()

    @torch.no_grad()
    def init_log_var(self, value: float) -> None:
        """Set every Bayesian layer's ``log sigma^2`` to ``value`` (the posterior's starting width)."""
        for m in self.bayes_layers():
            m.weight_log_var.fill_(float(value))

    def check_window(self, window: Sequence[int]) -> None:
        if any(w % self.total_stride or w <= 0 for w in window):
            raise TuneppError(f"window {tuple(window)} is not divisible by the network's stride {self.total_stride}")

    def _forward(self, x: Tensor, feed: NoiseFeed) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """``[B, in, *window] -> [B, K, *window]`` logits under one weight sample (or the mean)."""
        feed = NoiseFeed(self.bayes_layers(), noise)
        out = self._forward(x, feed)
        feed.finish()
        return out


__all__ = ["BayesianSegNet"]
