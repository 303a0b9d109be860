r"""Training objective of the SegWithU head on the backbone's error target ``e = [argmax z != y]``.

==============  ======  ==========================================================================
term            weight  definition
==============  ======  ==========================================================================
NLL             0.5     cross-entropy of the tempered logits ``z / T`` (calibration map)
error BCE       0.25    BCE-with-logits of the batch-z-scored ``U_rnk`` against ``e``
pairwise        0.25    ``softplus(u_correct - u_error)`` over up to 65,536 sampled (error, correct)
                        voxel pairs: every error should rank above every correct voxel
tail            0.25    ``sum_v softmax(-u~ / 0.25)_v e_v`` with ``u~`` the z-scored ranking map: the
                        error mass among the voxels the map calls most certain
trust           0.05    ``mean log T`` — tempering costs something, so T stays 1 where not needed
anchor          0.05    ``mean (U_rnk - A)^2`` — the learned ranking map stays near its anchor
residual        0.05    ``mean R`` — bounded perturbation energy
==============  ======  ==========================================================================

The first four are as in the public code; the three regularisers are named there but not
specified in the reference we have, so these definitions are ours (documented, small weights).
Pairs are drawn from a caller-supplied ``torch.Generator``: the loss is reproducible from a seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tunepp_deploy.methods.segwithu.head import SegWithUOutput

MAX_PAIRS = 65_536
TAIL_TAU = 0.25
WEIGHTS = {"nll": 0.5, "bce": 0.25, "pair": 0.25, "tail": 0.25, "trust": 0.05, "anchor": 0.05, "residual": 0.05}


def _zscore(u: Tensor) -> Tensor:
    return (u - u.mean()) / (u.std() + 1e-6)


def pairwise_ranking(u: Tensor, e: Tensor, generator: torch.Generator | None, max_pairs: int = MAX_PAIRS) -> Tensor:
    """Mean ``softplus(u_neg - u_pos)`` over random (error = pos, correct = neg) pairs; 0 without both."""
    pos, neg = u[e], u[~e]
    if pos.numel() == 0 or neg.numel() == 0:
        return u.sum() * 0.0
    n = min(max_pairs, pos.numel() * neg.numel())
    i = torch.randint(pos.numel(), (n,), generator=generator, device="cpu").to(u.device)
    j = torch.randint(neg.numel(), (n,), generator=generator, device="cpu").to(u.device)
    return F.softplus(neg[j] - pos[i]).mean()


def segwithu_loss(
    out: SegWithUOutput, raw_logits: Tensor, target: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, dict[str, float]]:
    """``(total, parts)`` (module docstring); ``target`` int labels ``[B, ...]``."""
    target = target.long()
    e = raw_logits.argmax(1) != target
    u = out.u_rnk[:, 0]
    uz = _zscore(u)
    parts = {
        "nll": F.cross_entropy(out.tempered_logits, target),
        "bce": F.binary_cross_entropy_with_logits(uz, e.float()),
        "pair": pairwise_ranking(u, e, generator),
        "tail": (torch.softmax(-uz.flatten() / TAIL_TAU, 0) * e.flatten().float()).sum(),
        "trust": torch.log(out.temperature).mean(),
        "anchor": (out.u_rnk - out.anchor).square().mean(),
        "residual": out.residual.mean(),
    }
    total = sum(WEIGHTS[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]


__all__ = ["MAX_PAIRS", "TAIL_TAU", "WEIGHTS", "pairwise_ranking", "segwithu_loss"]
