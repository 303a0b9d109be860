"""TUNE++ losses, one term per module; :class:`TuneppLoss` combines them from ``cfg.loss``."""

from tunepp_deploy.losses.calibration import brier_score, calibration_loss, dca
from tunepp_deploy.losses.complexity import (
    anomaly_map,
    boundary_junction_maps,
    complexity_weights,
    structure_weights,
)
from tunepp_deploy.losses.dice_ce import dice_ce_loss, one_hot, soft_dice_loss
from tunepp_deploy.losses.hierarchical import downsampled_targets, hierarchical_loss, scale_weights
from tunepp_deploy.losses.topology import topology_loss
from tunepp_deploy.losses.total import TERMS, TuneppLoss
from tunepp_deploy.losses.uncertainty import heteroscedastic_loss

__all__ = [
    "TERMS",
    "TuneppLoss",
    "anomaly_map",
    "boundary_junction_maps",
    "brier_score",
    "calibration_loss",
    "complexity_weights",
    "dca",
    "dice_ce_loss",
    "downsampled_targets",
    "heteroscedastic_loss",
    "hierarchical_loss",
    "one_hot",
    "scale_weights",
    "soft_dice_loss",
    "structure_weights",
    "topology_loss",
]
