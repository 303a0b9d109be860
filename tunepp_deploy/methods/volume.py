"""Whole-volume Monte-Carlo prediction for methods whose sample ``s`` is one fixed network ``f_s``.

For the variational networks (weight noise ``eps_s``) and TUNE++ (dropout masks ``m_s``) a sample
is a whole network, so each sample's softmax is stitched over the scan with the shared Gaussian
sliding-window blend (:func:`tunepp_deploy.infer.sliding_window.sliding_window`) and the statistics
are taken over the S stitched volumes — the exact per-sample blend of :mod:`tunepp_deploy.infer.uncertainty`.
``sample_logits(x, s)`` is backend-agnostic (torch module, ONNX Runtime session, ...).
:func:`iter_sample_probs` yields the stitched volumes one at a time, so a caller that only needs
running statistics never holds all S of them (``S * K`` maps; :func:`per_sample_probs` stacks them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from tunepp_deploy.infer.sliding_window import sliding_window

SampleLogits = Callable[[torch.Tensor, int], torch.Tensor]


def iter_sample_probs(
    image: np.ndarray, sample_logits: SampleLogits, samples: int, window: Sequence[int], overlap: float = 0.5,
    batch: int = 4, progress: Callable[[int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """For s = 0..S-1: ``[K, D, H, W]`` softmax of sample s stitched over ``image`` ``[D, H, W]``.

    ``progress(n)`` is called with the number of windows each runner call completed.
    """
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    for s in range(samples):

        def predict(x: torch.Tensor, s: int = s) -> list[torch.Tensor]:
            with torch.no_grad():
                return [torch.softmax(sample_logits(x, s).float(), dim=1)]

        (p,) = sliding_window(vol, predict, window, overlap=overlap, batch=batch, progress=progress)
        yield p


def per_sample_probs(
    image: np.ndarray, sample_logits: SampleLogits, samples: int, window: Sequence[int], overlap: float = 0.5,
    batch: int = 4, progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``[S, K, D, H, W]`` softmax of each sample, each stitched over the whole ``image`` ``[D, H, W]``."""
    return torch.stack(list(iter_sample_probs(image, sample_logits, samples, window, overlap, batch, progress)))


__all__ = ["SampleLogits", "iter_sample_probs", "per_sample_probs"]
