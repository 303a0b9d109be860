"""``gpu.md`` and ``gpu.png`` of the GPU suite (:mod:`tunepp_deploy.bench.gpu`), from its JSON alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def mc_table(r: dict[str, Any]) -> list[str]:
    mc = r.get("mc", {})
    lines = ["| run | median s | CUDA events s | network | stitching | uncertainty | win/s | peak dev MB | calls | "
             "trunk | measured/floor |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for e in mc.get("entries", []):
        st = e["stages_s"]
        lines.append(f"| {e['key']} | {_f(e['latency_s']['median'])} | {_f(e['events_s'])} | {_f(st['network'])} | "
                     f"{_f(st['stitching'])} | {_f(st['uncertainty'])} | {_f(e['windows_per_s'], 1)} | "
                     f"{_f(e['peak_device_mb'], 0)} | {e['runner_calls']} | {e['trunk']} | "
                     f"{_f(e['measured_over_floor'], 1)} |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    """Every table of the report (the JSON has the rest)."""
    env, mc, kern = r["environment"], r.get("mc", {}), r.get("kernels", {})
    gpu = env.get("gpu", {})
    lines = [f"# GPU suite{' (DRY RUN on the CPU: no GPU figures)' if r['dry'] else ''}", "",
             f"{r['created']}; device {env['device']} {gpu.get('name', '')}; torch {env['torch']} (CUDA "
             f"{env['cuda']}); wall {r['wall_s']:.0f} s of a {r['settings']['budget_s']:.0f} s budget.", ""]
    if "grid" in mc:
        fl = mc["flops"]
        lines += [f"## MC inference: config {mc['config']} ({mc['params_m']:.1f} M parameters), model grid "
                  f"{'x'.join(map(str, mc['grid']))}, {mc['windows']} windows of {'x'.join(map(str, mc['window']))}, "
                  f"{mc['classes']} classes, sites {mc['sites']}; budget {mc['memory_gb']} GB",
                  "",
                  f"FLOPs per window: trunk {fl['trunk_gflops_per_window']:.1f} + head "
                  f"{fl['head_gflops_per_window']:.1f} GFLOP; matmul rates measured in this run: "
                  + ", ".join(f"{k} {v / 1e3:.1f} TFLOP/s" for k, v in mc["matmul_gflops_per_s"].items()), "",
                  *mc_table(r), ""]
        if mc.get("vs_published"):
            lines += ["### Against the published A100 figures (other hardware) and the goals", "",
                      "| path | S | median s | published s | published / measured | goal s | met |",
                      "|---|---:|---:|---:|---:|---:|---|"]
            for v in mc["vs_published"]:
                lines.append(f"| {v['path']} | {v['samples']} | {_f(v['median_s'])} | {v['published_s']} | "
                             f"{_f(v['published_over_measured'], 2)} | {v['goal_s']} | "
                             f"{'yes' if v['goal_met'] else 'no'} |")
            lines.append("")
        if mc.get("parity"):
            lines += [f"### Parity of the paths against {mc['parity_vs']} (same masks and noise)", "",
                      "| path | max abs diff probs | mean abs diff | argmax agreement | max abs diff maps |",
                      "|---|---:|---:|---:|---:|"]
            for p, d in mc["parity"].items():
                lines.append(f"| {p} | {d['max_abs_diff_probs']:.2e} | {d['mean_abs_diff_probs']:.2e} | "
                             f"{d['argmax_agreement']:.5f} | {d['max_abs_diff_maps']:.2e} |")
            lines.append("")
        jet = [e for e in mc.get("entries", []) if e["kind"] == "jetson"]
        for e in jet:
            pl = e["planned_gb"]
            lines += ["### Jetson-shaped budget", "",
                      f"MC-{e['samples']} with `memory_gb = {r['settings']['jetson_gb']}` on {e['path']}: "
                      f"{_f(e['latency_s']['median'])} s, chunk {e['sample_chunk']} samples x {e['sample_chunks']} "
                      f"chunks, trunk {e['trunk']}; planned {pl['total_gb']:.2f} GB (+ weights {pl['weights_gb']:.2f})"
                      f", measured peak {_f(e['measured_peak_gb'], 2)} GB.", ""]
        if "naive" in mc:
            n = mc["naive"]
            lines += [f"Naive loop (the seed's {n['samples']} passes, fp32): {n['engine_equivalent_s']:.3f} s without "
                      f"the CPU stages, {n['total_s']:.3f} s end to end.", ""]
        for e in mc.get("end_to_end", []):
            st = ", ".join(f"{k} {v:.3f}" for k, v in e["stages_s"].items())
            lines.append(f"End to end {e['path']} S={e['samples']}: {e['total_s']:.3f} s ({st}).")
        lines.append("")
    if r.get("tiny_parity"):
        lines += ["## Device vs CPU (tiny network, MC-3)", "", "| path | max abs diff probs | tol | ok |",
                  "|---|---:|---:|---|"]
        for p, d in r["tiny_parity"].items():
            if "skipped" in d:
                lines.append(f"| {p} | skipped: {d['skipped']} | | |")
            else:
                lines.append(f"| {p} | {d['max_abs_diff_probs']:.2e} | {d['tol']:.0e} | {'yes' if d['ok'] else 'NO'} |")
        lines.append("")
    if "timing" in kern:
        note = " — scipy stands in: dry run" if kern["stand_in"] else ""
        lines += [f"## Kernels (backends {', '.join(kern['backends'])}{note})",
                  "", "| size | kernel | implementation | median ms | speed-up vs CPU | / cupyx | agrees |",
                  "|---|---|---|---:|---:|---:|---|"]
        for x in kern["timing"]["rows"]:
            lines.append(f"| {x['size']} | {x['kernel']} | {x['impl']} | {x['seconds'] * 1e3:.2f} | "
                         f"{_f(x['speedup_vs_cpu'], 1)} | {_f(x['over_cupyx'], 2)} | {'yes' if x['ok'] else 'NO'} |")
        bad = [p for p in kern.get("parity", []) if not p["ok"]]
        lines += ["", f"Kernel parity: {len(kern.get('parity', [])) - len(bad)} / {len(kern.get('parity', []))} "
                  "agree" + (": " + "; ".join(f"{p['backend']} {p['case']} {p['kernel']}" for p in bad) if bad else ""),
                  ""]
    elif "skipped" in kern:
        lines += [f"Kernels skipped: {kern['skipped']}", ""]
    t = r.get("tests", {})
    if "tests" in t:
        failed = "; failed: " + ", ".join(t["failed"]) if t["failed"] else ""
        lines += [f"## pytest -m gpu: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} "
                  f"skipped ({t['seconds']:.0f} s){failed}", ""]
    elif t:
        lines += [f"pytest -m gpu: {t.get('skipped', 'did not report')}", ""]
    skipped = r.get("mc", {}).get("skipped", [])
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{x['what']} ({x['reason']})" for x in skipped), ""]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    """Left: MC latency per path (S = 1 and 25) with the A100 figures; right: kernel times per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    entries = [e for e in r.get("mc", {}).get("entries", []) if e["kind"] == "mc"]
    for n, color in ((max([e["samples"] for e in entries], default=25), "tab:blue"), (1, "tab:orange")):
        es = [e for e in entries if e["samples"] == n]
        a.barh([f"{e['path']} S={n}" for e in es], [e["latency_s"]["median"] for e in es], color=color)
    pub = r.get("mc", {}).get("published", {})
    for key, ls in (("mc25_s", "--"), ("single_s", ":")):
        if key in pub:
            a.axvline(pub[key], color="gray", ls=ls, label=f"A100 published {key.removesuffix('_s')}")
    a.set_xscale("log")
    a.set_xlabel("seconds (log)")
    a.set_title("MC engine latency per path")
    a.legend(fontsize=7)
    rows = r.get("kernels", {}).get("timing", {}).get("rows", [])
    labels = [f"{x['size']} {x['kernel']} {x['impl'].split(' (')[0]}" for x in rows]
    b.barh(labels, [x["seconds"] for x in rows],
           color=["tab:green" if "CPU" in x["impl"] else "tab:gray" if "cupyx" in x["impl"] else "tab:red"
                  for x in rows])
    b.set_xscale("log")
    b.tick_params(labelsize=5)
    b.set_xlabel("seconds (log)")
    b.set_title("kernels: ours on the device (red), cupyx (gray), CPU (green)")
    fig.suptitle("GPU suite" + (" — DRY RUN on the CPU" if r["dry"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_text(r: dict[str, Any]) -> str:
    """What the command prints last (the device tool returns the end of the output)."""
    lines = ["", "== GPU suite summary" + (" (dry run, CPU)" if r["dry"] else "") + " =="]
    lines += mc_table(r)
    for v in r.get("mc", {}).get("vs_published", []):
        lines.append(f"{v['path']} S={v['samples']}: {v['median_s']:.3f} s; A100 published {v['published_s']} s; "
                     f"goal < {v['goal_s']} s {'met' if v['goal_met'] else 'missed'}")
    for e in r.get("mc", {}).get("entries", []):
        if e["kind"] == "jetson":
            lines.append(f"jetson budget: planned {e['planned_gb']['total_gb']:.2f} GB, measured peak "
                         f"{_f(e['measured_peak_gb'], 2)} GB")
    kern = r.get("kernels", {})
    if "parity" in kern:
        lines.append(f"kernel parity: {sum(p['ok'] for p in kern['parity'])}/{len(kern['parity'])} agree")
    tp = r.get("tiny_parity", {})
    if tp:
        lines.append("device vs CPU: " + ", ".join(f"{k} {'ok' if d.get('ok') else d.get('skipped', 'FAIL')}"
                                                   for k, d in tp.items()))
    t = r.get("tests", {})
    if "tests" in t:
        lines.append(f"pytest -m gpu: {t['passed']} passed, {t['failures'] + t['errors']} failed, "
                     f"{t['skipped']} skipped")
    lines.append(f"wall {r['wall_s']:.0f} s")
    return "\n".join(lines)


__all__ = ["markdown", "plot", "summary_text"]
