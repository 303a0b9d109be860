r"""Temperature scaling of the MC predictive: one temperature (or one per class) fitted by NLL on validation.

**What is calibrated.** Inference does not output ``softmax(z)`` of one network: it averages the
class probabilities of ``S`` dropout samples, each itself an average over heteroscedastic logit
noise (:mod:`tunepp_deploy.infer.logit_noise`). The temperature is therefore fitted on that MC
predictive at the configured ``S`` (Laves et al. 2019, "Well-calibrated model uncertainty with
temperature scaling for dropout variational inference"):

    p(T) = mean_s mean_t softmax((z_s + sigma_s * eps_{s,t}) / T),

with ``z_s`` and ``log sigma_s^2`` sample ``s``'s logits and logit log-variance and ``eps_{s,t}`` the
noise draws inference uses (:func:`~tunepp_deploy.infer.logit_noise.draw_logit_noise` of the MC seed).
Fitting on dropout-off logits and then dividing every MC sample by that T (what this module did before)
is miscalibrated: averaging samples already softens the predictive, so a T fitted to correct the
deterministic softmax's over-confidence corrects it a second time after averaging (an under-confident
predictive when the deterministic net was over-confident). A scalar T never changes a single
softmax's arg-max, but it can move the arg-max of an average of softmaxes slightly; per-class
temperatures (``--per-class``, ``p_k ∝ exp(z_k / T_k)``, vector scaling without bias) can change it
near decision boundaries. The share of evaluation voxels whose arg-max moved is recorded
(``argmax_changed``), not hidden.

**Consistency with** :class:`TemperedRunner`, which applies the stored T to every sample: ``z / T`` and
``log_var - 2 log T``, i.e. sigma becomes ``sigma / T``, and ``softmax(z / T + (sigma / T) eps)`` is
exactly ``softmax((z + sigma eps) / T)`` — the model fitted here. For per-class T the runner shifts the
log-variance by ``2 mean_k log T_k`` (one variance per voxel); the fit uses the same
``z_k / T_k + sigma eps_k / exp(mean_k log T_k)`` so what is fitted is what inference computes.

**Fit**: minimise the mean NLL ``-log p(T)_y`` over the fit voxels with L-BFGS-B (SciPy) on ``log T``
(T stays positive; float64; bounded to T in [0.01, 100], where a model that needs more is broken rather
than miscalibrated — the CLI warns well inside that range). The closure runs over voxel
chunks of bounded size (``S x draws x K`` per voxel, 16 MB per chunk tensor) and back-propagates
chunk by chunk, so memory is the stored float32 samples (``S x N x (K + 1) x 4`` bytes: 200 MB for
S = 25, N = 200k, K = 9) plus one chunk's graph.

**Samples**: per validation volume (preprocessed as inference does, on the model grid), the ``S`` dropout
samples of :func:`~tunepp_deploy.infer.masks.sample_masks` at the MC seed; each sample's logits *and*
log-variance are stitched over the whole volume by the sliding window (one stitched logit map per
sample — the per-sample blend), in groups of samples sized to the memory budget. Inference blends
per-window probabilities instead of logits; inside one window both are the same sample, so the
difference is confined to window overlaps and is second order.

**Disjoint fit / evaluation voxels**: per case one permutation of the voxel indices (voxel seed); its
first ``n_fit`` entries are the fit voxels (at most half the case, so small volumes keep held-out
voxels), the next ``n_eval`` the evaluation voxels — disjoint by construction. ECE (15 bins, all voxels
and foreground; :mod:`tunepp_deploy.metrics.calibration`) and NLL before (T = 1) and after are measured
on the MC predictive at the evaluation voxels only; foreground ECE uses the evaluation voxels in the
union of the predicted (arg-max of the MC predictive at T = 1) and the true foreground. A subsample is
enough: NLL and ECE are means, estimated without bias by uniform voxels.

**Storage** (read by inference):

* checkpoint: key ``"temperature"`` = list of floats (length 1 or K), plus ``"temperature_fit"``
  (:meth:`TemperatureFit.as_dict`: samples S, noise draws, MC and voxel seeds, fit / evaluation voxel
  counts and the split rule, ECE / NLL before and after); written to a new file or in place, atomically;
* ONNX: ``metadata_props`` key ``"temperature"`` = JSON list (and the same value under
  ``"tunepp.temperature"``, next to the other ``tunepp.*`` keys) and ``"tunepp.temperature_fit"`` = the
  same dict as JSON; the file is rewritten atomically.

Files written before the MC fit have only the temperature and a shorter dict; :func:`read_temperature`
and :func:`read_temperature_fit` read both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from tunepp_deploy.export.metadata import PREFIX

from tunepp_deploy import model_file
from tunepp_deploy.data.dataset import load_case, split_cases
from tunepp_deploy.data.layout import CasePaths, find_cases
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError, ModelMismatchError, TuneppError
from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS, draw_logit_noise
from tunepp_deploy.infer.masks import SampleMasks, sample_masks
from tunepp_deploy.infer.mc import plan_calls
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.metrics.calibration import ece, foreground_region, nll
from tunepp_deploy.train.checkpoint import read_checkpoint

CHECKPOINT_KEY = "temperature"
CHECKPOINT_FIT_KEY = "temperature_fit"
ONNX_KEY = "temperature"
ONNX_PREFIXED_KEY = PREFIX + "temperature"
ONNX_FIT_KEY = PREFIX + "temperature_fit"

#: Bound on ``|log T|`` of the MC fit (T in [0.01, 100]): beyond it the model, not its calibration, is the
#: problem (an untrained net is worse than uniform and its NLL falls all the way to T = infinity).
LOG_T_BOUND = math.log(100.0)
#: float64 elements of one voxel chunk's ``[S, n, draws, K]`` logit tensor in the NLL closure (16 MB; a
#: gradient evaluation holds about nine such buffers at its peak).
CHUNK_ELEMENTS = 1 << 21


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, per_class: bool = False, max_iter: int = 200
) -> torch.Tensor:
    """NLL-optimal temperature(s) of plain ``softmax(logits / T)``: ``logits`` ``[N, K]``, ``labels`` ``[N]``.

    The one-sample, noise-free special case of :func:`fit_mc_temperature` (kept for deterministic
    models and as its reference). Returns a float64 tensor of length 1 (scalar T) or K (``per_class``).
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


# ---------------------------------------------------------------------------------------------------
# the MC predictive at temperature T


def _check_mc(logits: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor, labels: torch.Tensor | None) -> None:
    if logits.ndim != 3 or log_var.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [S, N, K] and log_var [S, N], got {tuple(logits.shape)} and "
                         f"{tuple(log_var.shape)}")
    if eps.ndim != 3 or eps.shape[0] != logits.shape[0] or eps.shape[2] != logits.shape[2]:
        raise ValueError(f"noise must be [S, draws, K] = [{logits.shape[0]}, *, {logits.shape[2]}], "
                         f"got {tuple(eps.shape)}")
    if labels is not None and labels.shape != logits.shape[1:2]:
        raise ValueError(f"labels must be [N] = [{logits.shape[1]}], got {tuple(labels.shape)}")


def _noise64(eps: torch.Tensor | np.ndarray, samples: int, classes: int) -> torch.Tensor:
    """float64 ``[S, draws, K]``; zero draws become one zero draw (plain softmax, as ``sampled_softmax``)."""
    e = torch.as_tensor(eps).to(torch.float64)
    return torch.zeros(samples, 1, classes, dtype=torch.float64) if e.shape[1] == 0 else e


def _f64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, torch.float64)


def _chunk(samples: int, draws: int, classes: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, samples * draws * classes))


def _tempered_log_softmax(z: torch.Tensor, lv: torch.Tensor, eps: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """``log softmax(z / T + sigma eps / T_bar)`` ``[S, n, draws, K]`` for one voxel chunk (module docstring).

    ``z`` ``[S, n, K]``, ``lv`` ``[S, n]`` (float64), ``eps`` ``[S, draws, K]``, ``log_t`` ``[1]`` or ``[K]``;
    ``T_bar = exp(mean log T)`` is the temperature :class:`TemperedRunner` applies to the log-variance.
    """
    sigma = torch.exp(0.5 * lv) * torch.exp(-log_t.mean())
    u = (z * torch.exp(-log_t))[:, :, None, :] + sigma[:, :, None, None] * eps[:, None, :, :]
    return torch.log_softmax(u, dim=-1)


def _log_py(z: torch.Tensor, lv: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """``log p(T)_y`` ``[n]`` of the MC predictive (mean over samples and draws) for one voxel chunk."""
    lp = _tempered_log_softmax(z, lv, eps, log_t)
    s, n, d, _ = lp.shape
    lpy = lp.gather(-1, y.view(1, n, 1, 1).expand(s, n, d, 1))[..., 0]  # [S, n, draws]
    return torch.logsumexp(lpy.permute(1, 0, 2).reshape(n, s * d), dim=1) - math.log(s * d)


def _log_t(temperature: Sequence[float] | torch.Tensor | None, classes: int) -> torch.Tensor:
    t = torch.ones(1, dtype=torch.float64) if temperature is None else torch.as_tensor(
        temperature, dtype=torch.float64).reshape(-1)
    if t.numel() not in (1, classes) or bool((t <= 0).any()):
        raise ValueError(f"temperature must be 1 or {classes} positive values, got {t.tolist()}")
    return torch.log(t)


@torch.no_grad()
def mc_log_likelihood(
    logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | np.ndarray,
    temperature: Sequence[float] | torch.Tensor | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """``log p(T)_y`` per voxel ``[N]`` (float64, CPU) of the MC predictive; ``temperature`` None is T = 1.

    ``device``: where the voxel chunks are computed (default CPU; the stored samples stay where they are).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    e = _noise64(eps, logits.shape[0], logits.shape[2])
    _check_mc(logits, log_var, e, labels)
    e, log_t = e.to(dev), _log_t(temperature, logits.shape[2]).to(dev)
    n, c = logits.shape[1], _chunk(logits.shape[0], e.shape[1], logits.shape[2])
    out = torch.empty(n, dtype=torch.float64)
    for a in range(0, n, c):
        out[a : a + c] = _log_py(_f64(logits[:, a : a + c], dev), _f64(log_var[:, a : a + c], dev),
                                 labels[a : a + c].to(dev, torch.long), e, log_t).cpu()
    return out


def mc_nll(
    logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | np.ndarray,
    temperature: Sequence[float] | torch.Tensor | None = None, device: torch.device | str | None = None,
) -> float:
    """Mean NLL of the MC predictive at ``temperature`` (the objective of :func:`fit_mc_temperature`)."""
    if labels.numel() == 0:
        return float("nan")
    return float(-mc_log_likelihood(logits, log_var, labels, eps, temperature, device).mean())


@torch.no_grad()
def mc_probs(
    logits: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor | np.ndarray,
    temperature: Sequence[float] | torch.Tensor | None = None, device: torch.device | str | None = None,
) -> np.ndarray:
    """The MC predictive ``p(T)`` ``[K, N]`` (float64): mean over samples and noise draws of the tempered softmax."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    e = _noise64(eps, logits.shape[0], logits.shape[2])
    _check_mc(logits, log_var, e, None)
    e, log_t = e.to(dev), _log_t(temperature, logits.shape[2]).to(dev)
    s, n, k = logits.shape
    c = _chunk(s, e.shape[1], k)
    out = np.empty((k, n), np.float64)
    for a in range(0, n, c):
        lp = _tempered_log_softmax(_f64(logits[:, a : a + c], dev), _f64(log_var[:, a : a + c], dev), e, log_t)
        out[:, a : a + c] = lp.exp_().mean(dim=(0, 2)).T.cpu().numpy()
    return out


def fit_mc_temperature(
    logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | np.ndarray,
    per_class: bool = False, max_iter: int = 100, device: torch.device | str | None = None,
) -> torch.Tensor:
    """NLL-optimal temperature(s) of the MC predictive (module docstring).

    ``logits`` ``[S, N, K]`` and ``log_var`` ``[S, N]`` per dropout sample (any float dtype; float32 keeps
    memory down), ``labels`` ``[N]``, ``eps`` ``[S, draws, K]`` the logit-noise draws (``draws`` may be 0).
    L-BFGS-B (SciPy) on ``log T`` in float64, within ``|log T| <= LOG_T_BOUND``; the loss and its
    gradient are summed over voxel chunks with a backward pass per chunk, so memory does not grow with N.
    ``device``: where the chunks are computed (default CPU). Returns a float64 CPU tensor of length 1 or K
    (``per_class``).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    e = _noise64(eps, logits.shape[0], logits.shape[2])
    _check_mc(logits, log_var, e, labels)
    s, n, k = logits.shape
    if n == 0:
        raise ValueError("no voxels to fit a temperature on")
    e = e.to(dev)
    c = _chunk(s, e.shape[1], k)

    def loss_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        log_t = torch.tensor(x, dtype=torch.float64, device=dev, requires_grad=True)
        total = 0.0
        with torch.enable_grad():
            for a in range(0, n, c):
                loss = -_log_py(_f64(logits[:, a : a + c], dev), _f64(log_var[:, a : a + c], dev),
                                labels[a : a + c].to(dev, torch.long), e, log_t).sum() / n
                loss.backward()
                total += float(loss.detach())
        assert log_t.grad is not None
        return total, log_t.grad.cpu().numpy()

    m = k if per_class else 1
    res = minimize(loss_and_grad, np.zeros(m), jac=True, method="L-BFGS-B", bounds=[(-LOG_T_BOUND, LOG_T_BOUND)] * m,
                   options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-9})
    return torch.exp(torch.as_tensor(res.x, dtype=torch.float64))


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
        t = model_file.check_temperature(list(temperature), "temperature", inner.meta.num_classes)
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
        # (the fit uses the same, see _tempered_log_softmax)
        return scale_logits(logits.float(), t), log_var.float() - 2.0 * log_t.mean()

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------------------------------
# validation samples


@dataclass
class ValSamples:
    """Per-sample validation logits and log-variance at the fit voxels and at the disjoint evaluation voxels.

    ``*_logits`` ``[S, N, K]`` and ``*_log_var`` ``[S, N]`` float32 (samples stitched over the volume),
    ``*_labels`` ``[N]``; ``noise`` ``[S, draws, K]`` the logit-noise draws of the MC seed. ``indices``
    holds per case the flat voxel indices (on the model grid) of the fit and the evaluation voxels.
    """

    fit_logits: torch.Tensor
    fit_log_var: torch.Tensor
    fit_labels: torch.Tensor
    eval_logits: torch.Tensor
    eval_log_var: torch.Tensor
    eval_labels: torch.Tensor
    noise: np.ndarray
    samples: int
    noise_draws: int
    mc_seed: int | None
    seed: int
    overlap: float
    cases: list[str] = field(default_factory=list)
    indices: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    voxels_seen: int = 0
    voxel_split: str = ""


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


def split_voxels(n: int, n_fit: int, n_eval: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint fit and evaluation voxel indices (sorted) of a case of ``n`` voxels, from one permutation.

    Fit: ``min(n_fit, n // 2)`` voxels (at least 1), evaluation: the next ``min(n_eval, rest)``.
    """
    f = max(1, min(n_fit, n // 2))
    e = max(0, min(n_eval, n - f))
    perm = rng.permutation(n)
    return np.sort(perm[:f]), np.sort(perm[f : f + e])


def stitch_samples(
    runner: Runner, volume: torch.Tensor, masks: SampleMasks, sample_ids: Sequence[int], overlap: float,
    windows_per_call: int, samples_per_call: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[S', K, *spatial]`` and log-variance ``[S', *spatial]`` of samples ``sample_ids``, each
    stitched over ``volume`` ``[C, *spatial]`` by :func:`sliding_window` (one map per sample)."""
    ids = list(sample_ids)
    k = runner.meta.num_classes
    groups = [ids[i : i + samples_per_call] for i in range(0, len(ids), samples_per_call)]

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        b, win = x.shape[0], tuple(x.shape[2:])
        zs, lvs = [], []
        for g in groups:
            z, lv = runner(x, masks.rows(g, b, runner.device))
            zs.append(z.float().reshape(len(g), b, k, *win))
            lvs.append(lv.float().reshape(len(g), b, *win))
        z_all = torch.cat(zs).transpose(0, 1).reshape(b, len(ids) * k, *win)
        return [z_all, torch.cat(lvs).transpose(0, 1)]

    z, lv = sliding_window(volume, predict, runner.meta.window, overlap=overlap, batch=windows_per_call)
    return z.reshape(len(ids), k, *z.shape[1:]), lv


@torch.no_grad()
def gather_val_samples(
    runner: Runner, cases: Sequence[CasePaths], samples: int, noise_draws: int = DEFAULT_NOISE_DRAWS,
    mc_seed: int | None = None, overlap: float | None = None, fit_voxels: int = 200_000,
    eval_voxels: int = 200_000, seed: int = 0, memory_gb: float | None = None,
    masks: SampleMasks | None = None, progress: Callable[[str], None] | None = None,
) -> ValSamples:
    """The MC samples of ``cases`` (preprocessed as inference does) at disjoint fit and evaluation voxels.

    ``samples`` dropout samples of ``sample_masks(sites, window, samples, mc_seed)`` (``mc_seed`` default:
    the config's ``infer.seed``; ``masks`` overrides the draw, e.g. all-ones masks for a deterministic
    check) and ``noise_draws`` logit-noise draws of the same seed. Fit and evaluation voxels are
    split per case from one permutation (:func:`split_voxels`, ``seed``), ``ceil(fit_voxels / cases)``
    and ``ceil(eval_voxels / cases)`` per case. Samples are stitched in groups whose stitched maps fit in a
    quarter of ``memory_gb`` (default: the config's ``infer.memory_gb``). ``progress(case)`` after each case.
    """
    if not cases:
        raise DataError("no validation cases")
    meta = runner.meta
    icfg = meta.config.infer
    mc_seed = icfg.seed if mc_seed is None else int(mc_seed)
    overlap = icfg.overlap if overlap is None else overlap
    memory_gb = icfg.memory_gb if memory_gb is None else memory_gb
    if masks is None:
        masks = sample_masks(meta.sites, meta.window, samples, mc_seed)
    elif masks.samples != samples:
        raise ValueError(f"masks hold {masks.samples} samples, not {samples}")
    k = meta.num_classes
    noise = draw_logit_noise(mc_seed, range(samples), noise_draws, k)
    rng = np.random.default_rng(seed)
    per_fit = max(1, math.ceil(fit_voxels / max(len(cases), 1)))
    per_eval = max(0, math.ceil(eval_voxels / max(len(cases), 1)))
    parts: dict[str, list[torch.Tensor]] = {k_: [] for k_ in ("fz", "fv", "fy", "ez", "ev", "ey")}
    indices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen = 0
    for case in cases:
        lc = load_case(case, meta.config.data)
        vol = torch.from_numpy(lc.image)[None].to(runner.device, torch.float32)
        y = torch.from_numpy(lc.label.reshape(-1).astype(np.int64))
        n = y.numel()
        seen += n
        fit_idx, eval_idx = split_voxels(n, per_fit, per_eval, rng)
        indices[case.name] = (fit_idx, eval_idx)
        padded = math.prod(max(s, w) for s, w in zip(vol.shape[1:], meta.window, strict=True))
        group = max(1, min(samples, int(memory_gb * 2**30 / 4 // ((k + 1) * padded * 4))))
        plan = plan_calls(meta, group, icfg.max_batch, memory_gb, runner.max_rows)
        take = {"f": torch.from_numpy(fit_idx), "e": torch.from_numpy(eval_idx)}
        got: dict[str, list[torch.Tensor]] = {k_: [] for k_ in ("fz", "fv", "ez", "ev")}
        for a in range(0, samples, group):
            z, lv = stitch_samples(runner, vol, masks, range(a, min(a + group, samples)), overlap,
                                   plan.windows_per_call, plan.samples_per_call)
            z, lv = z.reshape(z.shape[0], k, -1), lv.reshape(lv.shape[0], -1)
            for p, idx in take.items():
                i = idx.to(z.device)
                got[p + "z"].append(z[:, :, i].transpose(1, 2).contiguous().cpu())
                got[p + "v"].append(lv[:, i].contiguous().cpu())
            del z, lv
        for key, v in got.items():
            parts[key].append(torch.cat(v))
        parts["fy"].append(y[take["f"]])
        parts["ey"].append(y[take["e"]])
        if progress is not None:
            progress(case.name)
    cat = {key: torch.cat(v, dim=1 if key[1] in "zv" else 0) for key, v in parts.items()}
    split = (f"per case one permutation of the voxels (seed {seed}): the first min(ceil({fit_voxels}/{len(cases)}), "
             f"n/2) fit, the next min(ceil({eval_voxels}/{len(cases)}), rest) evaluate (disjoint); foreground ECE "
             "on the evaluation voxels in the union of predicted (MC predictive at T = 1) and true foreground")
    return ValSamples(cat["fz"], cat["fv"], cat["fy"], cat["ez"], cat["ev"], cat["ey"], noise, samples, noise_draws,
                      mc_seed, seed, overlap, [c.name for c in cases], indices, seen, split)


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the calibration it gave on held-out validation voxels.

    The first twelve fields are those of files written before the MC fit; the rest default to "not
    recorded" so such records still load.
    """

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
    samples: int | None = None
    noise_draws: int | None = None
    mc_seed: int | None = None
    seed: int | None = None
    eval_fg_voxels: int | None = None
    nll_fit_before: float | None = None
    nll_fit_after: float | None = None
    argmax_changed: float | None = None
    voxel_split: str = ""
    predictive: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (non-finite floats become None)."""
        def safe(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {k: safe(getattr(self, k)) for k in self.__dataclass_fields__}


def fit_on_validation(
    val: ValSamples, per_class: bool, split: str, device: torch.device | str | None = None
) -> TemperatureFit:
    """Fit T on the MC predictive at ``val``'s fit voxels; ECE / NLL before and after on its evaluation voxels.

    ``device``: where the predictive is computed (default CPU; a GPU makes the fit seconds instead of minutes).
    """
    if val.fit_labels.numel() == 0:
        raise DataError("no validation voxels to fit a temperature on")
    t = fit_mc_temperature(val.fit_logits, val.fit_log_var, val.fit_labels, val.noise, per_class=per_class,
                           device=device)
    tl = [float(v) for v in t]
    y = val.eval_labels.numpy()
    p0 = mc_probs(val.eval_logits, val.eval_log_var, val.noise, device=device)
    p1 = mc_probs(val.eval_logits, val.eval_log_var, val.noise, tl, device=device)
    fg = foreground_region(p0.argmax(0), y)

    def metric(f: Callable[..., float], p: np.ndarray, region: np.ndarray | None = None) -> float:
        return float("nan") if y.size == 0 else f(p, y, region)

    draws = f"{val.noise_draws} logit-noise draws" if val.noise_draws else "no logit noise"
    return TemperatureFit(
        tl, per_class,
        metric(ece, p0), metric(ece, p1), metric(ece, p0, fg), metric(ece, p1, fg), metric(nll, p0), metric(nll, p1),
        int(val.fit_labels.numel()), int(val.eval_labels.numel()), val.cases, split,
        samples=val.samples, noise_draws=val.noise_draws, mc_seed=val.mc_seed, seed=val.seed,
        eval_fg_voxels=int(fg.sum()),
        argmax_changed=float((p0.argmax(0) != p1.argmax(0)).mean()) if y.size else None,
        nll_fit_before=mc_nll(val.fit_logits, val.fit_log_var, val.fit_labels, val.noise, device=device),
        nll_fit_after=mc_nll(val.fit_logits, val.fit_log_var, val.fit_labels, val.noise, tl, device=device),
        voxel_split=val.voxel_split,
        predictive=(f"MC mean over {val.samples} dropout samples (seed {val.mc_seed}) x {draws} of "
                    f"softmax((z + sigma eps) / T); per-sample logits and log-variance stitched over the volume "
                    f"(overlap {val.overlap})"),
    )


# ---------------------------------------------------------------------------------------------------
# storage


def read_temperature(model: str | Path) -> list[float] | None:
    """The stored temperature (None when there is none): :func:`tunepp_deploy.model_file.read_temperature`,
    which refuses a corrupt, non-finite or non-positive value in one line."""
    return model_file.read_temperature(model)


def read_temperature_fit(model: str | Path) -> dict[str, Any] | None:
    """The stored record of the fit (:meth:`TemperatureFit.as_dict`; older files have fewer keys), or None."""
    p = Path(model)
    kind = model_file.model_kind(p)
    if kind == "onnx":
        props = model_file.read_onnx_props(p)
        if ONNX_FIT_KEY not in props:
            return None
        fit = model_file.parse_json_prop(props, ONNX_FIT_KEY, p)
    elif kind == "checkpoint":
        fit = read_checkpoint(p).get(CHECKPOINT_FIT_KEY)
        if fit is None:
            return None
    else:
        raise TuneppError(f"{p}: temperatures are stored in checkpoints and ONNX files, not engines")
    if not isinstance(fit, dict):
        raise ModelMismatchError(f"{p}: stored temperature fit ({ONNX_FIT_KEY}) is not a JSON object")
    return dict(fit)


def store_temperature(model: str | Path, fit: TemperatureFit, out: str | Path | None = None) -> Path:
    """Write ``fit.temperature`` and its record into a copy of ``model`` at ``out`` (default: in place), atomically."""
    src = Path(model)
    dst = Path(out) if out is not None else src
    kind = model_file.model_kind(src)
    if kind == "onnx":
        m = onnx.load(str(src))
        props = {q.key: q.value for q in m.metadata_props}
        props[ONNX_KEY] = props[ONNX_PREFIXED_KEY] = json.dumps(fit.temperature)
        props[ONNX_FIT_KEY] = json.dumps(fit.as_dict())
        del m.metadata_props[:]
        onnx.helper.set_model_props(m, props)
        write_atomic(dst, lambda tmp: onnx.save_model(m, str(tmp)), suffix=".onnx")
        return dst
    if kind != "checkpoint":
        raise TuneppError(f"{src}: store the temperature in the checkpoint or ONNX file the engine is built from")
    ckpt = read_checkpoint(src)
    ckpt[CHECKPOINT_KEY] = list(fit.temperature)
    ckpt[CHECKPOINT_FIT_KEY] = fit.as_dict()
    write_atomic(dst, lambda tmp: torch.save(ckpt, tmp))
    return dst


__all__ = [
    "CHECKPOINT_FIT_KEY",
    "CHECKPOINT_KEY",
    "LOG_T_BOUND",
    "ONNX_FIT_KEY",
    "ONNX_KEY",
    "TemperatureFit",
    "TemperedRunner",
    "ValSamples",
    "fit_mc_temperature",
    "fit_on_validation",
    "fit_temperature",
    "gather_val_samples",
    "mc_log_likelihood",
    "mc_nll",
    "mc_probs",
    "read_temperature",
    "read_temperature_fit",
    "scale_logits",
    "split_voxels",
    "stitch_samples",
    "store_temperature",
    "validation_cases",
]
