r"""Uncertainty maps from S samples (definitions used by every method of the toolkit).

Per voxel, sample ``s`` (one dropout mask set, one weight-noise draw, ...) gives a predictive
``p_s [K]``. For TUNE++ it already includes the heteroscedastic head's logit noise,
``p_s = mean_t softmax(z_s + sigma_s eps_t)`` (:mod:`tunepp_deploy.infer.logit_noise`, Kendall & Gal
2017); for methods without an aleatoric head it is the softmax. With ``p_bar = mean_s p_s``:

* **total** ``= 1 - sum_k p_bar_k^2`` — the Gini impurity of the predictive, i.e. ``sum_k Var[y_k]``
  of a one-hot label ``y`` drawn from the whole predictive (dropout *and* logit noise);
* **aleatoric** ``= mean_s (1 - sum_k p_{s,k}^2)`` — the label variance each sampled network itself
  predicts (expected Gini impurity); with sigma -> 0 it is the expected Gini of the plain softmax;
* **epistemic** ``= sum_k Var_s[p_{s,k}]`` (population variance, 1/S) — the spread between networks.

They add up *exactly*: ``total = aleatoric + epistemic`` is the law of total variance for ``y``
(tested). Next to them, in nats, the entropy decomposition: **predictive entropy** ``H[p_bar]`` =
**mutual information** (BALD, epistemic) + **expected entropy** ``mean_s H[p_s]`` (aleatoric).

Why sampled rather than first-order: a delta-method map ``sigma^2 ||J||^2`` is ~0 exactly where the
aleatoric head carries information — a large logit margin with a larger sigma, where noise flips the
argmax (margin 8, sigma 4: first order 5e-5 against 0.26 by Monte Carlo). Sampling is exact in
expectation and costs only softmaxes of the last layer.

**Blending** (sliding windows): each sample's predictive is stitched over the whole scan and the
statistics are taken over the stitched samples (exact; :mod:`tunepp_deploy.infer.sampling` streams
the samples so memory does not grow with S). The explicit ``--blend window`` alternative blends
per-window moments instead: ``total`` stays exact (it depends on ``p_bar`` alone, which is linear),
but the split moves variance from aleatoric to epistemic where windows overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_EPS = 1e-12


def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim)


def gini_impurity(p: torch.Tensor, dim: int) -> torch.Tensor:
    """``1 - sum_k p_k^2`` along the class axis ``dim`` (the variance of a one-hot draw from ``p``)."""
    return 1.0 - (p * p).sum(dim)


def epistemic_variance(probs: torch.Tensor) -> torch.Tensor:
    """``sum_k Var_s[p]`` for ``probs`` of shape ``[S, K, ...]`` -> ``[...]`` (population variance)."""
    return probs.var(dim=0, unbiased=False).sum(0)


@dataclass
class UncertaintyMaps:
    """Per-voxel results of sampling on one grid (tensors ``[...]`` unless noted)."""

    mean_probs: torch.Tensor  # [K, ...]
    epistemic: torch.Tensor
    aleatoric: torch.Tensor
    predictive_entropy: torch.Tensor
    mutual_information: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.epistemic + self.aleatoric

    @property
    def expected_entropy(self) -> torch.Tensor:
        return (self.predictive_entropy - self.mutual_information).clamp_min(0.0)

    def stacked(self) -> torch.Tensor:
        """``[K + 4, ...]``: probabilities then epistemic, aleatoric, predictive entropy, MI."""
        return torch.cat(
            [self.mean_probs, *(t[None] for t in (self.epistemic, self.aleatoric, self.predictive_entropy,
                                                   self.mutual_information))]
        )

    @classmethod
    def unstack(cls, t: torch.Tensor) -> UncertaintyMaps:
        """Inverse of :meth:`stacked` (e.g. after resampling all maps at once)."""
        k = t.shape[0] - 4
        return cls(t[:k], t[k], t[k + 1], t[k + 2], t[k + 3])


def maps_from_samples(probs: torch.Tensor) -> UncertaintyMaps:
    """The definitions applied to all samples at once, ``probs [S, K, ...]`` (the reference the
    streaming accumulator :class:`~tunepp_deploy.infer.moments.SampleStats` is tested against)."""
    mean = probs.mean(0)
    pe = entropy(mean, 0)
    ee = entropy(probs, 1).mean(0)
    return UncertaintyMaps(mean, epistemic_variance(probs), gini_impurity(probs, 1).mean(0), pe,
                           (pe - ee).clamp_min(0.0))


def clamp_and_sum(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """After trilinear resampling: every map >= 0 and ``total = aleatoric + epistemic`` exactly again."""
    out = {k: np.maximum(v, 0.0).astype(np.float32) for k, v in maps.items()}
    if "aleatoric" in out and "epistemic" in out:
        out["total"] = out["aleatoric"] + out["epistemic"]
    return out


__all__ = ["UncertaintyMaps", "clamp_and_sum", "entropy", "epistemic_variance", "gini_impurity", "maps_from_samples"]
