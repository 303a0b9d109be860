"""MC inference of one window batch from a request seed — what the ``tunepp_mc`` Triton model runs.

The Python backend's ``model.py`` (:mod:`.triton_repo` writes it) is a thin adapter around
:class:`WindowBatchMC`, so the served computation is this module, importable and testable without a
server. It uses the same pieces as ``tunepp infer``, so a served window equals the same window run
in-process with the same seed:

* masks: :func:`tunepp_deploy.infer.masks.sample_masks` for ``(sites, window, S, seed)`` and
  :meth:`SampleMasks.rows` (sample-major rows; element sites from the window's start in input voxels);
* logit noise: :func:`~tunepp_deploy.infer.logit_noise.draw_logit_noise` for ``(seed, 0..S-1)``;
* a stored temperature applied as in :mod:`tunepp_deploy.infer.mc`;
* the graph on ONNX Runtime (:class:`~tunepp_deploy.infer.runners.ort_runner.OrtRunner`, one call of
  ``B`` windows x ``S`` samples: the trunk once per window batch);
* the maps from all ``S`` samples at once in float64
  (:func:`~tunepp_deploy.infer.uncertainty.maps_from_samples`, the reference the streaming
  accumulator of ``tunepp infer`` is tested against).

Windows of one batch may carry different seeds (dynamic batching joins requests); rows are grouped by
seed and each group is one graph call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS, draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import _tempered
from tunepp_deploy.infer.runners.load import read_onnx_meta
from tunepp_deploy.infer.runners.ort_runner import OrtRunner
from tunepp_deploy.infer.uncertainty import maps_from_samples
from tunepp_deploy.model_file import read_temperature

#: Output names of ``tunepp_mc`` in order: the class probabilities then the four uncertainty maps.
MAP_NAMES = ("mean_probs", "epistemic", "aleatoric", "predictive_entropy", "mutual_information")
#: Seeds must fit NumPy's SeedSequence (non-negative) and Triton's INT64.
MAX_SEED = 2**63 - 1


class WindowBatchMC:
    """An opened ONNX graph that turns ``(windows, seeds, starts)`` into mean probabilities and maps."""

    def __init__(self, onnx_path: str | Path, samples: int, noise_draws: int = DEFAULT_NOISE_DRAWS,
                 threads: int | None = None) -> None:
        path = Path(onnx_path)
        _, meta = read_onnx_meta(path)
        if not meta.sites:
            raise TuneppError(f"{path}: the graph has no dropout mask inputs; MC serving needs them")
        if samples < 1 or noise_draws < 0:
            raise TuneppError(f"samples must be >= 1 and noise draws >= 0, got {samples}, {noise_draws}")
        self.meta = meta
        self.samples = int(samples)
        self.noise_draws = int(noise_draws)
        self.runner = OrtRunner(str(path), meta, torch.device("cpu"), threads)
        t = read_temperature(path)
        self.temperature = None if t is None else torch.tensor(t, dtype=torch.float32)

    def check_windows(self, x: np.ndarray) -> None:
        """One-line error unless ``x`` is ``[B, C, *window]`` finite float32."""
        want = (self.meta.in_channels, *self.meta.window)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise TuneppError(f"windows must be [B, {', '.join(map(str, want))}], got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise TuneppError("windows contain NaN or Inf")

    def run(self, x: np.ndarray, seeds: np.ndarray, starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Maps of each window: ``x [B, C, *window]``, ``seeds [B]``, ``starts [B, 3]`` (input voxels, or None
        for zeros) -> ``{name: [B, ...]}`` float32 (``mean_probs [B, K, *window]``, the others ``[B, *window]``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_windows(x)
        b = x.shape[0]
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if seeds.shape[0] != b:
            raise TuneppError(f"{seeds.shape[0]} seeds for {b} windows")
        if (seeds < 0).any():
            raise TuneppError(f"seeds must be >= 0, got {int(seeds.min())}")
        st = np.zeros((b, 3), np.int64) if starts is None else np.asarray(starts, dtype=np.int64).reshape(b, 3)
        k = self.meta.num_classes
        win = tuple(self.meta.window)
        out = {"mean_probs": np.empty((b, k, *win), np.float32)}
        out.update({n: np.empty((b, *win), np.float32) for n in MAP_NAMES[1:]})
        for seed in np.unique(seeds):
            idx = np.flatnonzero(seeds == seed)
            maps = self._one_seed(torch.from_numpy(x[idx]), int(seed), [tuple(int(v) for v in st[i]) for i in idx])
            for n, m in maps.items():
                out[n][idx] = m
        return out

    def _one_seed(self, x: torch.Tensor, seed: int, starts: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        meta, S, b = self.meta, self.samples, x.shape[0]
        masks = sample_masks(meta.sites, meta.window, S, seed)
        rows = masks.rows(range(S), b, starts=starts if masks.positional else None)
        with torch.inference_mode():
            logits, log_var = self.runner(x, rows)
            logits, log_var = _tempered(logits, log_var, self.temperature)
            noise = torch.from_numpy(draw_logit_noise(seed, range(S), self.noise_draws, meta.num_classes))
            eps = noise.repeat_interleave(b, dim=0)  # row j * b + w: sample j (sample-major, as the masks)
            probs = sampled_softmax(logits, log_var, eps).view(S, b, meta.num_classes, *meta.window)
            res: dict[str, list[np.ndarray]] = {n: [] for n in MAP_NAMES}
            for w in range(b):
                maps = maps_from_samples(probs[:, w].double())
                for n, t in zip(MAP_NAMES, (maps.mean_probs, maps.epistemic, maps.aleatoric, maps.predictive_entropy,
                                            maps.mutual_information), strict=True):
                    res[n].append(t.float().numpy())
        return {n: np.stack(v) for n, v in res.items()}


__all__ = ["MAP_NAMES", "MAX_SEED", "WindowBatchMC"]
