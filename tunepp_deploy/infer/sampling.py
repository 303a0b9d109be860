"""The one Monte-Carlo loop over a whole volume: samples flow in chunks through the stitched volume.

Every sampling method (TUNE++ dropout masks, variational weight noise, saliency fusion's masked
passes) needs, per sample ``s``, its predictive stitched over the *whole* scan with the Gaussian
sliding-window blend — the exact per-sample blend: sample ``s`` is one network over the scan, so
statistics over the stitched volumes are a proper MC estimate over networks. Holding all ``S``
stitched volumes (``S x K x V``) does not fit real scans (7.7 GiB for 240x240x160, K = 9, S = 25), so
:func:`stream_chunks` runs the samples in chunks of ``n``: for each chunk, one sliding-window pass
whose predictor returns the chunk's ``n`` per-sample outputs per window, stitched into ``n x K x V``
accumulators, yielded, and folded by the caller into :class:`~tunepp_deploy.infer.moments.SampleStats`
(``K + 2`` float64 maps). Memory is ``(K + 2) x 8 V + n x K x 8 V`` whatever S; the result is the
per-sample blend exactly, for any chunk size (tested).

The price: the windows are visited once per chunk, so what a method computes per window *before*
the samples diverge (TUNE++'s trunk) is either cached across chunks or recomputed — the predictor
decides (:class:`tunepp_deploy.predictors.tunepp.TuneppPredictor` caches it when it fits).
:func:`plan_chunk` picks the largest ``n`` the memory budget allows and refuses, in one line, a
volume whose exact blend does not fit even one sample at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.moments import SLAB_BYTES
from tunepp_deploy.infer.sliding_window import StitchedSums, stitch_sums

#: ``predict(windows [B, C, *window], sample_ids, starts) -> outputs``, each ``[m, B, c, *window]``
#: (``m = len(sample_ids)`` per-sample outputs, or ``m = 1`` for outputs already reduced over samples).
#: ``starts``: the windows' start voxels (for masks that depend on the volume position), or None.
ChunkPredictor = Callable[[torch.Tensor, Sequence[int], Sequence[tuple[int, ...]] | None], list[torch.Tensor]]

#: float64 sufficient statistics: K mean sums + sum of squares + entropy (:class:`SampleStats`).
STATS_EXTRA_MAPS = 2


def sample_chunks(samples: int, chunk: int) -> list[list[int]]:
    """``[[0..n-1], [n..2n-1], ...]`` covering ``range(samples)``."""
    chunk = max(1, int(chunk))
    return [list(range(i, min(i + chunk, samples))) for i in range(0, samples, chunk)]


#: What to suggest when even one sample does not fit (methods without a window blend pass their own).
RAISE_BUDGET = "raise --memory-gb or choose --blend window (an approximation)"


def slab_bytes(channels: int, voxels: int) -> int:
    """What :meth:`SampleStats.add`'s float64 temporaries take at most: ~4 slabs, never more than the volume's."""
    return 4 * min(SLAB_BYTES, channels * 8 * int(voxels))


def plan_chunk(
    shape: Sequence[int], window: Sequence[int], channels: int, samples: int, memory_gb: float,
    reserved_bytes: int = 0, per_sample_bytes: int = 0, hint: str = RAISE_BUDGET,
) -> int:
    """Samples per chunk so that the stitched chunk plus the statistics fit ``memory_gb``.

    ``channels``: per-sample stitched channels (K, plus any extra per-sample maps); ``reserved_bytes``:
    what the caller needs besides (runner calls, cached trunk); ``per_sample_bytes``: what each sample
    of a chunk costs besides its stitched maps (e.g. its window-level outputs per call). Per sample the
    accumulator and its normalised copy are float32 (``2 x 4 x channels x V``); the statistics
    ``(K + 2) x 8 x V`` plus the accumulator's slab temporaries.
    """
    v = math.prod(max(int(s), int(w)) for s, w in zip(shape, window, strict=True))
    fixed = (channels + STATS_EXTRA_MAPS) * 8 * v + 3 * 4 * v + slab_bytes(channels, v)  # + input, norm, importance
    per_sample = 2 * 4 * channels * v + int(per_sample_bytes)
    budget = int(memory_gb * 2**30) - fixed - int(reserved_bytes)
    n = budget // per_sample
    if n < 1:
        need = (fixed + per_sample + reserved_bytes) / 2**30
        raise TuneppError(
            f"the exact blend of a {tuple(int(s) for s in shape)} volume needs {need:.2f} GB, more than the "
            f"{memory_gb:g} GB budget: {hint}"
        )
    return int(min(samples, n))


def stream_chunks(
    volume: torch.Tensor,
    predict: ChunkPredictor,
    window: Sequence[int],
    samples: int,
    chunk: int,
    overlap: float = 0.5,
    batch: int = 4,
    progress: Callable[[int], None] | None = None,
    reduced: bool = False,
    align: int | Sequence[int] = 1,
    sums: bool = False,
) -> Iterator[tuple[list[int], list[torch.Tensor]]] | Iterator[tuple[list[int], StitchedSums]]:
    """For each chunk of sample ids, the predictor's outputs stitched over ``volume [C, D, H, W]``.

    Yields ``(ids, [out_i [m, c_i, D, H, W]])``. ``reduced`` runs all samples as one chunk whose
    outputs the predictor has already reduced per window (the per-window-moment blend). ``progress(n)``
    is called with windows x samples completed. ``align``: window starts on multiples of it (element
    dropout masks depend on the volume position; :func:`tunepp_deploy.infer.masks.mask_alignment`); the
    predictor always receives the windows' start voxels. ``sums``: yield ``(ids, StitchedSums)`` — the
    un-normalised sums ``[m, c_i, *padded]`` and the weights — for a caller that folds them itself
    (:meth:`SampleStats.add_stitched <tunepp_deploy.infer.moments.SampleStats.add_stitched>`, which
    skips the normalised copy). The outputs are stitched in the predictor's ``[m, B, c, *window]`` layout
    (no transposed copy), so a predictor may hand back the same buffer every call.
    """
    chunks = [list(range(samples))] if reduced else sample_chunks(samples, chunk)
    for ids in chunks:

        def predictor(x: torch.Tensor, starts: list[tuple[int, ...]], ids: list[int] = ids) -> list[torch.Tensor]:
            return predict(x, ids, starts)

        def step(k: int, n: int = len(ids)) -> None:
            if progress is not None:
                progress(k * n)

        stitched = stitch_sums(volume, predictor, window, overlap=overlap, batch=batch, progress=step,
                               align=align, with_starts=True, sample_major=True)
        yield (ids, stitched) if sums else (ids, stitched.normalised())


__all__ = ["RAISE_BUDGET", "STATS_EXTRA_MAPS", "ChunkPredictor", "plan_chunk", "sample_chunks", "slab_bytes",
           "stream_chunks"]
