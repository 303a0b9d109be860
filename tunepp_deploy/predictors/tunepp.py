"""TUNE++ MC dropout as a :class:`~tunepp_deploy.predictors.base.Predictor`.

The runner (torch checkpoint, ONNX Runtime graph or TensorRT engine) executes the exported graph
contract; this predictor draws the masks and logit-noise of S samples from the seed once (the same
for every case and every backend), applies a stored temperature, and runs the streamed MC engine
(:func:`tunepp_deploy.infer.mc.mc_predict`). Maps: aleatoric, epistemic, total (= their sum exactly),
plus predictive entropy and mutual information for the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunepp_deploy.infer.masks import identity_masks, mask_alignment, sample_masks
from tunepp_deploy.infer.mc import MCSettings, check_rows_per_call, engine_plan, mc_predict
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.infer.uncertainty import clamp_and_sum
from tunepp_deploy.model_file import check_temperature
from tunepp_deploy.predictors.base import Prediction, Predictor, Progress, counting
from tunepp_deploy.predictors.settings import RunSettings

DEFINITIONS = ("see tunepp_deploy/infer/uncertainty.py: p_s = mean_t softmax(z_s + sigma_s eps_t); "
               "aleatoric = mean_s(1 - sum_k p_sk^2), epistemic = sum_k Var_s p_sk, "
               "total = aleatoric + epistemic = 1 - sum_k pbar_k^2")


class TuneppPredictor(Predictor):
    """A TUNE++ runner plus the MC settings; the runner is closed with the predictor."""

    method = "tunepp"
    map_names = ("aleatoric", "epistemic", "total")
    flag_map = "total"
    definitions = DEFINITIONS

    def __init__(self, runner: Runner, settings: RunSettings, temperature: list[float] | None = None) -> None:
        meta = runner.meta
        # a non-fp32 OpenVINO run is labelled (e.g. "openvino:bf16"): its reports name it and resume refuses to
        # mix it with an fp32 run's cases in one folder
        precision = getattr(runner, "precision", "fp32")
        backend = runner.name if precision == "fp32" else f"{runner.name}:{precision}"
        super().__init__(meta.config, meta.window, backend, runner.device)
        if temperature is not None:  # the one validator of model-file values (finite, within its range)
            temperature = check_temperature(list(temperature), "temperature", meta.num_classes)
        self.runner, self.settings, self.temperature = runner, settings, temperature
        self.rows_per_call, self.rows_per_call_how = self._rows_per_call(runner, settings)
        self.mc = MCSettings(samples=settings.samples, seed=settings.seed, overlap=settings.overlap,
                             max_batch=settings.max_batch, memory_gb=settings.memory_gb, blend=settings.blend,
                             noise_draws=settings.noise_draws, rows_per_call=self.rows_per_call)
        self.masks = (identity_masks(meta.sites, meta.window, 1) if settings.deterministic
                      else sample_masks(meta.sites, meta.window, settings.samples, settings.seed))
        self.trunk_pair = self._pair_if_needed(runner, self.mc)

    @staticmethod
    def _pair_if_needed(runner: Runner, mc: MCSettings) -> str:
        """A one-graph runner whose call plan cannot take a window's S rows at once would rerun the trunk
        every call (at 96^3 the budget allows 1 row: S full passes); such a runner switches to its trunk /
        head pair where it has one (measured: bench/results/head_calls.md). Returns what was done, in words."""
        if runner.splits:
            return "split runner"
        per_call = engine_plan(runner, mc).samples_per_call
        if mc.samples <= 1 or per_call >= mc.samples:
            return "one graph (a window's samples fit one call)"
        if runner.enable_split():
            return f"trunk/head pair ({per_call} of {mc.samples} rows per call)"
        return f"one graph, trunk rerun per call ({per_call} of {mc.samples} rows per call; no pair on this backend)"

    @staticmethod
    def _rows_per_call(runner: Runner, settings: RunSettings) -> tuple[int | None, str]:
        """The head-call size and how it was chosen: given, measured once here (``auto``: the fastest of
        bench/head_calls.py's candidates on one window of this runner), or the runner's default."""
        rows = settings.rows_per_call
        if rows == "auto":
            if settings.deterministic or settings.samples == 1:
                return None, "default (one sample: nothing to choose)"
            from tunepp_deploy.bench.head_calls import choose_rows_per_call

            chosen = choose_rows_per_call(runner, samples=settings.samples, seed=settings.seed)
            return chosen, f"auto (measured: {chosen})"
        if rows is None:
            return None, "default"
        return check_rows_per_call(rows), "given"

    @property
    def meta(self):
        return self.runner.meta

    def predict(self, image: np.ndarray, progress: Progress | None = None) -> Prediction:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        windows = count_windows(image.shape, self.window, self.mc.overlap, mask_alignment(self.meta.sites))
        step = counting(progress, windows * self.mc.samples)

        res = mc_predict(x, self.runner, self.masks, self.mc, progress=step, temperature=self.temperature)
        m = res.maps
        maps = {"aleatoric": m.aleatoric, "epistemic": m.epistemic, "total": m.total,
                "predictive_entropy": m.predictive_entropy, "mutual_information": m.mutual_information}
        info: dict[str, Any] = {
            "temperature": self.temperature,
            "samples": self.mc.samples,
            "seed": self.mc.seed,
            "noise_draws": self.mc.noise_draws,
            "overlap": self.mc.overlap,
            "windows": res.windows,
            "runner_calls": res.calls,
            "windows_per_call": res.plan.windows_per_call,
            "samples_per_call": res.plan.samples_per_call,
            "blend": res.blend,
            "exact_blend": res.blend == "sample",
            "sample_chunk": res.sample_chunk,
            "sample_chunks": int(res.extra["sample_chunks"]),
            "trunk": res.trunk,
            "rows_per_call": self.rows_per_call_how,
            "trunk_pair": self.trunk_pair,
        }
        return Prediction(m.mean_probs, maps, info)

    def finish_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return clamp_and_sum(maps)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_version": self.meta.version, "samples": self.mc.samples,
                "seed": self.mc.seed}

    def describe_runner(self) -> str:
        t = f", temperature {[round(v, 4) for v in self.temperature]}" if self.temperature else ""
        return self.runner.describe() + t

    def close(self) -> None:
        self.runner.close()


__all__ = ["DEFINITIONS", "TuneppPredictor"]
