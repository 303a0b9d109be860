"""On a CUDA device (skipped elsewhere; ``tunepp bench gpu`` runs them with ``-m gpu``): torch CUDA MC against
CPU MC on a tiny network (same masks, same noise) per path — fp32, TF32, bf16 autocast, CUDA graphs,
torch.compile — and the engine's trunk split kept with CUDA graphs on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tunepp_deploy.bench.gpu_mc import PATHS, TINY, build_model, open_path, tiny_parity

from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "phantom.yaml"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("path", ["fp32", "tf32", "bf16", "bf16_graphs", "bf16_compile"])
def test_cuda_mc_matches_cpu(path: str) -> None:
    res = tiny_parity(torch.device("cuda"), [path], CONFIG)[path]
    assert res["ok"], res
    assert res["argmax_agreement"] > 0.99, res


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_keep_the_trunk_split() -> None:
    net, meta = build_model(CONFIG, TINY)
    runner = open_path("bf16_graphs", net, meta, torch.device("cuda"))
    assert runner.splits and runner.cuda_graphs
    vol = torch.rand(meta.in_channels, 48, 48, 48)
    masks = sample_masks(meta.sites, meta.window, 6, seed=1)
    # two sample chunks: the trunk is cached across them (computed once per window batch) with graphs on
    res = mc_predict(vol, runner, masks, MCSettings(samples=6, seed=1, max_batch=2, noise_draws=2, sample_chunk=3))
    assert res.trunk == "cached", res.trunk
    eager = mc_predict(vol, open_path("bf16", net, meta, torch.device("cuda")), masks,
                       MCSettings(samples=6, seed=1, max_batch=2, noise_draws=2, sample_chunk=3))
    assert float((res.maps.mean_probs - eager.maps.mean_probs).abs().max()) < PATHS["bf16"].tol
