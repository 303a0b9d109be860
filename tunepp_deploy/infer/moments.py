r"""The one streaming accumulator of every sampling method: sufficient statistics of S predictives.

Each sample ``s`` (a dropout mask set, a weight-noise draw, ...) contributes its stitched predictive
``p_s [K, ...]`` over the whole volume. The maps of :mod:`tunepp_deploy.infer.uncertainty` need only

* ``sum_s p_s`` (``K`` maps) for the predictive mean ``p_bar`` and ``total = 1 - sum_k p_bar_k^2``;
* ``sum_s sum_k p_{s,k}^2`` (1 map) for ``aleatoric = mean_s (1 - sum_k p_{s,k}^2)``;
* ``sum_s H[p_s]`` (1 map) for the expected entropy and ``MI = H[p_bar] - mean_s H[p_s]``;

and ``epistemic = sum_k Var_s p_{s,k} = total - aleatoric`` follows exactly. So ``K + 2`` float64
maps hold S samples whatever S is: memory O(K x V), independent of S, and the result equals the
all-samples formula (tested against it). float64 because ``E[p^2] - E[p]^2`` cancels: in float32 the
variance of a confident voxel (p ~ 1 - 1e-4) would be lost in round-off; in float64 the error is
~1e-16. :class:`RunningMoments` does the same for any other per-sample map (saliency CAMs).
"""

from __future__ import annotations

import torch

from tunepp_deploy.infer.stitch import can_fold, entropy64, fold_chunk
from tunepp_deploy.infer.uncertainty import UncertaintyMaps, entropy

#: Size of the float64 temporaries one slab of :meth:`SampleStats.add` makes (bounded whatever the volume).
SLAB_BYTES = 64 * 2**20


class SampleStats:
    """Running sums over samples of ``p``, ``sum_k p^2`` and ``H[p]`` (module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        self._ent: torch.Tensor | None = None

    def _init(self, like: torch.Tensor) -> None:
        self._sum = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
        self._sq = torch.zeros(like.shape[1:], dtype=torch.float64, device=like.device)
        self._ent = torch.zeros(like.shape[1:], dtype=torch.float64, device=like.device)

    def add_sample(self, p: torch.Tensor) -> None:
        """One sample's predictive ``p [K, ...]``."""
        self.add(p[None])

    def add(self, chunk: torch.Tensor) -> None:
        """A chunk of samples ``[n, K, ...]``; chunks of any size give the same result.

        CPU float32 volumes ``[n, K, D, H, W]`` go through the fused kernel (one pass, no temporaries,
        :mod:`tunepp_deploy.infer.stitch`); anything else through torch in float64 slabs.
        """
        if chunk.dim() < 2:
            raise ValueError(f"a chunk of samples must be [n, K, ...], got {tuple(chunk.shape)}")
        if self._sum is None:
            self._init(chunk[0])
        assert self._sum is not None and self._sq is not None and self._ent is not None
        if can_fold(chunk):
            fold_chunk(self._sum, self._sq, self._ent, chunk)
            self.count += int(chunk.shape[0])
            return
        k = chunk.shape[1]
        sum_v, sq_v, ent_v = self._sum.view(k, -1), self._sq.view(-1), self._ent.view(-1)
        step = max(1, SLAB_BYTES // (8 * k))  # voxels per slab: float64 temporaries stay ~SLAB_BYTES each
        for p in chunk:  # one sample at a time, in slabs of voxels
            pv = p.reshape(k, -1)
            for a in range(0, pv.shape[1], step):
                p64 = pv[:, a : a + step].double()
                sum_v[:, a : a + step] += p64
                sq_v[a : a + step] += (p64 * p64).sum(0)
                ent_v[a : a + step] += entropy(p64, 0)
            self.count += 1

    def add_stitched(self, acc: torch.Tensor, norm: torch.Tensor, spatial: tuple[int, ...]) -> None:
        """A chunk given by its stitched sums: ``acc [n, K, *padded]`` Gaussian-weighted sums, ``norm
        [*padded]`` the summed weights, ``spatial`` the volume's grid (the padded one cropped at the end).

        The same as ``add((acc / norm)[..., :D, :H, :W])`` (to float64 round-off), without the normalised
        copy: on CPU one fused pass (:func:`~tunepp_deploy.infer.stitch.fold_chunk`).
        """
        if can_fold(acc):
            if self._sum is None:
                self._init(acc[0, :, : spatial[0], : spatial[1], : spatial[2]])
            assert self._sum is not None and self._sq is not None and self._ent is not None
            fold_chunk(self._sum, self._sq, self._ent, acc, norm)
            self.count += int(acc.shape[0])
            return
        crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
        self.add((acc / norm)[crop])

    def add_moments(self, mean: torch.Tensor, mean_sq: torch.Tensor, mean_entropy: torch.Tensor, count: int) -> None:
        """``count`` samples given by their means of ``p`` ``[K, ...]``, ``sum_k p^2`` and ``H[p]`` ``[...]``.

        Used by the explicit per-window-moment blend, whose window-level moments are blended before
        they reach the volume (then the split into epistemic and aleatoric is approximate; total is not).
        """
        if self._sum is None:
            self._init(mean)
        assert self._sum is not None and self._sq is not None and self._ent is not None
        self._sum += mean.double() * count
        self._sq += mean_sq.double() * count
        self._ent += mean_entropy.double() * count
        self.count += count

    def maps(self) -> UncertaintyMaps:
        """The maps (float32) of the samples added so far."""
        if self._sum is None or self.count == 0:
            raise ValueError("no samples were added")
        assert self._sq is not None and self._ent is not None
        n = float(self.count)
        k, spatial = self._sum.shape[0], self._sum.shape[1:]
        s, sq, ent = self._sum.reshape(k, -1), self._sq.reshape(-1), self._ent.reshape(-1)
        dev = s.device
        # float32 outputs written slab by slab: the float64 temporaries of a whole volume (mean, mean^2, the
        # entropies: ~3 x K x 8 V, 2 GB at 240x240x160) would otherwise come on top of the statistics
        mean32 = torch.empty((k, s.shape[1]), dtype=torch.float32, device=dev)
        outs = [torch.empty(s.shape[1], dtype=torch.float32, device=dev) for _ in range(4)]
        step = max(1, SLAB_BYTES // (8 * k))
        for a in range(0, s.shape[1], step):
            b = min(a + step, s.shape[1])
            mean = s[:, a:b] / n
            total = (1.0 - (mean * mean).sum(0)).clamp_min(0.0)
            aleatoric = (1.0 - sq[a:b] / n).clamp_min(0.0)
            # on CPU the fold's log (libm) for both entropies: one sample gives MI = 0 exactly
            pe = entropy64(mean) if dev.type == "cpu" else entropy(mean, 0)
            mean32[:, a:b] = mean
            outs[0][a:b] = (total - aleatoric).clamp_min(0.0)
            outs[1][a:b] = aleatoric
            outs[2][a:b] = pe
            outs[3][a:b] = (pe - ent[a:b] / n).clamp_min(0.0)
        epistemic, aleatoric32, pe32, mi32 = (o.view(spatial) for o in outs)
        return UncertaintyMaps(mean32.view(k, *spatial), epistemic, aleatoric32, pe32, mi32)


class RunningMoments:
    """Per-voxel mean and population variance of any per-sample map, float64 sums."""

    def __init__(self) -> None:
        self.count = 0
        self._s1: torch.Tensor | None = None
        self._s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """One sample's map (any shape, the same every time)."""
        x64 = x.double()
        if self._s1 is None:
            self._s1, self._s2 = torch.zeros_like(x64), torch.zeros_like(x64)
        assert self._s2 is not None
        self._s1 += x64
        self._s2 += x64 * x64
        self.count += 1

    def mean(self) -> torch.Tensor:
        if self._s1 is None:
            raise ValueError("no samples were added")
        return (self._s1 / self.count).float()

    def variance(self) -> torch.Tensor:
        if self._s1 is None or self._s2 is None:
            raise ValueError("no samples were added")
        m = self._s1 / self.count
        return (self._s2 / self.count - m * m).clamp_min(0.0).float()


__all__ = ["RunningMoments", "SampleStats"]
