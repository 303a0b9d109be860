"""Issue 14 item 7, "a benchmark that tells the truth": machine facts from /proc/cpuinfo, page faults per
call, the conv floor's FLOP count, a warm-up per configuration, and threads in every headline ratio.

Oracles: a hand-written cpuinfo fixture and the raw /proc/cpuinfo lines (read here with a regex, not
the parser), the kernel's fault counter against the page count of a fresh allocation,
``torch.utils.flop_counter`` against the conv floor's shape formula, and a spy on the warm-up.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tunepp_deploy.bench import mc_bench
from tunepp_deploy.bench.conv_floor import conv_layers, measure_conv_floor
from tunepp_deploy.bench.floor import WindowFlops
from tunepp_deploy.bench.machine import FLAGS_OF_INTEREST, parse_cpuinfo, read_cpu_facts
from tunepp_deploy.bench.probes import UNSETTLED_SPREAD, FaultCounter, minor_faults, spread
from tunepp_deploy.bench.report import markdown, ratio_row

from tunepp_deploy.config import load_config
from tunepp_deploy.model.network import build_network

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "cpuinfo_xeon_ht.txt"
TINY = {"model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
        "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32]}


# --- machine facts -----------------------------------------------------------------------------------

def test_cpuinfo_fixture_parsed() -> None:
    f = parse_cpuinfo(FIXTURE.read_text())
    assert f.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert f.logical_cpus == 4 and f.physical_cores == 2  # two hyper-threads per core
    assert f.flags == ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                       "amx_tile", "amx_int8")
    assert "AMD" not in f.summary() and "2 cores / 4 logical CPUs" in f.summary()


def test_cpuinfo_empty_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_cpuinfo("\n\n")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo on this OS")
def test_real_cpuinfo_matches_raw_lines() -> None:
    text = Path("/proc/cpuinfo").read_text()
    facts = read_cpu_facts()
    names = re.findall(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    if names:
        assert facts.model_name == names[0].strip()
    assert facts.logical_cpus == len(re.findall(r"^processor\s*:", text, flags=re.M))
    raw_flags = set(re.findall(r"^flags\s*:\s*(.+)$", text, flags=re.M)[0].split()) if "flags" in text else set()
    assert set(facts.flags) == raw_flags & set(FLAGS_OF_INTEREST)


# --- page faults -------------------------------------------------------------------------------------

def test_fault_counter_non_negative_and_sees_a_fresh_allocation() -> None:
    with FaultCounter() as idle:
        pass
    assert idle.delta >= 0 and minor_faults() >= 0
    nbytes = 64 * 2**20  # a fresh anonymous mapping (what glibc does above its mmap threshold)
    mm = mmap.mmap(-1, nbytes)
    try:
        with FaultCounter() as big:
            for i in range(0, nbytes, 4096):  # touch every 4 KiB page once
                mm[i] = 1
        assert sum(mm[i] for i in range(0, nbytes, 4096 * 97)) == len(range(0, nbytes, 4096 * 97))
    finally:
        mm.close()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    page = 2 * 2**20 if thp.exists() and "[always]" in thp.read_text() else 4096
    assert big.delta >= 0.5 * nbytes / page, big.delta


# --- the conv floor ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mod, shape", [
    (nn.Conv3d(4, 6, 3, padding=1, bias=False), (1, 4, 8, 10, 6)),
    (nn.Conv3d(6, 6, 3, padding=1, groups=6, bias=False), (1, 6, 8, 8, 8)),
    (nn.Conv3d(4, 8, 2, stride=2, bias=False), (1, 4, 8, 8, 8)),
    (nn.ConvTranspose3d(8, 4, 2, stride=2, bias=False), (1, 8, 4, 4, 4)),
])
def test_layer_flops_match_flop_counter(mod: nn.Module, shape: tuple[int, ...]) -> None:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = mod

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x)

    (layer,) = conv_layers(Wrap(), shape[2:], shape[1])  # type: ignore[arg-type]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        mod(torch.zeros(shape))
    assert layer.flops == fc.get_total_flops()


def test_network_conv_flops_equal_flop_counters_conv_ops() -> None:
    cfg = load_config(REPO / "configs" / "phantom.yaml", TINY)
    net = build_network(cfg).eval()
    layers = conv_layers(net, (32, 32, 32), 1)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(1, 1, 32, 32, 32))
    counted = sum(v for op, v in fc.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert counted > 0 and sum(layer.flops for layer in layers) == counted
    floor = measure_conv_floor(net, (32, 32, 32), 1, torch.device("cpu"), repeats=1)
    assert floor.conv_gflops_per_window == pytest.approx(counted / 1e9)
    assert floor.layers == len(layers) and floor.conv_seconds_per_window > 0 and floor.rate_gflops_per_s > 0


def test_both_floors_divide_the_same_flop_count() -> None:
    """The conv floor and the matmul floor of an entry differ only in the rate, not in what is counted."""
    fl = WindowFlops(trunk_gflops=2.0, head_gflops=0.5)
    m = {"latency_s": {"median": 4.0}, "trunk_windows": 3, "head_rows": 30, "windows": 3,
         "stages_s": {"network": 3.0}}
    e = mc_bench._entry("mc", "torch", "fp32", 10, "r", m, fl, peak=100.0, conv_rate=20.0)
    gflops = 3 * 2.0 + 30 * 0.5
    assert e["gflops"] == gflops
    assert e["floor_s"] * 100.0 == pytest.approx(gflops) and e["conv_floor_s"] * 20.0 == pytest.approx(gflops)
    assert e["measured_over_conv_floor"] == pytest.approx(4.0 / (gflops / 20.0))


# --- warm-up per configuration, threads in the headlines ----------------------------------------------

@pytest.fixture(scope="module")
def spied_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Any]]:
    import yaml

    from tunepp_deploy.config.load import config_to_dict

    tmp = tmp_path_factory.mktemp("truth")
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(load_config(REPO / "configs" / "phantom.yaml", TINY))))
    warmed: list[Any] = []  # the functions themselves (kept alive, so their ids stay distinct)
    real = mc_bench.warm_up

    def spy(fn: Any, runs: int, min_seconds: float = 0.0) -> list[float]:
        warmed.append(fn)
        return real(fn, runs, min_seconds)

    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(mc_bench, "warm_up", spy)
    try:
        s = mc_bench.BenchSettings(out=tmp / "out", config=cfg_path, volume=(32, 32, 32), samples=(1, 2),
                                   backends=("torch",), precisions=("fp32",), repeats=1, warmup=1, warmup_s=0.0,
                                   threads=1, device="cpu", alternate=2, conv_floor=True)
        result = mc_bench.run_mc_bench(s, log=lambda _m: None)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return result, warmed


def test_warm_up_once_per_configuration(spied_run: tuple[dict[str, Any], list[Any]]) -> None:
    result, warmed = spied_run
    keys = [e["key"] for e in result["entries"]]
    assert keys == ["single/torch/fp32/S1", "mc/torch/fp32/S1", "mc/torch/fp32/S2", "reuse_off/torch/fp32/S2",
                    "naive/torch/fp32/S2"]
    # one per timed configuration, plus one per side of the alternated naive / engine pair
    alt = [r for r in result["ratios"] if r["name"].startswith("alt_")]
    assert len(alt) == 1 and len(alt[0]["round_ratios"]) == 2
    assert len(warmed) == len(keys) + 2 and len({id(f) for f in warmed}) == len(warmed)


def test_faults_and_machine_recorded(spied_run: tuple[dict[str, Any], list[Any]]) -> None:
    result, _ = spied_run
    assert result["machine"]["cpu"]["model_name"] == read_cpu_facts().model_name
    assert result["machine"]["threads_used"] == 1 and result["threads"] == 1
    assert result["conv_floor"]["rate_gflops_per_s"] > 0
    for e in result["entries"]:
        assert e["minor_faults_per_call"] >= 0 and e["minor_faults_per_run"] >= 0
        assert e["measured_over_conv_floor"] > 0


def test_threads_in_every_headline(spied_run: tuple[dict[str, Any], list[Any]]) -> None:
    result, _ = spied_run
    md = markdown(result)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "x at " in ln]
    assert len(rows) == len(result["ratios"]) > 0
    for r in result["ratios"]:
        assert r["threads"] == 1 and "(1 thread)" in r["meaning"]
        assert "x at 1 thread |" in ratio_row(r)
    assert "**Threads: 1**" in md and os.cpu_count() is not None


class _Run:
    """What ``warm_up`` calls: a configuration whose runs take the given seconds (sleeps)."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds, self.calls = list(seconds), 0

    def __call__(self) -> None:
        import time

        time.sleep(self.seconds[min(self.calls, len(self.seconds) - 1)])
        self.calls += 1


def test_warm_up_runs_until_min_seconds_and_caps_runs() -> None:
    fn = _Run([0.05])
    times = mc_bench.warm_up(fn, 1, min_seconds=0.22)  # type: ignore[arg-type]
    assert fn.calls == len(times) >= 5 and sum(times) >= 0.2  # 0.05 s runs until 0.22 s have passed
    assert len(mc_bench.warm_up(_Run([0.0]), 2)) == 2  # no minimum time: exactly the run count
    fast = _Run([0.0])
    mc_bench.warm_up(fast, 1, min_seconds=60.0)  # type: ignore[arg-type]
    assert fast.calls == mc_bench.MAX_WARMUP_RUNS


def test_unsettled_runs_are_flagged_and_not_judged() -> None:
    assert spread([1.0, 1.2, 1.4])["settled"] and not spread([0.78, 0.78, 1.45, 1.98, 2.0])["settled"]
    assert not spread([1.0, UNSETTLED_SPREAD * 1.0 + 1e-6])["settled"]

    def entry(key: str, runs: list[float]) -> dict[str, Any]:
        return {"key": key, "latency_s": spread(runs), "latency_runs_s": runs}

    ok = entry("single/ort/fp32/S1", [1.06, 1.08, 1.12])
    bad = entry("single/torch/fp32/S1", [2.0, 1.98, 1.45, 0.78, 0.78])  # the v7 artefact: median 1.45 s
    r = mc_bench._ratio("ort_vs_torch_single", bad, ok, "torch / ORT single pass", threads=2)
    assert r is not None and r["value"] > mc_bench.TARGETS["ort_vs_torch_single"]  # would read "met" ...
    assert r["met"] is None and r["unsettled"] == ["single/torch/fp32/S1"]  # ... but is not judged
    assert "not judged: unsettled single/torch/fp32/S1" in ratio_row(r)
    settled = mc_bench._ratio("ort_vs_torch_single", ok, ok, "same", threads=2)
    assert settled is not None and settled["met"] is False and "unsettled" not in settled
