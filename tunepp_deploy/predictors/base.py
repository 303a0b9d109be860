"""The one predictor interface every uncertainty method implements.

A predictor is one opened model of one method on one backend. It knows what the case pipeline
(:mod:`tunepp_deploy.infer.case`) needs to take a scan in and write it out — classes, spacing,
intensity normalisation, window, the names of the maps it writes — and predicts one *preprocessed*
volume on the model grid. The pipeline does the rest the same way for every method: load, preprocess,
:meth:`Predictor.predict`, resample to the input grid, :meth:`Predictor.finish_maps`, topology report,
save. So TUNE++ MC dropout, SegWithU, the variational networks and saliency fusion differ only in
their ``predict``; a fix to loading, resampling, reporting or writing is made once.

The shape follows MONAI's split of inferers from networks and Polygraphy's runners: a predictor
*has* a runner (:mod:`tunepp_deploy.infer.runners`), which only executes a graph on a backend; the
predictor decides what to feed it and how samples become maps (:mod:`tunepp_deploy.infer.sampling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import torch

from tunepp_deploy.config.schema import IntensityConfig, TuneppConfig

#: ``progress(done, total)``: units of work (windows x samples) completed in the current case.
Progress = Callable[[int, int], None]


def counting(progress: Progress | None, total: int) -> Callable[[int], None]:
    """A ``step(n)`` that adds ``n`` units of work and reports ``progress(done, total)``."""
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    return step


@dataclass
class Prediction:
    """One volume's result on the model grid.

    ``probs [K, D, H, W]`` are the predictive class probabilities (labels are their argmax after
    resampling); ``maps`` the per-voxel maps ``[D, H, W]`` by name (at least the predictor's
    :attr:`~Predictor.map_names`, optionally more that only the report uses); ``info`` what the run
    did, merged into the case report (samples, windows, blend, ...).
    """

    probs: torch.Tensor
    maps: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class Predictor(ABC):
    """One model of one method, opened on one backend; a context manager (module docstring)."""

    #: ``tunepp``, ``segwithu``, ``variational`` or ``saliency``.
    method: str = "?"
    #: The maps written as ``NAME_<map>.nii.gz`` (float32), in this order.
    map_names: tuple[str, ...] = ()
    #: The map that drives the report's flags and triage score (the report calls it ``total``).
    flag_map: str = "total"
    #: One line saying what the maps are (the report's ``uncertainty_definitions``).
    definitions: str = ""

    def __init__(self, cfg: TuneppConfig, window: tuple[int, int, int], backend: str, device: torch.device) -> None:
        self.cfg = cfg
        self.window = tuple(int(w) for w in window)
        self.backend = backend
        self.device = device

    @property
    def classes(self) -> list[str]:
        return list(self.cfg.data.classes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.cfg.data.spacing)  # type: ignore[return-value]

    @property
    def intensity(self) -> IntensityConfig:
        return self.cfg.data.intensity

    @abstractmethod
    def predict(self, image: np.ndarray, progress: Progress | None = None) -> Prediction:
        """Predict a preprocessed volume ``image [D, H, W]`` (float32, model spacing, normalised)."""

    def finish_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Restore the maps' invariants after trilinear resampling to the input grid (default: none)."""
        return maps

    def report_maps(self, maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The maps the topology report averages per region, ``total`` (the flag map) first."""
        out = {"total": maps[self.flag_map]}
        out.update({k: v for k, v in maps.items() if k != self.flag_map})
        return out

    def describe(self) -> dict[str, Any]:
        """What the report says about the model and the run settings (method, backend, runner, ...)."""
        return {"method": self.method, "backend": self.backend, "runner": self.describe_runner(),
                "window": list(self.window)}

    def describe_runner(self) -> str:
        """One line: backend, device, precision."""
        return f"{self.backend} on {self.device}"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and networks."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Prediction", "Predictor", "Progress", "counting"]
