"""Post-processing of label maps after inference: the topology baseline (small components, prior
component counts, cavity filling) that a topology-aware network has to beat."""

from tunepp_deploy.postprocess.topology import (
    betti_prior_from_dataset,
    fill_enclosed_background,
    keep_largest_components,
    remove_small_components,
    topology_postprocess,
)

__all__ = [
    "betti_prior_from_dataset",
    "fill_enclosed_background",
    "keep_largest_components",
    "remove_small_components",
    "topology_postprocess",
]
