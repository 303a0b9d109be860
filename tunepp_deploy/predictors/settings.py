"""Run settings of every predictor, resolved from the model's config in one place.

Every command takes the same optional overrides (``None`` = "the model config's ``infer`` default"),
and every method resolves them here, so the "None -> config default" rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS

Blend = Literal["auto", "sample", "window"]


@dataclass(frozen=True)
class RunOptions:
    """Overrides given on the command line; ``None`` means the config's default."""

    samples: int | None = None
    seed: int | None = None
    overlap: float | None = None
    max_batch: int | None = None
    memory_gb: float | None = None
    blend: Blend = "auto"
    noise_draws: int | None = None
    #: rows (window x sample) per runner call: N, "auto" (measured once per model, bench/head_calls.py) or
    #: None (the runner's default); the maps do not depend on it
    rows_per_call: int | Literal["auto"] | None = None
    # one eval-mode pass (all dropout masks 1, no logit noise): the single-pass baseline of experiments
    deterministic: bool = False


@dataclass(frozen=True)
class RunSettings:
    """Resolved settings (no ``None``)."""

    samples: int
    seed: int
    overlap: float
    max_batch: int
    memory_gb: float
    blend: Blend
    noise_draws: int
    deterministic: bool = False
    rows_per_call: int | Literal["auto"] | None = None

    def with_(self, **kw: object) -> RunSettings:
        return replace(self, **kw)  # type: ignore[arg-type]


def resolve(cfg: TuneppConfig, opts: RunOptions | None = None) -> RunSettings:
    """``opts`` over ``cfg.infer`` (module docstring)."""
    o = opts or RunOptions()
    d = cfg.infer
    resolved = RunSettings(
        samples=d.samples if o.samples is None else int(o.samples),
        seed=d.seed if o.seed is None else int(o.seed),
        overlap=d.overlap if o.overlap is None else float(o.overlap),
        max_batch=d.max_batch if o.max_batch is None else int(o.max_batch),
        memory_gb=d.memory_gb if o.memory_gb is None else float(o.memory_gb),
        blend=o.blend,
        noise_draws=DEFAULT_NOISE_DRAWS if o.noise_draws is None else int(o.noise_draws),
        rows_per_call=o.rows_per_call,
    )
    # one eval-mode pass: a single sample and no logit noise, whatever was asked for those two
    return resolved.with_(samples=1, noise_draws=0, deterministic=True) if o.deterministic else resolved


__all__ = ["Blend", "RunOptions", "RunSettings", "resolve"]
