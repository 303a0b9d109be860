r"""Uncertainty maps of a variational network from S weight samples, in the units of TUNE++'s maps.

The variational networks have no aleatoric head, so the aleatoric term cannot be TUNE++'s
delta-method map (:mod:`tunepp_deploy.infer.uncertainty`). It is defined here so that all three maps
stay *variances of the class probabilities* and total = aleatoric + epistemic stays meaningful:
with ``p_s`` the softmax of weight sample ``s`` and ``p_bar = mean_s p_s``,

* **epistemic** ``= sum_k Var_s[p_{s,k}]`` (population variance, as
  :func:`tunepp_deploy.infer.uncertainty.epistemic_variance`);
* **aleatoric** ``= mean_s (1 - sum_k p_{s,k}^2)`` — the expected Gini impurity, which is exactly
  ``sum_k Var[y_k]`` for a one-hot label ``y`` drawn from ``p_s``: the label noise each sampled
  network itself predicts;
* **total** ``= aleatoric + epistemic = 1 - sum_k p_bar_k^2`` *exactly* (law of total variance for
  ``y`` drawn from the mixture ``p_bar``; tested), i.e. the Gini impurity of the predictive mean.

So TUNE++'s aleatoric map (``min(sigma^2 ||J||^2, 1 - sum p^2)``) and this one share the cap and
the units; a VI map is the value a TUNE++ map would take if its logit noise were unbounded.

:class:`SampleMoments` accumulates the samples one stitched volume at a time (float64 sums), so a
scan needs ~4 K-channel maps of memory instead of ``S * K`` — what :func:`variational_maps` would
hold for all samples at once (it is the reference the streaming version is tested against).
"""

from __future__ import annotations

import torch

from tunepp_deploy.infer.uncertainty import UncertaintyMaps, entropy, from_samples


def gini_impurity(p: torch.Tensor, dim: int) -> torch.Tensor:
    """``1 - sum_k p_k^2`` along the class axis ``dim`` (the variance of a one-hot draw from ``p``)."""
    return 1.0 - (p * p).sum(dim)


def variational_maps(probs: torch.Tensor) -> UncertaintyMaps:
    """Maps from all samples at once: ``probs [S, K, ...]`` (module docstring for the definitions)."""
    return from_samples(probs, gini_impurity(probs, 1).mean(0))


class SampleMoments:
    """Running sums over weight samples of ``p``, ``p^2``, ``1 - sum p^2`` and ``H[p]``; :meth:`maps` at the end."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: torch.Tensor | None = None
        self._sum_sq: torch.Tensor | None = None
        self._gini: torch.Tensor | None = None
        self._entropy: torch.Tensor | None = None

    def add(self, p: torch.Tensor) -> None:
        """One sample's stitched softmax ``[K, ...]``."""
        p64 = p.double()
        if self._sum is None:
            self._sum, self._sum_sq = torch.zeros_like(p64), torch.zeros_like(p64)
            self._gini, self._entropy = torch.zeros_like(p64[0]), torch.zeros_like(p64[0])
        assert self._sum_sq is not None and self._gini is not None and self._entropy is not None
        self._sum += p64
        self._sum_sq += p64 * p64
        self._gini += gini_impurity(p64, 0)
        self._entropy += entropy(p64, 0)
        self.count += 1

    def maps(self) -> UncertaintyMaps:
        """The maps of :func:`variational_maps` (float32), from the sums."""
        if self._sum is None:
            raise ValueError("no samples were added")
        assert self._sum_sq is not None and self._gini is not None and self._entropy is not None
        n = float(self.count)
        mean = self._sum / n
        epistemic = (self._sum_sq / n - mean * mean).sum(0).clamp_min(0.0)
        pe = entropy(mean, 0)
        mi = (pe - self._entropy / n).clamp_min(0.0)
        return UncertaintyMaps(mean.float(), epistemic.float(), (self._gini / n).float(), pe.float(), mi.float())


__all__ = ["SampleMoments", "gini_impurity", "variational_maps"]
