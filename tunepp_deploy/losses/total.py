r"""The TUNE++ training objective, assembled from ``cfg.loss``.

    total = L_dice + L_ce + lambda1 L_topo + lambda2 L_unc + lambda3 L_cal + lambda4 L_hier

* ``L_dice``, ``L_ce``: :mod:`.dice_ce` on the full-resolution logits;
* ``L_topo``: :mod:`.topology`, CE weighted by ``W = 1 + w_b B + w_j J + w_a A`` (:mod:`.complexity`),
  computed on the CPU in NumPy from the labels (B, J) and the **detached** arg-max prediction (A);
* ``L_unc``: :mod:`.uncertainty`, Kendall & Gal's MC-sampled heteroscedastic softmax loss with the
  log-variance head, ``T = unc_samples``;
* ``L_cal``: :mod:`.calibration`, Brier + DCA;
* ``L_hier``: :mod:`.hierarchical`, Dice + CE on the deep-supervision logits.

Every term is computed in float32 (safe under autocast). Terms whose lambda is 0 are reported as 0
and not computed (the complexity map is the expensive one: ~50 ms per 48x48x32 volume here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tunepp_deploy.config.schema import LossConfig
from tunepp_deploy.losses.calibration import calibration_loss
from tunepp_deploy.losses.complexity import complexity_weights
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.losses.hierarchical import hierarchical_loss
from tunepp_deploy.losses.topology import topology_loss
from tunepp_deploy.losses.uncertainty import heteroscedastic_loss

TERMS = ("dice", "ce", "topology", "uncertainty", "calibration", "hierarchical", "total")


class TuneppLoss(nn.Module):
    """``TuneppLoss(cfg.loss)(output, labels) -> {"dice", "ce", "topology", "uncertainty",
    "calibration", "hierarchical", "total"}`` (scalar tensors; only ``total`` needs ``backward``).

    ``output`` is a :class:`~tunepp_deploy.model.NetOutput` (anything with ``logits [B,K,D,H,W]``,
    ``log_var [B,1,D,H,W]`` and ``aux_logits``); ``labels`` int64 ``[B, D, H, W]``.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def weight_map(self, labels: Tensor, logits: Tensor, structure: Tensor | np.ndarray | None = None) -> Tensor:
        """``W`` for the batch, on ``logits``' device; ``structure`` = precomputed ``1 + w_b B + w_j J``."""
        c = self.cfg
        pred = logits.detach().argmax(1).cpu().numpy()
        struct = None
        if structure is not None:
            struct = structure.cpu().numpy() if isinstance(structure, Tensor) else np.asarray(structure)
        w = complexity_weights(labels.cpu().numpy(), pred, logits.shape[1], c.w_b, c.w_j, c.w_a, c.topo_sigma, struct)
        return torch.from_numpy(w).to(logits.device)

    def forward(
        self,
        output: object,
        labels: Tensor,
        structure: Tensor | np.ndarray | None = None,
    ) -> dict[str, Tensor]:
        """All terms and the total. ``structure``: optional precomputed label part of W, ``[B,D,H,W]``
        (e.g. :func:`~tunepp_deploy.losses.complexity.structure_weights` per case, cropped like the
        labels — cheaper, and free of crop-border effects)."""
        c = self.cfg
        logits: Tensor = output.logits  # type: ignore[attr-defined]
        log_var: Tensor = output.log_var  # type: ignore[attr-defined]
        aux: Sequence[Tensor] = getattr(output, "aux_logits", ())
        labels = labels.long()
        zero = torch.zeros((), device=logits.device)
        dice, ce = dice_ce_loss(logits, labels)
        terms = {"dice": dice, "ce": ce}
        terms["topology"] = (
            topology_loss(logits, labels, self.weight_map(labels, logits, structure)) if c.lambda1 else zero
        )
        terms["uncertainty"] = heteroscedastic_loss(logits, log_var, labels, c.unc_samples) if c.lambda2 else zero
        terms["calibration"] = calibration_loss(logits, labels) if c.lambda3 else zero
        terms["hierarchical"] = hierarchical_loss(aux, labels) if c.lambda4 else zero
        terms["total"] = (
            dice
            + ce
            + c.lambda1 * terms["topology"]
            + c.lambda2 * terms["uncertainty"]
            + c.lambda3 * terms["calibration"]
            + c.lambda4 * terms["hierarchical"]
        )
        return terms


__all__ = ["TERMS", "TuneppLoss"]
