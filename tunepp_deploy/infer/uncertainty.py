r"""Uncertainty maps from S Monte-Carlo samples of TUNE++ (definitions used everywhere in the toolkit).

Per voxel, sample ``s`` gives class probabilities ``p_s = softmax(z_s)`` (K classes) and the
aleatoric head's log-variance ``log sigma_s^2`` of the logits ``z_s`` (one value shared by all
classes, the heteroscedastic model the network is trained with). With ``p_bar = mean_s p_s``:

* **epistemic** ``= sum_k Var_s[p_{s,k}]`` — the variance of the softmax across dropout samples,
  summed over classes (population variance, 1/S: it is the variance of the empirical predictive
  distribution, and it is exactly 0 for S = 1 or p = 0, when all samples coincide).
* **aleatoric** ``= mean_s A(p_s, sigma_s^2)`` where ``A`` maps the *logit* variance to the
  *probability-space* variance that Gaussian logit noise ``z + sigma * eps`` causes, to first order
  (delta method): ``Cov[p] ~ sigma^2 J J^T`` with the softmax Jacobian ``J = diag(p) - p p^T``, so

      A(p, sigma^2) = min( sigma^2 * ||J||_F^2 ,  1 - sum_k p_k^2 ),
      ||J||_F^2 = sum_k p_k^2 - 2 sum_k p_k^3 + (sum_k p_k^2)^2.

  The cap is the largest ``sum_k Var[p_k]`` any distribution on the simplex with mean ``p`` can
  have (a random one-hot vector), which the first-order term can overshoot when sigma is large.
* **total** ``= epistemic + aleatoric``. Why this mapping and not ``mean exp(log_var)`` or the
  expected entropy: both terms are then variances of the *same* random quantity (the class
  probabilities) and by the law of total variance their sum is, to first order, the variance of
  ``p`` under dropout *and* logit noise together — so "total" is a meaningful sum. ``exp(log_var)``
  is in logit units (and ignores that a huge logit margin makes noise harmless); the expected
  entropy measures aleatoric uncertainty from the dropout samples alone and never looks at the
  aleatoric head the network was trained for.
* also reported: **predictive entropy** ``H[p_bar]`` (nats), **expected entropy** ``mean_s H[p_s]``
  and **mutual information** ``MI = H[p_bar] - mean_s H[p_s] >= 0`` (the entropy-based epistemic
  term, BALD).

**Blending** (sliding windows): what must be accumulated across overlapping windows is each
sample's softmax. Blending per sample and then taking statistics over samples is the exact MC over
the stitched volume (sample s is one coherent network over the whole scan, see
:mod:`tunepp_deploy.infer.masks`); computing mean/variance per window and blending those is a
cheaper approximation that over-estimates the variance where windows overlap (the variance of a
weighted average is at most the weighted average of the variances). :mod:`tunepp_deploy.infer.mc`
uses the exact per-sample blend when ``S * K`` maps fit the memory budget and falls back otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-12


def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim)


def epistemic_variance(probs: torch.Tensor) -> torch.Tensor:
    """``sum_k Var_s[p]`` for ``probs`` of shape ``[S, K, ...]`` -> ``[...]`` (population variance)."""
    return probs.var(dim=0, unbiased=False).sum(0)


def softmax_jacobian_sq_norm(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``||diag(p) - p p^T||_F^2 = sum p^2 - 2 sum p^3 + (sum p^2)^2`` along the class ``dim``."""
    s2 = (p * p).sum(dim)
    s3 = (p * p * p).sum(dim)
    return s2 - 2.0 * s3 + s2 * s2


def aleatoric_variance(p: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Probability-space aleatoric variance ``A(p, sigma^2)`` (module docstring).

    ``p``: ``[N, K, ...]`` softmax probabilities; ``log_var``: ``[N, 1, ...]`` logit log-variance.
    Returns ``[N, 1, ...]``.
    """
    var = torch.exp(log_var.float())[:, 0]
    first_order = var * softmax_jacobian_sq_norm(p, dim=1)
    cap = 1.0 - (p * p).sum(1)
    return torch.minimum(first_order, cap).clamp_min(0.0)[:, None]


@dataclass
class UncertaintyMaps:
    """Per-voxel results of MC inference on one grid (tensors ``[...]`` unless noted)."""

    mean_probs: torch.Tensor  # [K, ...]
    epistemic: torch.Tensor
    aleatoric: torch.Tensor
    predictive_entropy: torch.Tensor
    mutual_information: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.epistemic + self.aleatoric

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


def from_samples(probs: torch.Tensor, aleatoric: torch.Tensor) -> UncertaintyMaps:
    """Maps from per-sample probabilities ``[S, K, ...]`` and the sample-mean aleatoric ``[...]``."""
    mean = probs.mean(0)
    pe = entropy(mean, 0)
    ee = entropy(probs, 1).mean(0)
    return UncertaintyMaps(mean, epistemic_variance(probs), aleatoric, pe, (pe - ee).clamp_min(0.0))


def from_moments(
    mean: torch.Tensor, epistemic: torch.Tensor, expected_entropy: torch.Tensor, aleatoric: torch.Tensor
) -> UncertaintyMaps:
    """Maps from blended per-window moments (the approximate blend; module docstring)."""
    pe = entropy(mean, 0)
    return UncertaintyMaps(mean, epistemic, aleatoric, pe, (pe - expected_entropy).clamp_min(0.0))


__all__ = [
    "UncertaintyMaps",
    "aleatoric_variance",
    "entropy",
    "epistemic_variance",
    "from_moments",
    "from_samples",
    "softmax_jacobian_sq_norm",
]
