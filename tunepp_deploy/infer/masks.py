"""Dropout masks for S Monte-Carlo samples, drawn from one seed with NumPy — the same on every backend.

Why NumPy and not ``torch.rand``: the masks are graph *inputs* (see
:mod:`tunepp_deploy.model.blocks.dropout`), so whichever backend runs the network — PyTorch on CPU
or CUDA, ONNX Runtime, TensorRT — must receive bit-identical masks for a given ``--seed``. Torch's
CPU and CUDA generators produce different streams; ``numpy.random.Generator(PCG64)`` is specified,
platform-independent and stable across NumPy releases for ``random()``, so a run is reproducible
from ``(seed, network)`` alone and two backends can be compared element for element.

**One mask per sample per site, shared by every window of a scan.** Sample ``s`` is one thinned
network ``f_s``; with the same mask in every window, stitching ``f_s``'s window outputs gives exactly
``f_s`` applied to the whole scan, so the variance across samples of the stitched probabilities is a
proper MC estimate over *networks* (drawing new masks per window would mix different networks inside
one "sample" and blur the variance across window seams). The same masks are also used for every
case of a batch, so a case's result does not depend on which other cases ran before it.

Streams: site ``i`` draws from ``Generator(PCG64(SeedSequence([seed, i])))``, so adding or removing
a site does not shift the other sites' masks, and sample ``s``'s mask is row ``s`` of a ``[S, ...]``
draw — the first ``S'`` samples of a run with ``S > S'`` are the samples of the run with ``S'``.
(A mask row depends only on ``(seed, site, s)`` because each row is a contiguous block of the stream.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tunepp_deploy.model.blocks.conv import Int3
from tunepp_deploy.model.blocks.dropout import DropoutSite


@dataclass(frozen=True)
class SampleMasks:
    """The masks of S MC samples: ``per_site[i]`` is ``[S, *site_i mask shape without batch]``.

    Values are 0 or ``1 / (1 - p)`` in float32 (inverted dropout, as :class:`MaskedDropout` expects).
    """

    sites: tuple[DropoutSite, ...]
    per_site: tuple[np.ndarray, ...]
    samples: int
    seed: int | None

    def rows(self, sample_ids: Sequence[int], windows: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Masks for a head batch of ``len(sample_ids) * windows`` rows, **sample-major**.

        Row ``j * windows + b`` is window ``b`` under sample ``sample_ids[j]`` — the order of
        :func:`tunepp_deploy.model.repeat_for_samples` and of the exported graph's internal tiling.
        """
        idx = np.asarray(list(sample_ids), dtype=np.int64)
        out = []
        for m in self.per_site:
            block = np.repeat(m[idx], windows, axis=0)
            out.append(torch.from_numpy(np.ascontiguousarray(block)).to(device))
        return out


def _site_mask(site: DropoutSite, window: Int3, samples: int, rng: np.random.Generator) -> np.ndarray:
    shape = site.mask_shape(window, samples)
    keep = rng.random(shape, dtype=np.float64) >= site.p
    return (keep.astype(np.float32) / np.float32(1.0 - site.p)).astype(np.float32)


def sample_masks(sites: Sequence[DropoutSite], window: Int3, samples: int, seed: int) -> SampleMasks:
    """Draw the masks of ``samples`` MC samples for ``sites`` from ``seed`` (module docstring)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    per_site = []
    for i, site in enumerate(sites):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), i])))
        per_site.append(_site_mask(site, tuple(window), samples, rng))  # type: ignore[arg-type]
    return SampleMasks(tuple(sites), tuple(per_site), samples, int(seed))


def identity_masks(sites: Sequence[DropoutSite], window: Int3, samples: int = 1) -> SampleMasks:
    """All-ones masks: every sample is the deterministic (eval-mode) network."""
    per_site = tuple(np.ones(s.mask_shape(tuple(window), samples), np.float32) for s in sites)  # type: ignore[arg-type]
    return SampleMasks(tuple(sites), per_site, samples, None)


__all__ = ["SampleMasks", "identity_masks", "sample_masks"]
