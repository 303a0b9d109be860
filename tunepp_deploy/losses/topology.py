r"""lambda1 term: the topology loss, in the two distance-transform forms (formulas: docs/topology_loss.md).

``voxel`` (the seed's form)::

    L_topo = mean_{b,v} W_{b,v} * ( -log p_{b, y_{b,v}, v} )        W = 1 + w_b B + w_j J + w_a A

``component`` (charges each topological mistake once, whatever its size)::

    L_topo = mean_{b,v} S_{b,v} * ( -log p_{b,y,v} )
             + w_a / B * sum_b sum_{a in anomalies(b)} mean_{v in a} ( 1 - p_{b,y,v} )
    S = 1 + w_b B + w_j J

with W, S, B, J, A and the anomaly pieces from :mod:`tunepp_deploy.losses.complexity` (constants: no
gradient flows into them). The voxel mean of the seed's form averages the anomaly weight over all N
voxels, so a 2-voxel fragment moves the loss by ~w_a * 2 / N — measured at 1/36 of the Dice term's
pull on such voxels, too little to delete it. The component form takes the *mean* of ``1 - p_true``
over each anomalous piece, so a confidently wrong 1-voxel fragment costs ~w_a, the same as a
confidently wrong 50-voxel one, and a correct prediction has no anomaly cost; with the default
w_a = 3 and lambda1 = 0.3 one fragment weighs ~0.9, the scale of the Dice term (<= 1).

Neither form normalises by ``sum W``: that would *redistribute* weight away from other voxels instead
of *adding* loss, so a prediction with a spurious component would not necessarily score worse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def topology_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Seed form: ``L_topo`` for logits ``[B, K, ...]``, int labels ``[B, ...]`` and weights ``[B, ...]``."""
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    return (weights.to(ce.dtype) * ce).mean()


def component_term(probs: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(1/B) sum_b sum_a mean_{v in a} (1 - p_{b,y,v})`` over anomaly pieces ``ids`` ``[B, ...]``
    (int, 0 = none, per batch item 1..n_b): each piece costs its mean error probability, in [0, 1]."""
    p_true = probs.float().gather(1, labels.long().unsqueeze(1)).squeeze(1)
    err = (1.0 - p_true).flatten(1)
    ids = ids.to(err.device).long().flatten(1)
    total = err.new_zeros(())
    for b in range(err.shape[0]):
        n = int(ids[b].max())
        if n == 0:
            continue
        s = err.new_zeros(n + 1).scatter_add(0, ids[b], err[b])
        cnt = torch.bincount(ids[b], minlength=n + 1).to(err.dtype)
        total = total + (s[1:] / cnt[1:].clamp_min(1.0)).sum()
    return total / err.shape[0]


def component_topology_loss(logits: Tensor, labels: Tensor, structure: Tensor, ids: Tensor, w_a: float) -> Tensor:
    """Component form (module docstring): ``structure`` = S ``[B, ...]``, ``ids`` the anomaly pieces."""
    probs = torch.softmax(logits.float(), 1)
    return topology_loss(logits, labels, structure) + w_a * component_term(probs, labels, ids)


__all__ = ["component_term", "component_topology_loss", "topology_loss"]
