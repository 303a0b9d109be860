"""MC-inference benchmark: ``python -m tunepp_deploy.bench.mc [--out DIR] [--two-graphs]``.

Measures, for the phantom config's network (random weights — speed and parity do not depend on
training) on a default phantom volume (64x64x48 at 2x2x2.5 mm, 8 windows of 48x48x32):

* parity torch vs ONNX Runtime (max abs difference): trunk outputs, head outputs, whole-volume maps;
* latency of MC-25 on the whole volume for torch (CPU, fp32 eager) and ONNX Runtime (CPU provider),
  through the streamed engine :func:`tunepp_deploy.infer.mc.mc_predict` (with its sample chunk and
  trunk mode: torch splits trunk and head, ONNX Runtime runs the one graph);
* trunk reuse on vs off for one window x 25 samples (off = the window repeated 25 times, so the
  trunk runs per sample — what a plain ``model.train(); [model(x) for _ in range(25)]`` does);
* with ``--two-graphs``: the one-graph export against a trunk graph + head graph pair (why the
  exporter ships one graph).

Medians of ``--repeats`` runs after one warm-up; written as JSON and printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tunepp_deploy.export.metadata import meta_for
from tunepp_deploy.export.onnx_export import build_onnx

from tunepp_deploy.config import load_config
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.preprocess import normalize_intensity
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners.ort_runner import OrtRunner
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.model import build_network, repeat_for_samples


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def _two_graph_sessions(net, meta, tmp: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """Export trunk and head as separate graphs (head tiles internally, like the one graph)."""

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.net.trunk(x)

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, feats: tuple[torch.Tensor, ...], masks: tuple[torch.Tensor, ...]):
            return self.net.head(*repeat_for_samples(feats, masks[0].shape[0] // feats[0].shape[0]), *masks)

    b, r = torch.export.Dim("b", min=1, max=4096), torch.export.Dim("r", min=1, max=65536)
    x = torch.zeros(2, 1, *meta.window)
    masks = tuple(s.ones_mask(meta.window, 4) for s in meta.sites)
    with torch.no_grad():
        feats = net.trunk(x)
    names = net.trunk_output_names()
    torch.onnx.export(Trunk(), (x,), tmp / "trunk.onnx", input_names=["x"], output_names=names,
                      dynamic_shapes=({0: b},), dynamo=True, external_data=False)
    torch.onnx.export(Head(), (feats, masks), tmp / "head.onnx", input_names=[*names, *meta.mask_names],
                      output_names=["logits", "log_var"], external_data=False,
                      dynamic_shapes=(tuple({0: b} for _ in feats), tuple({0: r} for _ in masks)), dynamo=True)
    opts = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(tmp / "trunk.onnx"), providers=opts), ort.InferenceSession(
        str(tmp / "head.onnx"), providers=opts)


def run(repeats: int = 3, samples: int = 25, two_graphs: bool = False) -> dict[str, object]:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "phantom.yaml")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    meta = meta_for(net, cfg)
    t0 = time.perf_counter()
    onnx_bytes = build_onnx(net, meta).SerializeToString()
    res: dict[str, object] = {"export_seconds": round(time.perf_counter() - t0, 1), "samples": samples,
                              "torch_threads": torch.get_num_threads()}
    tr = TorchRunner(net, meta, torch.device("cpu"))
    orr = OrtRunner(onnx_bytes, meta, torch.device("cpu"))
    win = meta.window
    masks = sample_masks(meta.sites, win, samples, seed=0)

    # parity: trunk (exposed Tile inputs are checked in the tests; here via the one-window call), head, volume
    x = torch.rand(1, 1, *win, generator=torch.Generator().manual_seed(0))
    rows = masks.rows(range(samples), 1)
    with torch.no_grad():
        t_logits, t_lv = tr(x, rows)
    o_logits, o_lv = orr(x, rows)
    res["parity_head_logits_max_abs"] = float((t_logits - o_logits).abs().max())
    res["parity_head_log_var_max_abs"] = float((t_lv - o_lv).abs().max())

    case = generate_case(np.random.default_rng([0, 0]))
    vol = torch.from_numpy(normalize_intensity(case.image, cfg.data.intensity))[None]
    res["volume_shape"] = list(case.image.shape)
    settings = MCSettings(samples=samples, max_batch=1)
    runs = {}
    for name, runner in (("torch", tr), ("ort", orr)):
        res[f"mc{samples}_volume_seconds_{name}"] = _median(
            lambda r=runner, n=name: runs.__setitem__(n, mc_predict(vol, r, masks, settings)), repeats)
        # the streamed engine: samples per chunk and how the trunk ran (torch splits trunk / head, ORT runs whole)
        res[f"mc{samples}_sample_chunk_{name}"] = runs[name].sample_chunk
        res[f"mc{samples}_trunk_{name}"] = runs[name].trunk
    res["parity_volume_maps_max_abs"] = float(
        (runs["torch"].maps.stacked() - runs["ort"].maps.stacked()).abs().max())

    xr = x.repeat(samples, 1, 1, 1, 1)
    res["window_reuse_on_seconds_ort"] = _median(lambda: orr(x, rows), repeats)
    res["window_reuse_off_seconds_ort"] = _median(lambda: orr(xr, rows), repeats)
    with torch.no_grad():
        res["window_reuse_on_seconds_torch"] = _median(lambda: tr(x, rows), repeats)
        res["window_reuse_off_seconds_torch"] = _median(lambda: tr(xr, rows), repeats)

    if two_graphs:
        with tempfile.TemporaryDirectory() as tmp:
            trunk, head = _two_graph_sessions(net, meta, Path(tmp))
            feed_masks = {n: r.numpy() for n, r in zip(meta.mask_names, rows, strict=True)}

            def two() -> None:
                feats = trunk.run(None, {"x": x.numpy()})
                head.run(None, {**dict(zip([i.name for i in head.get_inputs()], feats, strict=False)), **feed_masks})

            res["window_two_graphs_seconds_ort"] = _median(two, repeats)
            res["window_one_graph_seconds_ort"] = res["window_reuse_on_seconds_ort"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--two-graphs", action="store_true")
    args = ap.parse_args()
    res = run(args.repeats, args.samples, args.two_graphs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mc.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
