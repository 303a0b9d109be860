r"""Temperature scaling: one temperature (or one per class) fitted on validation logits by NLL.

Model: ``p = softmax(z / T)`` with a scalar ``T > 0`` (Guo et al. 2017), or ``p_k ∝ exp(z_k / T_k)``
with one ``T_k`` per class (``--per-class``; vector scaling without bias). A scalar T never changes
the arg-max, so Dice and topology are untouched and only confidence moves; per-class temperatures
can change the arg-max near decision boundaries (reported, not hidden).

**Fit**: minimise the mean NLL ``-log softmax(z / T)_y`` over validation voxels with L-BFGS on
``log T`` (unconstrained, so T stays positive; strong-Wolfe line search, float64). The logits are the
deterministic network's (dropout off: all-ones masks) blended by the sliding window over whole
validation volumes on the model grid — the same windows inference uses. Voxels are subsampled
uniformly (default 200k) for the fit: NLL is a mean, so a random subsample estimates it without bias
and L-BFGS converges in a few dozen evaluations; ECE before and after is measured on a disjoint
subsample (all voxels and foreground-only; :mod:`tunepp_deploy.metrics.calibration`). A case gives
at most half its voxels to the fit, so small validation volumes still leave held-out voxels.

Logits are blended across overlapping windows before scaling; inference scales each window's (and
each MC sample's) logits and blends probabilities. Both are linear in the same logits inside one
window, so the difference is confined to window overlaps and is second order.

**Storage** (read by inference):

* checkpoint: key ``"temperature"`` = list of floats (length 1 or K), plus ``"temperature_fit"``
  (what was fitted on, ECE before/after); written to a new file or in place, atomically;
* ONNX: ``metadata_props`` key ``"temperature"`` = JSON list (and the same value under
  ``"tunepp.temperature"``, next to the other ``tunepp.*`` keys); the file is rewritten atomically.

:class:`TemperedRunner` applies a stored temperature to any runner: ``logits / T`` and, because
the aleatoric head predicts the log-variance of the logits, ``log_var - 2 log T`` (the variance of
``z / T`` is ``sigma^2 / T^2``), so the probability-space aleatoric map stays consistent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tunepp_deploy.export.metadata import PREFIX

from tunepp_deploy.data.dataset import load_case, split_cases
from tunepp_deploy.data.layout import CasePaths, find_cases
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.infer.masks import identity_masks
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.load import model_kind
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.metrics.calibration import ece
from tunepp_deploy.train.checkpoint import read_checkpoint

CHECKPOINT_KEY = "temperature"
ONNX_KEY = "temperature"
ONNX_PREFIXED_KEY = PREFIX + "temperature"


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, per_class: bool = False, max_iter: int = 200
) -> torch.Tensor:
    """NLL-optimal temperature(s) for ``logits`` ``[N, K]`` and ``labels`` ``[N]`` (module docstring).

    Returns a float64 tensor of length 1 (scalar T) or K (``per_class``).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z = logits.detach().to(torch.float64)
    y = labels.detach().long()
    log_t = torch.zeros(z.shape[1] if per_class else 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / torch.exp(log_t), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return torch.exp(log_t.detach())


def scale_logits(logits: torch.Tensor, temperature: Sequence[float] | torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """``logits / T`` with T broadcast along ``class_dim`` (length 1 or K)."""
    t = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device).reshape(-1)
    shape = [1] * logits.ndim
    shape[class_dim] = t.numel()
    return logits / t.reshape(shape)


class TemperedRunner(Runner):
    """Wrap a runner so its logits are divided by T (and its logit log-variance shifted by -2 log T)."""

    def __init__(self, inner: Runner, temperature: Sequence[float]) -> None:
        super().__init__(inner.meta, inner.device)
        t = [float(v) for v in temperature]
        if len(t) not in (1, inner.meta.num_classes) or min(t) <= 0:
            raise TuneppError(f"temperature must be 1 or {inner.meta.num_classes} positive values, got {t}")
        self.inner, self.temperature = inner, t
        self.name = inner.name

    @property
    def max_rows(self) -> int | None:
        return self.inner.max_rows

    def describe(self) -> str:
        return f"{self.inner.describe()}, temperature {[round(v, 4) for v in self.temperature]}"

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, log_var = self.inner.infer(x, masks)
        t = torch.as_tensor(self.temperature, dtype=torch.float32, device=logits.device)
        log_t = torch.log(t)
        # per-class T has no single logit variance; the mean log T is the geometric-mean temperature
        return scale_logits(logits.float(), t), log_var.float() - 2.0 * log_t.mean()

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------------------------------
# validation logits


@dataclass
class ValLogits:
    """Deterministic validation logits, subsampled: a fit set and disjoint evaluation sets."""

    fit_logits: torch.Tensor
    fit_labels: torch.Tensor
    eval_logits: torch.Tensor
    eval_labels: torch.Tensor
    fg_logits: torch.Tensor
    fg_labels: torch.Tensor
    cases: list[str] = field(default_factory=list)
    voxels_seen: int = 0


def validation_cases(
    model: Path, data: Path, layout: str, val_fraction: float, seed: int
) -> tuple[list[CasePaths], str]:
    """The validation split: the run folder's ``split.json`` next to ``model`` if present, else a fraction.

    Returns the cases and a short description of where the split came from.
    """
    all_cases = find_cases(data, layout)
    split = model.parent / "split.json"
    if split.is_file():
        try:
            names = json.loads(split.read_text())["val"]
        except (KeyError, ValueError) as e:
            raise DataError(f"{split}: unreadable split ({type(e).__name__})") from None
        by_name = {c.name: c for c in all_cases}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(f"{split}: validation case {missing[0]} is not in {data}")
        return [by_name[n] for n in names], f"{split} ({len(names)} val cases)"
    _, val = split_cases(all_cases, val_fraction, seed)
    return val, f"val fraction {val_fraction} of {len(all_cases)} cases (seed {seed})"


def _take(n_total: int, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(n_total) if exclude is None else np.setdiff1d(np.arange(n_total), exclude, assume_unique=True)
    return pool if pool.size <= n else rng.choice(pool, size=n, replace=False)


@torch.no_grad()
def gather_val_logits(
    runner: Runner, cases: Sequence[CasePaths], overlap: float = 0.5, fit_voxels: int = 200_000,
    eval_voxels: int = 1_000_000, seed: int = 0, batch: int = 4,
) -> ValLogits:
    """Dropout-off sliding-window logits on ``cases`` (preprocessed as inference does), subsampled."""
    meta = runner.meta
    masks = identity_masks(meta.sites, meta.window, 1)
    rng = np.random.default_rng(seed)
    per = max(1, math.ceil(fit_voxels / max(len(cases), 1)))
    per_eval = max(1, math.ceil(eval_voxels / max(len(cases), 1)))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("fl", "fy", "el", "ey", "gl", "gy")}
    seen = 0

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        logits, _ = runner(x, masks.rows([0], x.shape[0], runner.device))
        return [logits.float()]

    for case in cases:
        lc = load_case(case, meta.config.data)
        vol = torch.from_numpy(lc.image)[None].to(runner.device)
        (logits,) = sliding_window(vol, predict, meta.window, overlap=overlap, batch=batch)
        z = logits.reshape(logits.shape[0], -1).T.cpu()
        y = torch.from_numpy(lc.label.reshape(-1).astype(np.int64))
        n = y.numel()
        seen += n
        fit_idx = _take(n, max(1, min(per, n // 2)), rng)  # at most half a case: the rest is held out for ECE
        eval_idx = _take(n, per_eval, rng, exclude=np.sort(fit_idx))
        fg = np.nonzero(((z.argmax(1) > 0) | (y > 0)).numpy())[0]
        fg_idx = fg if fg.size <= per_eval else rng.choice(fg, size=per_eval, replace=False)
        for key, idx in (("f", fit_idx), ("e", eval_idx), ("g", fg_idx)):
            t = torch.from_numpy(np.asarray(idx, np.int64))
            parts[key + "l"].append(z[t])
            parts[key + "y"].append(y[t])
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}
    return ValLogits(cat["fl"], cat["fy"], cat["el"], cat["ey"], cat["gl"], cat["gy"], [c.name for c in cases], seen)


def ece_of_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: Sequence[float] | None = None) -> float:
    """15-bin top-label ECE of ``softmax(logits / T)`` (NaN for no voxels)."""
    if labels.numel() == 0:
        return float("nan")
    z = logits if temperature is None else scale_logits(logits, temperature)
    p = torch.softmax(z.double(), dim=1).T.numpy()
    return ece(p, labels.numpy())


def nll_of_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: Sequence[float] | None = None) -> float:
    """Mean NLL of ``softmax(logits / T)``."""
    if labels.numel() == 0:
        return float("nan")
    z = logits if temperature is None else scale_logits(logits, temperature)
    return float(F.cross_entropy(z.double(), labels.long()))


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the calibration it gave on held-out validation voxels."""

    temperature: list[float]
    per_class: bool
    ece_before: float
    ece_after: float
    ece_fg_before: float
    ece_fg_after: float
    nll_before: float
    nll_after: float
    fit_voxels: int
    eval_voxels: int
    cases: list[str]
    split: str

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def fit_on_validation(val: ValLogits, per_class: bool, split: str) -> TemperatureFit:
    """Fit T on ``val``'s fit set; report ECE / NLL before and after on its evaluation sets."""
    if val.fit_labels.numel() == 0:
        raise DataError("no validation voxels to fit a temperature on")
    t = fit_temperature(val.fit_logits, val.fit_labels, per_class=per_class)
    tl = [float(v) for v in t]
    return TemperatureFit(
        tl, per_class,
        ece_of_logits(val.eval_logits, val.eval_labels), ece_of_logits(val.eval_logits, val.eval_labels, tl),
        ece_of_logits(val.fg_logits, val.fg_labels), ece_of_logits(val.fg_logits, val.fg_labels, tl),
        nll_of_logits(val.eval_logits, val.eval_labels), nll_of_logits(val.eval_logits, val.eval_labels, tl),
        int(val.fit_labels.numel()), int(val.eval_labels.numel()), val.cases, split,
    )


# ---------------------------------------------------------------------------------------------------
# storage


def read_temperature(model: str | Path) -> list[float] | None:
    """The temperature stored in a checkpoint or ONNX file (None when there is none)."""
    p = Path(model)
    kind = model_kind(p)
    if kind == "onnx":
        props = {q.key: q.value for q in onnx.load(str(p), load_external_data=False).metadata_props}
        raw = props.get(ONNX_KEY, props.get(ONNX_PREFIXED_KEY))
        return None if raw is None else [float(v) for v in json.loads(raw)]
    if kind == "checkpoint":
        t = read_checkpoint(p).get(CHECKPOINT_KEY)
        if t is None:
            return None
        return [float(v) for v in (t.reshape(-1).tolist() if isinstance(t, torch.Tensor) else t)]
    raise TuneppError(f"{p}: temperatures are stored in checkpoints and ONNX files, not engines")


def store_temperature(model: str | Path, fit: TemperatureFit, out: str | Path | None = None) -> Path:
    """Write ``fit.temperature`` into a copy of ``model`` at ``out`` (default: ``model`` in place), atomically."""
    src = Path(model)
    dst = Path(out) if out is not None else src
    kind = model_kind(src)
    if kind == "onnx":
        m = onnx.load(str(src))
        props = {q.key: q.value for q in m.metadata_props}
        props[ONNX_KEY] = props[ONNX_PREFIXED_KEY] = json.dumps(fit.temperature)
        props[PREFIX + "temperature_fit"] = json.dumps(fit.as_dict())
        del m.metadata_props[:]
        onnx.helper.set_model_props(m, props)
        write_atomic(dst, lambda tmp: onnx.save_model(m, str(tmp)), suffix=".onnx")
        return dst
    if kind != "checkpoint":
        raise TuneppError(f"{src}: store the temperature in the checkpoint or ONNX file the engine is built from")
    ckpt = read_checkpoint(src)
    ckpt[CHECKPOINT_KEY] = list(fit.temperature)
    ckpt["temperature_fit"] = fit.as_dict()
    write_atomic(dst, lambda tmp: torch.save(ckpt, tmp))
    return dst


__all__ = [
    "CHECKPOINT_KEY",
    "ONNX_KEY",
    "TemperatureFit",
    "TemperedRunner",
    "ValLogits",
    "ece_of_logits",
    "fit_on_validation",
    "fit_temperature",
    "gather_val_logits",
    "nll_of_logits",
    "read_temperature",
    "scale_logits",
    "store_temperature",
    "validation_cases",
]
