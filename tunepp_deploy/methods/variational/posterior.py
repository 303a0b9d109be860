"""How wide a trained variational posterior is: the distribution of ``sigma`` per Bayesian layer.

Why a summary and not the mean alone: mean-field posteriors are typically bimodal (most weights
near the prior, a few pinned narrow by the data), and the question "did the objective move sigma
away from its initial value" is answered by the percentiles, not by a mean that a handful of
widened weights can shift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.methods.variational.base import BayesianSegNet


@dataclass(frozen=True)
class SigmaStats:
    """``sigma = exp(0.5 log sigma^2)`` over the weights of one layer (or of all, ``layer="all"``)."""

    layer: str
    weights: int
    mean: float
    median: float
    p05: float
    p95: float
    mean_log_var: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _stats(name: str, log_var: np.ndarray) -> SigmaStats:
    sigma = np.exp(0.5 * log_var)
    p05, med, p95 = np.percentile(sigma, [5.0, 50.0, 95.0])
    return SigmaStats(name, int(sigma.size), float(sigma.mean()), float(med), float(p05), float(p95),
                      float(log_var.mean()))


@torch.no_grad()
def sigma_summary(net: BayesianSegNet) -> list[SigmaStats]:
    """One :class:`SigmaStats` per Bayesian layer (module names, in noise-input order), then ``"all"``."""
    names = {m: n for n, m in net.named_modules()}
    layers = net.bayes_layers()
    if not layers:
        raise TuneppError("the network has no Bayesian layers")
    out, every = [], []
    for m in layers:
        lv = m.weight_log_var.detach().double().cpu().numpy().ravel()
        every.append(lv)
        out.append(_stats(names[m], lv))
    out.append(_stats("all", np.concatenate(every)))
    return out


__all__ = ["SigmaStats", "sigma_summary"]
