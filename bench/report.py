"""Render a ``tunepp bench`` result: ``bench.json``, ``bench.md``, a rich table and two PNG plots.

Same conventions as the kernel benchmark (``kernels.json`` / ``kernels.md`` / ``kernels.png`` in
one folder): the JSON holds every figure, the Markdown is what goes into a README, the plots are
``bench_latency.png`` (median latency vs samples, one line per backend x precision, with min-max
bars and the single pass and naive loop as markers) and ``bench_stages.png`` (stacked stage medians
of every configuration).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table
from tunepp_deploy.bench.probes import UNSETTLED_SPREAD

MD_NAME, JSON_NAME = "bench.md", "bench.json"
LATENCY_PNG, STAGES_PNG = "bench_latency.png", "bench_stages.png"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for e in result["entries"]:
        st = e["stages_s"]
        lat = e["latency_s"]
        rows.append([
            e["kind"], e["backend"], e["precision"], str(e["samples"]), str(e.get("sample_chunk", "")),
            str(e.get("trunk", "")), _fmt(lat["median"]),
            f"{_fmt(lat['min'])}-{_fmt(lat['max'])}", *(_fmt(st[s]) for s in result["stages"]),
            f"{e['windows_per_s']:.2f}", f"{e['peak_rss_mb']:.0f}",
            _fmt(e["peak_device_mb"], 0), _fmt(e["measured_over_floor"], 1),
            _fmt(e.get("measured_over_conv_floor"), 1), _fmt(e.get("minor_faults_per_call"), 0),
            _fmt(e.get("stitch_uncertainty_share"), 3),
        ])
    return rows


def _header(result: dict[str, Any]) -> list[str]:
    return ["kind", "backend", "prec", "S", "chunk", "trunk", "median s", "min-max s", *result["stages"], "win/s",
            "peak RSS MB",
            "peak dev MB", "measured/floor", "measured/conv floor", "faults/call", "stitch+unc share"]


def rich_table(result: dict[str, Any]) -> Table:
    """The terminal table: the columns that fit 100 characters (bench.md has every stage)."""
    st = result["settings"]
    table = Table(title=f"tunepp bench: {st['config_name']} {'x'.join(map(str, st['model_grid']))}, "
                        f"{st['windows']} windows, {result['machine']['device']}", header_style="bold")
    for i, h in enumerate(["kind", "backend", "prec", "S", "median s", "min-max s", "network s", "other s",
                           "win/s", "RSS MB", "dev MB", "x floor"]):
        table.add_column(h, justify="left" if i < 3 else "right")
    for e in result["entries"]:
        lat, net = e["latency_s"], e["stages_s"]["network"]
        table.add_row(e["kind"], e["backend"], e["precision"], str(e["samples"]), _fmt(lat["median"]),
                      f"{_fmt(lat['min'], 2)}-{_fmt(lat['max'], 2)}", _fmt(net),
                      _fmt(sum(e["stages_s"].values()) - net), f"{e['windows_per_s']:.2f}",
                      f"{e['peak_rss_mb']:.0f}", _fmt(e["peak_device_mb"], 0), _fmt(e["measured_over_floor"], 1))
    return table


def markdown(result: dict[str, Any]) -> str:
    """``bench.md``: settings, machine and load, the table, ratios, floor and the published row."""
    m, st, fl = result["machine"], result["settings"], result["flops"]
    peaks = ", ".join(f"{p} {v['value']:.1f} GFLOP/s" for p, v in result["peak_gflops_per_s"].items())
    threads = result.get("threads", m.get("torch_threads"))
    conv = result.get("conv_floor")
    conv_line = (f"Second floor: the network's own {conv['distinct_shapes']} distinct conv shapes ({conv['layers']} "
                 f"convs) timed with torch conv3d at batch 1: {conv['conv_seconds_per_window']:.3f} s per window for "
                 f"{conv['conv_gflops_per_window']:.3f} GFLOPs = {conv['rate_gflops_per_s']:.1f} GFLOP/s; "
                 "measured/conv floor = median latency / (counted FLOPs / that rate)." if conv else
                 "Second floor: not measured (--no-conv-floor).")
    lines = [
        "# MC inference benchmark",
        "",
        f"Machine (read from /proc/cpuinfo): {m.get('cpu_summary', m.get('cpu_model', m['processor']))}, "
        f"{m['cpu_count']} CPUs, {m['memory_gb']:.0f} GB"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; device `{m['device']}`; torch {m['torch']} "
        f"({m['torch_threads']} threads), onnxruntime {m['onnxruntime']}"
        + (f", OpenVINO {m['openvino']}" if m.get("openvino") else "")
        + (f", TensorRT {m['tensorrt']}" if m.get("tensorrt") else "") + ".",
        f"Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{'/'.join(f'{x:.2f}' for x in m['loadavg_end'])} — the machine is shared, so timings are noisy.",
        "",
        f"Workload: config `{st['config_name']}` ({st['model_kind']} weights), raw scan "
        f"{'x'.join(map(str, st['scan_shape']))} at {'x'.join(f'{x:.3g}' for x in st['scan_spacing_mm'])} mm -> "
        f"model grid {'x'.join(map(str, st['model_grid']))} at {'x'.join(f'{x:g}' for x in st['model_spacing_mm'])}"
        f" mm; window {'x'.join(map(str, st['window']))}, overlap {st['overlap']}, {st['windows']} windows; "
        f"dropout sites {st['dropout_sites']}; median of {st['repeats']} runs after {st['warmup']} warm-up"
        + (f" (and at least {st['warmup_s']:g} s of warm-up)" if st.get("warmup_s") else "") + ".",
        f"FLOPs per window: trunk {fl['trunk_gflops_per_window']:.3f} + head {fl['head_gflops_per_window']:.3f} "
        f"GFLOPs (trunk share {fl['trunk_share']:.0%}); measured peak: {peaks} (same run).",
        conv_line,
        f"**Threads: {threads}** for every figure below (torch and the ONNX runtimes). Every configuration has "
        "its own untimed warm-up; every ratio divides two medians of this one process. faults/call = minor page "
        "faults inside the runner calls / calls (last timed run).",
        "",
        "Kinds: `single` = deterministic single pass (S=1, all-ones masks); `mc` = the TUNE++ predictor's streamed "
        "engine (`mc_predict`: samples batched per runner call and streamed through the stitched volume in chunks "
        "of `chunk`; `trunk` once per window batch, `cached` across chunks or `recomputed` per chunk); `reuse_off` "
        "= same batched calls with the trunk run for every sample; `naive` = the seed's loop of S eager "
        "`model.forward` passes (same logit noise, all S stitched samples kept, reference maps). Stages in seconds "
        "(medians); measured/floor = median latency / (FLOPs counted from the trunk windows and head rows run / "
        "measured peak).",
        "",
        "| " + " | ".join(_header(result)) + " |",
        "|" + "---|" * 3 + "---:|" * 2 + "---|" + "---:|" * (len(_header(result)) - 6),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(result)]
    unsettled = [e for e in result["entries"] if not e["latency_s"].get("settled", True)]
    if unsettled:
        lines += ["", f"**Unsettled** (slowest timed run > {UNSETTLED_SPREAD:g}x the fastest: no steady state; a ratio "
                      "using one is not judged against its target): " + "; ".join(
                          f"`{e['key']}` runs {', '.join(f'{x:.3f}' for x in e['latency_runs_s'])} s"
                          for e in unsettled)]
    lines += ["", "## Ratios (numerator / denominator medians, both from this run; latency unless a stage is named)",
              "",
              "| ratio | value | threads | numerator | denominator | target |", "|---|---:|---:|---|---|---|"]
    for r in result["ratios"]:
        lines.append(ratio_row(r))
    ref = st["reference_samples"]
    ideal = fl.get(f"ideal_trunk_reuse_speedup_S{ref}")
    if ideal is not None:
        lines += ["", f"Trunk reuse can save at most {ideal:.2f}x at S={ref} by FLOPs (trunk share "
                      f"{fl['trunk_share']:.0%}: S*(trunk+head) / (trunk + S*head))."]
    pub = result["published"]
    lines += ["", "## Published figures (other hardware)", "",
              "| source | single pass s | MC-25 s | MC-25 / single |", "|---|---:|---:|---:|",
              f"| {pub['source']} — **A100, not this machine** | {pub['single_s']} | {pub['mc25_s']} | "
              f"{pub['mc25_s'] / pub['single_s']:.2f} |"]
    by = {e["key"]: e for e in result["entries"]}
    for e in result["entries"]:
        if e["kind"] == "single":
            mc = by.get(f"mc/{e['backend']}/{e['precision']}/S25")
            if mc:
                a, b = e["latency_s"]["median"], mc["latency_s"]["median"]
                lines.append(f"| this run: {e['backend']} {e['precision']} on {m['device']} ({st['config_name']}, "
                             f"{'x'.join(map(str, st['model_grid']))}) | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    if result["checks"]:
        lines += ["", "Checks: " + ", ".join(f"{k} = {v:.2e}" for k, v in result["checks"].items())]
    if result["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}"
                                                   for s in result["skipped"])]
    return "\n".join(lines) + "\n"


def target_word(r: dict[str, Any]) -> str:
    """``met``, ``missed``, or ``not judged`` when a side's timed runs never settled (bench/probes.py)."""
    if r.get("met") is None:
        return f"not judged: unsettled {', '.join(r.get('unsettled', []))}"
    return "met" if r["met"] else "missed"


def ratio_row(r: dict[str, Any]) -> str:
    """One headline ratio as a Markdown row; the thread count is in the value cell's neighbour and the text,
    because a 2-thread "1.85x" once travelled without it."""
    target = f">= {r['target']} ({target_word(r)})" if "target" in r else ""
    of = "" if r["of"] == "latency" else f" ({r['of']})"
    t = r.get("threads")
    threads = f"{t} thread{'s' if t != 1 else ''}" if t else "unknown"
    rounds = f" rounds {r['round_ratios']}" if r.get("round_ratios") else ""
    return (f"| {r['name']} | {r['value']:.2f}x at {threads} | {t or '?'} | `{r['numerator']}`{of} "
            f"{r['numerator_s']:.3f} s | `{r['denominator']}`{of} {r['denominator_s']:.3f} s{rounds} | {target} |")


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Median latency vs samples per backend x precision (min-max bars), single/naive as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series: dict[str, list[dict[str, Any]]] = {}
    for e in result["entries"]:
        if e["kind"] == "mc":
            series.setdefault(f"{e['backend']} {e['precision']}", []).append(e)
    for name, es in series.items():
        es = sorted(es, key=lambda e: e["samples"])
        xs = [e["samples"] for e in es]
        med = [e["latency_s"]["median"] for e in es]
        err = [[m - e["latency_s"]["min"] for m, e in zip(med, es, strict=True)],
               [e["latency_s"]["max"] - m for m, e in zip(med, es, strict=True)]]
        line = ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=f"{name} (engine)")
        single = next((e for e in result["entries"] if e["kind"] == "single" and
                       f"{e['backend']} {e['precision']}" == name), None)
        if single:
            ax.scatter([1], [single["latency_s"]["median"]], marker="s", color=line[0].get_color(), zorder=3)
    for e in result["entries"]:
        if e["kind"] in ("naive", "reuse_off"):
            ax.scatter([e["samples"]], [e["latency_s"]["median"]], marker="x" if e["kind"] == "naive" else "^",
                       s=60, label=f"{e['kind']} {e['backend']} {e['precision']}", zorder=3)
    ax.set_xlabel("MC samples S")
    ax.set_ylabel("whole-volume latency, s (median)")
    st = result["settings"]
    ax.set_title(f"{st['config_name']} {'x'.join(map(str, st['model_grid']))} on {result['machine']['device']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stages(result: dict[str, Any], path: Path) -> None:
    """Stacked horizontal bars: median seconds per stage for every configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    es = result["entries"]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(es) + 1.5))
    labels = [f"{e['kind']} {e['backend']} {e['precision']} S={e['samples']}" for e in es]
    left = [0.0] * len(es)
    for stage in result["stages"]:
        vals = [e["stages_s"][stage] for e in es]
        ax.barh(labels, vals, left=left, label=stage)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median per stage)")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, Markdown and both plots into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "md": out / MD_NAME, "latency_png": out / LATENCY_PNG,
             "stages_png": out / STAGES_PNG}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(markdown(result))
    plot_latency(result, paths["latency_png"])
    plot_stages(result, paths["stages_png"])
    return paths


__all__ = ["markdown", "plot_latency", "plot_stages", "ratio_row", "rich_table", "write_outputs"]
