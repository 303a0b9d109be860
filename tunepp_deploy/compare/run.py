"""Train (or load) each method on one phantom split, evaluate on the held-out cases, time them.

Methods (all on the same config, split, crops and test cases):

* ``tunepp_mc`` — TUNE++ with S MC-dropout samples (seeded masks); uncertainty = epistemic variance.
  Trained with ``tunepp train``'s trainer for ``epochs`` (or loaded with ``backbone``).
* ``segwithu`` — the SegWithU head on that frozen backbone, 1 pass; uncertainty = ranking map,
  probabilities = the tempered softmax.
* ``vi_unet`` — variational U-Net, S weight samples; uncertainty = epistemic variance.
  Trained for ``epochs * iters_per_epoch`` iterations, like the backbone.

Latency = one whole test volume (sliding window, the config's window and overlap) including all S
samples, median of ``repeats``, per backend: torch always; ONNX Runtime for the variational U-Net
and SegWithU (their graphs export here in seconds). TUNE++'s ONNX latency is measured by
``tunepp bench`` and not repeated here. The saliency-fusion method is a 2D comparison
(:mod:`tunepp_deploy.methods.saliency.experiment`), run separately, not a row of this table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console

from tunepp_deploy.compare.evaluate import case_metrics, summarise
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase, load_case, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.uncertainty import epistemic_variance
from tunepp_deploy.methods.segwithu.export import OUTPUTS, export_segwithu
from tunepp_deploy.methods.segwithu.predict import predict_volume, torch_window_fn
from tunepp_deploy.methods.segwithu.train import HeadSettings, load_backbone, train_head
from tunepp_deploy.methods.variational.export import export_variational, noise_input_names
from tunepp_deploy.methods.variational.noise import sample_weight_noise
from tunepp_deploy.methods.variational.train import VariationalSettings, save_variational, train_variational
from tunepp_deploy.methods.volume import per_sample_probs

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # image -> (mean probs [K, ...], u [...])


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _mc(image: np.ndarray, sample_logits: Callable[[torch.Tensor, int], torch.Tensor], s: int,
        cfg: TuneppConfig) -> tuple[np.ndarray, np.ndarray]:
    p = per_sample_probs(image, sample_logits, s, cfg.window, cfg.infer.overlap, cfg.infer.max_batch)
    return p.mean(0).numpy(), epistemic_variance(p).numpy()


def run_compare(
    cfg: TuneppConfig, data: Path, out: Path, epochs: int = 2, samples: int = 10, backbone: Path | None = None,
    repeats: int = 3, console: Console | None = None,
) -> dict[str, Any]:
    """Run the comparison; returns (and :mod:`.report` writes) the results dict."""
    console = console or Console()
    torch.set_flush_denormal(True)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(data, cfg.data.layout)
    train_paths, test_paths = split_cases(cases, cfg.data.val_fraction, cfg.train.seed)
    train_cases = [load_case(c, cfg.data) for c in train_paths]
    test_cases: list[LoadedCase] = [load_case(c, cfg.data) for c in test_paths]
    iters = epochs * cfg.train.iters_per_epoch
    trained: dict[str, float] = {}

    # TUNE++ (backbone)
    t0 = time.perf_counter()
    if backbone is None:
        from tunepp_deploy.train.trainer import train as train_tunepp

        res = train_tunepp(cfg, out / "tunepp", data_dir=data, epochs=epochs, device="cpu", console=console)
        backbone = res.out_dir / "best.pt"
    net, _ = load_backbone(backbone)
    trained["tunepp_mc"] = time.perf_counter() - t0
    masks = sample_masks(net.dropout_sites(), cfg.window, samples, cfg.infer.seed)

    def tunepp_logits(x: torch.Tensor, s: int) -> torch.Tensor:
        return net.head(*(net.trunk(x)), *masks.rows([s], x.shape[0]))[0]

    # SegWithU head
    t0 = time.perf_counter()
    head = train_head(net, cfg, train_cases, HeadSettings(iters=iters, batch=cfg.train.batch_size)).model
    trained["segwithu"] = time.perf_counter() - t0
    swu_fn = torch_window_fn(head)

    # variational U-Net
    t0 = time.perf_counter()
    vi = train_variational(cfg, train_cases, VariationalSettings(arch="unet", iters=iters,
                                                                 batch=cfg.train.batch_size))
    save_variational(out / "vi_unet.pt", vi, cfg)
    trained["vi_unet"] = time.perf_counter() - t0
    noise = sample_weight_noise(vi.net.noise_shapes(), samples, cfg.infer.seed)

    def vi_logits(x: torch.Tensor, s: int) -> torch.Tensor:
        return vi.net(x, noise.sample(s))

    def swu_predict(image: np.ndarray, fn: Callable = swu_fn) -> tuple[np.ndarray, np.ndarray]:
        m = predict_volume(image, fn, cfg.window, cfg.infer.overlap, cfg.infer.max_batch)
        return m.tempered.numpy(), m.u_rnk.numpy()

    predictors: dict[str, tuple[Predict, int]] = {
        "tunepp_mc": (lambda im: _mc(im, tunepp_logits, samples, cfg), samples),
        "segwithu": (swu_predict, 1),
        "vi_unet": (lambda im: _mc(im, vi_logits, samples, cfg), samples),
    }

    # ONNX Runtime sessions for the methods whose graphs export quickly here
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    vi_sess = ort.InferenceSession(str(export_variational(vi.net, cfg.window, out / "vi_unet.onnx")), so,
                                   providers=["CPUExecutionProvider"])
    names = noise_input_names(vi.net)

    def vi_ort_logits(x: torch.Tensor, s: int) -> torch.Tensor:
        feeds = {"x": x.numpy(), **dict(zip(names, noise.sample_numpy(s), strict=True))}
        return torch.from_numpy(vi_sess.run(None, feeds)[0])

    swu_sess = ort.InferenceSession(str(export_segwithu(head, cfg, cfg.window, out / "segwithu.onnx")), so,
                                    providers=["CPUExecutionProvider"])

    def swu_ort(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in swu_sess.run(list(OUTPUTS), {"x": x.numpy()}))

    ort_predictors: dict[str, Predict] = {
        "vi_unet": lambda im: _mc(im, vi_ort_logits, samples, cfg),
        "segwithu": lambda im: swu_predict(im, swu_ort),
    }

    results: dict[str, Any] = {"samples": samples, "epochs": epochs, "iters": iters, "train_cases": len(train_cases),
                               "test_cases": [c.name for c in test_cases], "threads": torch.get_num_threads(),
                               "methods": {}}
    for name, (predict, s) in predictors.items():
        console.print(f"evaluating {name}")
        per_case = []
        for c in test_cases:
            probs, u = predict(c.image)
            per_case.append(case_metrics(probs, u, c.label))
        row = summarise(per_case)
        row["samples"] = s
        row["train_seconds"] = trained[name]
        probe = test_cases[0].image
        row["latency_torch_s"] = _median_seconds(lambda p=predict, im=probe: p(im), repeats)
        row["latency_ort_s"] = (_median_seconds(lambda p=ort_predictors[name], im=probe: p(im), repeats)
                                if name in ort_predictors else None)
        results["methods"][name] = row
    return results


__all__ = ["run_compare"]
