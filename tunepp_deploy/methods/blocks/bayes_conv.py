r"""Mean-field Gaussian 3D convolution with the weight noise as an explicit input.

Each weight has a posterior ``q(w) = N(mu, sigma^2)`` (``mu ~ N(0, 0.02)``, ``log sigma^2 = -5`` at
init, as in the seed's code) and the prior is ``N(0, 1)``; the KL term has the closed form

    KL(q || p) = 0.5 * sum( -1 - log sigma^2 + mu^2 + sigma^2 ).

**Three ways to run the layer**

* training (``eps=None``, ``self.training``): the *local reparameterisation*
  ``out = conv(x, mu) + xi * sqrt(conv(x^2, sigma^2) + 1e-10)`` with ``xi ~ N(0, 1)`` per
  activation — the gradient estimator the seed uses (lower variance than sampling weights);
* sampling for deployment (``eps`` given, shaped like the weight): the *weight-space* sample
  ``w = mu + sigma * eps``, ``out = conv(x, w)``. We export this form and not the activation-noise
  one because ``eps`` is then independent of the window size and of the batch, so one ``eps`` per
  layer is one network sample ``f_s`` for every window of a scan (stitched windows are exactly
  ``f_s`` on the whole volume, as with TUNE++'s per-sample dropout masks), it is drawn from a seed
  by our runtime (ONNX Runtime / TensorRT random ops cannot be seeded, see deployment-facts.md),
  and torch and ONNX Runtime see identical samples;
* posterior mean (``eps=None``, eval mode): ``out = conv(x, mu)``.

The bias is deterministic (a point estimate): the seed's layer puts the distribution on the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tunepp_deploy.model.blocks.conv3d import conv3d

MU_INIT_STD = 0.02
LOG_VAR_INIT = -5.0
_VAR_FLOOR = 1e-10


class NoiseFeed:
    """Maps each :class:`BayesConv3d` of a network to its weight-noise tensor (or to None).

    Keyed by layer, so the order in which a network *calls* its layers does not have to match the
    order of :meth:`torch.nn.Module.modules` (the order of the noise inputs). Pure Python
    bookkeeping: both torch exporters trace through it. :meth:`finish` checks every tensor was used.
    """

    def __init__(self, layers: Sequence[nn.Module], noise: Sequence[Tensor] | None) -> None:
        if noise is not None and len(noise) != len(layers):
            raise ValueError(f"the network has {len(layers)} Bayesian layers, got {len(noise)} noise tensors")
        self._map = dict(zip(layers, noise, strict=True)) if noise is not None else None
        self._used = 0

    def get(self, layer: nn.Module) -> Tensor | None:
        if self._map is None:
            return None
        self._used += 1
        return self._map[layer]

    def finish(self) -> None:
        if self._map is not None and self._used != len(self._map):
            raise ValueError(f"{len(self._map)} noise tensors given, {self._used} layer calls used them")


class BayesConv3d(nn.Module):
    """3D convolution with a factorised Gaussian posterior on its kernel (module docstring)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        shape = (out_ch, in_ch, kernel_size, kernel_size, kernel_size)
        self.weight_mu = nn.Parameter(torch.randn(shape) * MU_INIT_STD)
        self.weight_log_var = nn.Parameter(torch.full(shape, LOG_VAR_INIT))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.weight_mu.shape)

    def _conv(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return conv3d(x, w, bias, stride=self.stride, padding=self.padding)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        if eps is not None:
            if tuple(eps.shape) != self.weight_shape:
                raise ValueError(f"weight noise must be {self.weight_shape}, got {tuple(eps.shape)}")
            w = self.weight_mu + torch.exp(0.5 * self.weight_log_var) * eps.to(x.dtype)
            return self._conv(x, w, self.bias)
        mean = self._conv(x, self.weight_mu, self.bias)
        if not self.training:
            return mean
        var = self._conv(x * x, torch.exp(self.weight_log_var), None)
        return mean + torch.randn_like(mean) * torch.sqrt(var + _VAR_FLOOR)

    def kl(self) -> Tensor:
        """``KL(q || N(0, 1))`` summed over the kernel (closed form, module docstring)."""
        lv = self.weight_log_var
        return 0.5 * (-1.0 - lv + self.weight_mu**2 + torch.exp(lv)).sum()

    def extra_repr(self) -> str:
        return f"weight={self.weight_shape}, stride={self.stride}, padding={self.padding}"


__all__ = ["LOG_VAR_INIT", "MU_INIT_STD", "BayesConv3d", "NoiseFeed"]
