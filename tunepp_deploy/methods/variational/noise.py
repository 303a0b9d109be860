"""Weight noise for S posterior samples, drawn from one seed with NumPy — the same on every backend.

Same scheme as :mod:`tunepp_deploy.infer.masks` (see there for why NumPy's PCG64 and not torch):
layer ``i`` draws from ``Generator(PCG64(SeedSequence([seed, i])))`` a ``[S, *kernel]`` block of
standard normals, so sample ``s`` depends only on ``(seed, layer, s)`` and the first S' samples of a
run with S > S' are the run with S'. One noise set per sample, shared by every window of a scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WeightNoise:
    """``per_layer[i]``: ``[S, *kernel_i]`` float32 standard normals."""

    per_layer: tuple[np.ndarray, ...]
    samples: int
    seed: int

    def sample(self, s: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """The noise tensors of sample ``s`` (one per Bayesian layer)."""
        return [torch.from_numpy(np.ascontiguousarray(n[s])).to(device) for n in self.per_layer]

    def sample_numpy(self, s: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(n[s]) for n in self.per_layer]


def sample_weight_noise(shapes: Sequence[tuple[int, ...]], samples: int, seed: int) -> WeightNoise:
    """Draw ``samples`` weight-noise sets for layers of the given kernel shapes."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = []
    for i, shape in enumerate(shapes):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), i])))
        out.append(rng.standard_normal((samples, *shape), dtype=np.float32))
    return WeightNoise(tuple(out), samples, int(seed))


__all__ = ["WeightNoise", "sample_weight_noise"]
