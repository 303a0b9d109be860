"""bench/head_calls.py: the call plan covers every sample once, the chooser returns the candidate whose
calls are cheapest on a runner with a known cost model, the engine then honours the choice, and bad
sizes are one-line errors."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tunepp_deploy.bench.head_calls import (
    CANDIDATES,
    alternate,
    choose_rows_per_call,
    head_call_plan,
    markdown,
    time_head_calls,
)
from tunepp_deploy.export.metadata import ModelMeta

from tunepp_deploy.config import load_config
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.metrics.intervals import t_half_width
from tunepp_deploy.model.blocks.dropout import DropoutSite

REPO = Path(__file__).resolve().parents[2]
SITES = (DropoutSite("dec0", 8, 0.1, "channel", (2, 2, 2)),)


class CostRunner(Runner):
    """Split runner whose head sleeps ``per_call + per_row2 * rows^2`` seconds (a known optimum) and
    records each head call's rows (the spy)."""

    name = "cost"

    def __init__(self, meta: ModelMeta, per_call: float, per_row2: float) -> None:
        super().__init__(meta, torch.device("cpu"))
        self.per_call, self.per_row2 = per_call, per_row2
        self.head_rows: list[int] = []

    @property
    def splits(self) -> bool:
        return True

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,)

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = int(masks[0].shape[0])
        self.head_rows.append(rows)
        time.sleep(self.per_call + self.per_row2 * rows * rows)
        x = feats[0].repeat(rows // feats[0].shape[0], 1, 1, 1, 1)
        k = torch.arange(self.meta.num_classes, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return x * k * masks[0].mean(1).view(-1, 1, 1, 1, 1), torch.full_like(x, -3.0)

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x), masks)


@pytest.fixture(scope="module")
def meta() -> ModelMeta:
    return ModelMeta(load_config(REPO / "configs" / "phantom.yaml"), (8, 8, 8), SITES)


@pytest.mark.parametrize("rows", CANDIDATES)
def test_plan_covers_every_sample_once(rows: int) -> None:
    plan = head_call_plan(25, rows)
    assert [s for sub in plan for s in sub] == list(range(25))
    assert all(1 <= len(sub) <= rows for sub in plan) and len(plan) == -(-25 // rows)


def test_chooser_finds_the_known_optimum_and_the_engine_honours_it(meta: ModelMeta) -> None:
    # per_row2 * rows^2 dominates: MC-25 costs 25 * 0.0004 = 0.01 s at 1 row, 5 * 0.01 = 0.05 s at 5,
    # 0.25 s at 25 (plus 1e-4 s per call): 1 row is fastest by far
    quad = CostRunner(meta, per_call=1e-4, per_row2=4e-4)
    assert choose_rows_per_call(quad, samples=25, sizes=(1, 5, 25), repeats=2) == 1
    # a fixed cost per call dominates: one call of all rows is fastest
    fixed = CostRunner(meta, per_call=0.02, per_row2=0.0)
    best = choose_rows_per_call(fixed, samples=25, sizes=(1, 5, 25), repeats=2)
    assert best == 25
    fixed.head_rows.clear()
    vol = torch.rand(1, 8, 8, 8)
    masks = sample_masks(SITES, meta.window, 25, seed=0)
    for rows in (best, 5):
        fixed.head_rows.clear()
        res = mc_predict(vol, fixed, masks, MCSettings(samples=25, rows_per_call=rows, noise_draws=2))
        assert fixed.head_rows == [min(rows, 25 - i) for i in range(0, 25, rows)] * res.windows


def test_time_head_calls_sizes_and_errors(meta: ModelMeta) -> None:
    r = CostRunner(meta, per_call=0.0, per_row2=0.0)
    med = time_head_calls(r, samples=4, sizes=(1, 2, 8, 25), repeats=1, warmup=0)
    assert sorted(med) == [1, 2, 4] and all(v >= 0 for v in med.values())  # 8 and 25 are the 4-row plan
    for bad in (0, -1, 2.5):
        with pytest.raises(TuneppError) as e:
            time_head_calls(r, samples=4, sizes=(bad,), repeats=1)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
    with pytest.raises(TuneppError):
        time_head_calls(r, samples=0)
    with pytest.raises(TuneppError):
        alternate({"a": lambda: 0.0}, repeats=0)


def test_alternate_rotates_the_order() -> None:
    order: list[str] = []

    def rec(n: str):
        return lambda: order.append(n) or 0.0

    times = alternate({n: rec(n) for n in "abc"}, repeats=3, warmup=1)
    assert order[:3] == list("abc")  # warm-up
    assert order[3:] == list("abc") + list("bca") + list("cab")
    assert all(len(v) == 3 for v in times.values())


def test_markdown_names_threads_and_load() -> None:
    res = {"config": "configs/synapse.yaml", "window": [96, 96, 96], "samples": 25, "threads": 2, "cpu": "x",
           "torch": "2", "repeats": 3, "naive_passes_run": 5, "naive_scaled_to": 25,
           "default_rows_per_call_split": 2, "loadavg_start": [1.5, 1.25, 1.0],
           "results": {"torch/naive": {"median_s": 2.0, "mean_s": 2.0, "ci95_s": 0.1, "runs_s": [2.0] * 3,
                                       "speedup_vs_naive": 1.0},
                       "torch/rows5": {"median_s": 1.0, "mean_s": 1.0, "ci95_s": 0.1, "runs_s": [1.0] * 3,
                                       "speedup_vs_naive": 2.0}}}
    text = markdown([res])
    assert "2 threads" in text and "| torch/rows5 | 1.000 |" in text and "2.00x" in text
    assert "1.50/1.25/1.00 at start" in text and "not recorded at the end" in text


def test_markdown_gives_no_interval_for_one_round() -> None:
    """One alternated round has no spread to report: the table must say so, not print "± 0.000"."""
    one = {"median_s": 2.0, "mean_s": 2.0, "ci95_s": t_half_width([2.0]), "runs_s": [2.0], "speedup_vs_naive": 1.0}
    two = {"median_s": 1.0, "mean_s": 1.0, "ci95_s": t_half_width([0.9, 1.1]), "runs_s": [0.9, 1.1],
           "speedup_vs_naive": 2.0}
    res = {"config": "configs/synapse.yaml", "window": [96, 96, 96], "samples": 25, "threads": 2, "cpu": "x",
           "torch": "2", "repeats": 1, "naive_passes_run": 5, "naive_scaled_to": 25,
           "default_rows_per_call_split": 2, "results": {"torch/naive": one, "torch/rows5": two}}
    text = markdown([res])
    assert "| torch/naive | 2.000 | 2.000 (n = 1, no interval) |" in text and "± 0.000" not in text
    assert f"1.000 ± {12.706205 * 0.1414214 / 2 ** 0.5:.3f}" in text  # t_{0.975,1} sd / sqrt(2)


def test_run_end_to_end_on_a_tiny_config(tmp_path: Path) -> None:
    """``run`` on a tiny network: every runtime's rows have a ratio against the same runtime's naive loop
    (a pair against its own runtime), and the markdown renders."""
    import yaml
    from tunepp_deploy.bench.head_calls import run

    from tunepp_deploy.config.load import config_to_dict

    cfg = load_config(REPO / "configs" / "phantom.yaml")
    d = config_to_dict(cfg)
    d["data"]["crop_size"] = [32, 32, 32]
    d["model"].update(widths=[4, 8, 8, 8], full_res_channels=4, proj_tokens=8)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    threads = torch.get_num_threads()
    try:
        res = run(path, samples=3, sizes=(1, 3), repeats=1, threads=1, naive_passes=1)
    finally:
        torch.set_num_threads(threads)
    rows = res["results"]
    assert {"torch/naive", "ort/naive", "torch/rows1", "torch/rows3", "ort_pair/rows1", "ort_pair/rows3"} <= set(rows)
    assert all(r["speedup_vs_naive"] > 0 for r in rows.values())
    if "openvino/naive" in rows:  # the [openvino] extra is installed: its pair is scored against its own naive loop
        assert {"openvino_pair/rows1", "openvino_pair/rows3"} <= set(rows)
    text = markdown([res])
    assert "| ort_pair/rows3 |" in text and "32x32x32" in text
