r"""The TUNE++ training objective, assembled from ``cfg.loss``.

    total = L_dice + L_ce + lambda1 L_topo + lambda2 L_unc + lambda3 L_cal + lambda4 L_hier + w_cl L_cldice
            + lambda_gate L_gate

* ``L_dice``, ``L_ce``: :mod:`.dice_ce` on the full-resolution logits;
* ``L_topo`` by ``topo_mode``: ``voxel`` — :mod:`.topology`, CE weighted by ``W = 1 + w_b B + w_j J + w_a A``
  (:mod:`.complexity`, computed on the CPU in NumPy from the labels (B, J) and the **detached**
  arg-max prediction (A)); ``component`` — the same B, J weights plus ``w_a`` per anomalous
  component (:func:`.topology.component_topology_loss`); ``persistence`` — :mod:`.persistence`
  (cubical persistent homology, the truth crop's Betti numbers as the prior). Off (0) during the
  first ``topo_warmup_epochs`` epochs (the trainer calls :meth:`TuneppLoss.set_epoch`);
* ``L_cldice``: :mod:`.cldice` on label ``cldice_class`` when ``cldice_weight > 0``;
* ``L_unc``: :mod:`.uncertainty`, Kendall & Gal's MC-sampled heteroscedastic softmax loss with the
  log-variance head, ``T = unc_samples``;
* ``L_cal``: :mod:`.calibration`, Brier + DCA;
* ``L_hier``: :mod:`.hierarchical`, Dice + CE on the deep-supervision logits;
* ``L_gate``: :mod:`.gate`, the supervised TUPA gates' error prediction (``output.gate_logits``;
  0 for a learned-gate network, which returns none).

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
from tunepp_deploy.losses.complexity import anomaly_components, complexity_weights
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.losses.gate import gate_loss
from tunepp_deploy.losses.hierarchical import hierarchical_loss
from tunepp_deploy.losses.topology import component_topology_loss, topology_loss
from tunepp_deploy.losses.uncertainty import heteroscedastic_loss

TERMS = ("dice", "ce", "topology", "cldice", "uncertainty", "calibration", "hierarchical", "gate", "total")


class TuneppLoss(nn.Module):
    """``TuneppLoss(cfg.loss)(output, labels) -> {"dice", "ce", "topology", "cldice", "uncertainty",
    "calibration", "hierarchical", "total"}`` (scalar tensors; only ``total`` needs ``backward``).

    ``output`` is a :class:`~tunepp_deploy.model.NetOutput` (anything with ``logits [B,K,D,H,W]``,
    ``log_var [B,1,D,H,W]`` and ``aux_logits``); ``labels`` int64 ``[B, D, H, W]``.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.topology_on = cfg.topo_warmup_epochs == 0

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch: the topology term starts at ``topo_warmup_epochs``."""
        self.topology_on = epoch >= self.cfg.topo_warmup_epochs

    def _topology(self, logits: Tensor, labels: Tensor, structure: Tensor | np.ndarray | None) -> Tensor:
        c = self.cfg
        if c.topo_mode == "voxel":
            return topology_loss(logits, labels, self.weight_map(labels, logits, structure))
        if c.topo_mode == "component":
            lab, pred = labels.cpu().numpy(), logits.detach().argmax(1).cpu().numpy()
            ids = np.stack([anomaly_components(lab[i], pred[i], logits.shape[1])[0] for i in range(lab.shape[0])])
            s = self.weight_map(labels, logits, structure, anomalies=False)
            return component_topology_loss(logits, labels, s, torch.from_numpy(ids).to(logits.device), c.w_a)
        from tunepp_deploy.losses.persistence import persistence_loss

        return persistence_loss(logits, labels, downsample=c.ph_downsample)

    def weight_map(self, labels: Tensor, logits: Tensor, structure: Tensor | np.ndarray | None = None,
                   anomalies: bool = True) -> Tensor:
        """``W`` for the batch, on ``logits``' device; ``structure`` = precomputed ``1 + w_b B + w_j J``;
        ``anomalies=False``: that label part alone (the component form charges anomalies per piece)."""
        c = self.cfg
        pred = logits.detach().argmax(1).cpu().numpy() if anomalies else None
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
        terms["topology"] = self._topology(logits, labels, structure) if c.lambda1 and self.topology_on else zero
        if c.cldice_weight and c.cldice_class is not None:
            from tunepp_deploy.losses.cldice import cldice_loss

            terms["cldice"] = cldice_loss(logits, labels, c.cldice_class)
        else:
            terms["cldice"] = zero
        terms["uncertainty"] = heteroscedastic_loss(logits, log_var, labels, c.unc_samples) if c.lambda2 else zero
        terms["calibration"] = calibration_loss(logits, labels) if c.lambda3 else zero
        terms["hierarchical"] = hierarchical_loss(aux, labels) if c.lambda4 else zero
        gates: Sequence[Tensor] = getattr(output, "gate_logits", ())
        terms["gate"] = gate_loss(gates, logits, labels) if c.lambda_gate and gates else zero
        terms["total"] = (
            dice
            + ce
            + c.lambda1 * terms["topology"]
            + c.cldice_weight * terms["cldice"]
            + c.lambda2 * terms["uncertainty"]
            + c.lambda3 * terms["calibration"]
            + c.lambda4 * terms["hierarchical"]
            + c.lambda_gate * terms["gate"]
        )
        return terms


__all__ = ["TERMS", "TuneppLoss"]
