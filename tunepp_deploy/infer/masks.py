"""Dropout masks for S Monte-Carlo samples, drawn from one seed with NumPy — the same on every backend.

Why NumPy and not ``torch.rand``: the masks are graph *inputs* (see
:mod:`tunepp_deploy.model.blocks.dropout`), so whichever backend runs the network — PyTorch on CPU
or CUDA, ONNX Runtime, TensorRT — must receive bit-identical masks for a given ``--seed``. Torch's
CPU and CUDA generators produce different streams; NumPy's ``SeedSequence``/``PCG64`` and plain
``uint64`` arithmetic are specified and platform-independent, so a run is reproducible from
``(seed, network)`` alone and two backends can be compared element for element.

**One thinned network per sample, in every window of a scan.** Sample ``s`` is one thinned network
``f_s``; if every window applies ``f_s``'s masks, stitching the window outputs gives ``f_s`` applied
to the whole scan, so the variance across samples of the stitched probabilities is a proper MC
estimate over *networks* (masks that change from window to window would mix different networks
inside one "sample" and blur the variance across window seams). The same masks are also used for
every case of a batch, so a case's result does not depend on which other cases ran before it.

* ``mode="channel"`` sites: a mask is ``[C]`` per sample and has no spatial extent, so one draw per
  sample serves every window. Site ``i`` draws from ``Generator(PCG64(SeedSequence([seed, i])))`` and
  sample ``s``'s mask is row ``s`` of a ``[S, C]`` draw (``SampleMasks.per_site``).
* ``mode="element"`` sites: a mask has one entry per feature voxel, so "the same network in every
  window" means the entry must depend on the voxel's position **in the volume**, not in the window
  (a window-relative mask reused in each window disagrees with its neighbour on ~``2p(1-p)`` of the
  overlap). Entry ``(seed, site i, sample s, channel c, global feature index (gd, gh, gw))`` is a
  counter-based hash (SplitMix64 of a per-``(seed, i, s, c)`` key at the packed position) turned into
  a uniform in [0, 1) and compared with ``p``. Nothing volume-sized is drawn, any volume size works,
  and the masks of a window are computed when :meth:`SampleMasks.rows` is asked for them at the
  window's start. A window starting at input voxel ``a`` (per axis) covers global feature indices
  ``a / stride + j``, so starts must be multiples of the site's stride: use
  :func:`mask_alignment` as ``align`` of :func:`~tunepp_deploy.infer.sliding_window.sliding_window`.

In both modes adding or removing a site does not shift the other sites' masks, and sample ``s``'s
masks depend only on ``(seed, site, s)``, so the first ``S'`` samples of a run with ``S > S'`` are the
samples of the run with ``S'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.model.blocks.conv import Int3
from tunepp_deploy.model.blocks.dropout import DropoutSite

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (golden ratio * 2**64)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_AXIS_BITS = 21  # global feature index per axis < 2**21, packed into one 63-bit counter
_S30, _S27, _S31, _S11 = (np.uint64(k) for k in (30, 27, 31, 11))


def _mix(x: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """SplitMix64's finaliser on a ``uint64`` array (a bijection; NumPy arrays wrap silently on overflow).

    With a scratch buffer ``tmp`` of ``x``'s shape it works in place on ``x`` (no allocation per step:
    mask generation is memory-bound); without, it returns a new array.
    """
    if tmp is None:
        x, tmp = x.copy(), np.empty_like(x)
    for shift, mult in ((_S30, _M1), (_S27, _M2), (_S31, None)):
        np.right_shift(x, shift, out=tmp)
        x ^= tmp
        if mult is not None:
            x *= mult
    return x


def _site_key(seed: int, site: int) -> np.ndarray:
    """64-bit key of element site ``site`` under ``seed`` (SeedSequence: stable, platform-independent)."""
    return np.random.SeedSequence([int(seed), int(site)]).generate_state(1, dtype=np.uint64)


def _stream_keys(site_key: np.ndarray, sample_ids: np.ndarray, channels: int) -> np.ndarray:
    """``[len(sample_ids), channels]`` keys, one per (sample, channel): independent of S, so prefixes agree."""
    s = sample_ids.astype(np.uint64)[:, None]
    c = np.arange(channels, dtype=np.uint64)[None, :]
    return _mix(_mix(site_key + (s + np.uint64(1)) * _GAMMA) + (c + np.uint64(1)) * _GAMMA)


def element_keep(
    site: DropoutSite, seed: int, site_index: int, sample_ids: Sequence[int], window: Int3, start: Sequence[int]
) -> np.ndarray:
    """Keep flags ``[len(sample_ids), C, *window // stride]`` of a window whose first voxel is ``start``.

    ``start`` is in input voxels (the sliding-window start) and must be a multiple of the site's
    stride per axis; the flag of a feature voxel depends only on ``(seed, site_index, sample, channel,
    start // stride + j)``, so two windows agree wherever they overlap.
    """
    feat = [w // s for w, s in zip(window, site.stride, strict=True)]
    origin = []
    for a, s in zip(start, site.stride, strict=True):
        if int(a) < 0 or int(a) % s:
            raise TuneppError(f"window start {tuple(start)} is not a multiple of site {site.name!r}'s stride "
                              f"{site.stride}; tile with align=mask_alignment(sites)")
        origin.append(int(a) // s)
    if any(o + f > 1 << _AXIS_BITS for o, f in zip(origin, feat, strict=True)):
        raise TuneppError(f"volume too large for element masks: feature index beyond 2**{_AXIS_BITS} per axis")
    gd, gh, gw = (np.arange(o, o + f, dtype=np.uint64) for o, f in zip(origin, feat, strict=True))
    b = np.uint64(_AXIS_BITS)
    counter = (gd[:, None, None] << (b + b)) | (gh[None, :, None] << b) | gw[None, None, :]
    keys = _stream_keys(_site_key(seed, site_index), np.asarray(list(sample_ids), np.int64), site.channels)
    out = np.empty((*keys.shape, *feat), dtype=bool)
    step = (counter + np.uint64(1)) * _GAMMA
    # uniform u = (h >> 11) / 2**53 (53 random bits, exact in float64); u >= p  <=>  h >= ceil(p * 2**53) << 11
    threshold = np.uint64(math.ceil(site.p * 2.0**53) << 11)
    h = np.empty((site.channels, *feat), dtype=np.uint64)
    tmp = np.empty_like(h)
    for j in range(keys.shape[0]):  # one sample at a time keeps the uint64 temporaries at C * window voxels
        np.add(keys[j][:, None, None, None], step[None], out=h)
        np.greater_equal(_mix(h, tmp), threshold, out=out[j])
    return out


def mask_alignment(sites: Sequence[DropoutSite]) -> Int3:
    """Per-axis multiple that sliding-window starts must be for coherent element masks (1s: channel only).

    The least common multiple of the element sites' strides (= the largest one for power-of-two
    strides): a start ``a`` aligned to it maps to the integer feature index ``a / stride`` at every site.
    """
    out = [1, 1, 1]
    for s in sites:
        if s.mode == "element":
            out = [math.lcm(o, int(t)) for o, t in zip(out, s.stride, strict=True)]
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class SampleMasks:
    """The masks of S MC samples (module docstring).

    ``per_site[i]`` is the site's pre-drawn ``[S, *mask shape without batch]`` array when its masks do
    not depend on the window's position — channel sites, and every site of :func:`identity_masks` —
    and ``None`` for a seeded element site, whose masks :meth:`rows` computes per window start.
    Values are 0 or ``1 / (1 - p)`` in float32 (inverted dropout, as :class:`MaskedDropout` expects).
    """

    sites: tuple[DropoutSite, ...]
    per_site: tuple[np.ndarray | None, ...]
    samples: int
    seed: int | None
    window: Int3 | None = None

    @property
    def element(self) -> bool:
        """Whether any site is element-wise (sliding-window starts must then be :func:`mask_alignment`-ed)."""
        return any(s.mode == "element" for s in self.sites)

    @property
    def positional(self) -> bool:
        """Whether :meth:`rows` needs ``starts`` (some site's masks depend on the window's position)."""
        return any(m is None for m in self.per_site)

    def rows(
        self,
        sample_ids: Sequence[int],
        windows: int,
        device: torch.device | str = "cpu",
        starts: Sequence[Sequence[int]] | None = None,
    ) -> list[torch.Tensor]:
        """Masks for a head batch of ``len(sample_ids) * windows`` rows, **sample-major**.

        Row ``j * windows + b`` is window ``b`` under sample ``sample_ids[j]`` — the order of
        :func:`tunepp_deploy.model.repeat_for_samples` and of the exported graph's internal tiling.
        ``starts`` (one ``(d, h, w)`` start in input voxels per window, as ``sliding_window(...,
        with_starts=True)`` passes them) is required when :attr:`positional`, and ignored by sites whose
        masks are the same in every window.
        """
        ids = [int(i) for i in sample_ids]
        if starts is not None and len(starts) != windows:
            raise TuneppError(f"masks: {len(starts)} window starts for {windows} windows")
        out = []
        for i, (site, m) in enumerate(zip(self.sites, self.per_site, strict=True)):
            if m is not None:
                block = np.repeat(m[np.asarray(ids, dtype=np.int64)], windows, axis=0)
            else:
                block = self._element_block(i, site, ids, windows, starts)
            out.append(torch.from_numpy(np.ascontiguousarray(block)).to(device))
        return out

    def _element_block(
        self, i: int, site: DropoutSite, ids: list[int], windows: int, starts: Sequence[Sequence[int]] | None
    ) -> np.ndarray:
        if starts is None:
            raise TuneppError("element-mode dropout masks need the window positions: pass starts= to SampleMasks.rows")
        if any(not 0 <= s < self.samples for s in ids):
            raise TuneppError(f"masks: sample ids {ids} outside 0..{self.samples - 1}")
        assert self.window is not None and self.seed is not None
        scale = np.float32(1.0 / (1.0 - site.p))
        block = np.empty((len(ids), windows, *site.mask_shape(self.window, 1)[1:]), dtype=np.float32)
        for b, start in enumerate(starts):
            keep = element_keep(site, self.seed, i, ids, self.window, start)
            block[:, b] = np.where(keep, scale, np.float32(0.0))
        return block.reshape(len(ids) * windows, *block.shape[2:])


def _site_mask(site: DropoutSite, window: Int3, samples: int, rng: np.random.Generator) -> np.ndarray:
    shape = site.mask_shape(window, samples)
    keep = rng.random(shape, dtype=np.float64) >= site.p
    return (keep.astype(np.float32) / np.float32(1.0 - site.p)).astype(np.float32)


def sample_masks(sites: Sequence[DropoutSite], window: Int3, samples: int, seed: int) -> SampleMasks:
    """The masks of ``samples`` MC samples for ``sites`` from ``seed`` (module docstring).

    Channel sites are drawn here (``[S, C]``, as before); element sites are not pre-drawn — their
    ``per_site`` entry is ``None`` and :meth:`SampleMasks.rows` computes a window's masks from its start.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    window = tuple(int(w) for w in window)  # type: ignore[assignment]
    per_site: list[np.ndarray | None] = []
    for i, site in enumerate(sites):
        if site.mode == "element":
            per_site.append(None)
            continue
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), i])))
        per_site.append(_site_mask(site, window, samples, rng))
    return SampleMasks(tuple(sites), tuple(per_site), samples, int(seed), window)


def identity_masks(sites: Sequence[DropoutSite], window: Int3, samples: int = 1) -> SampleMasks:
    """All-ones masks: every sample is the deterministic (eval-mode) network, in every window."""
    window = tuple(int(w) for w in window)  # type: ignore[assignment]
    per_site = tuple(np.ones(s.mask_shape(window, samples), np.float32) for s in sites)
    return SampleMasks(tuple(sites), per_site, samples, None, window)


__all__ = ["SampleMasks", "element_keep", "identity_masks", "mask_alignment", "sample_masks"]
