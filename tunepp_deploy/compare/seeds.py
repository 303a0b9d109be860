"""``tunepp compare --seeds``: one comparison per seed, then mean +- 95 % t-interval over the seeds.

Why seeds and not more test cases: one comparison is one phantom draw, one training run per model and
one set of MC masks, so its table mixes the method's effect with run-to-run noise of the same size
(issue 13). Seed ``s`` varies all of them: the phantoms are drawn with data seed ``s``
(:func:`~tunepp_deploy.data.phantom.write_phantom_dataset`), and ``train.seed = infer.seed = s`` set
the split, the TUNE++ / SegWithU / variational training and the sampled masks and noise.

Layout under OUT: ``seed_<s>/`` holds that seed's phantoms (``data/``), its config (``config.yaml``,
the given config with the two seeds set) and a complete ``tunepp compare`` output. A seed whose
``compare.json`` exists is skipped, so an interrupted run resumes and several processes can each run
some seeds into the same OUT (``--seeds 0`` and ``--seeds 1`` in parallel, then ``--seeds 0,1,2``);
a seed folder made with another config is refused instead of being mixed in. The summary
(``compare_seeds.json`` / ``compare_seeds.md``) has, per method and metric, the mean and the 95 %
t-interval half-width over seeds, and per seed the paired differences against ``tunepp_mc`` for
AUROC and U-ECE fg (paired: same phantoms, split and test cases within a seed, so the seed-to-seed spread
cancels) with their own interval, and the variational posterior's widths per seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.metrics.intervals import mean_ci95

if TYPE_CHECKING:
    from tunepp_deploy.compare.run import CompareSettings

#: (key in a compare.json row, column header) of the summary table.
METRICS = [("dice", "Dice"), ("iou", "IoU"), ("betti_error", "Betti err"),
           ("betti_error_small_removed", "Betti err, <10 vox removed"), ("ece", "ECE"), ("ece_fg", "ECE fg"),
           ("u_ece_fg", "U-ECE fg"), ("auroc", "AUROC"), ("aurc", "AURC"), ("auroc_msp", "AUROC max-softmax"),
           ("triage_at_25", "triage@25%"), ("latency_torch_s", "torch s/vol"), ("latency_ort_s", "ORT s/vol"),
           ("train_seconds", "train s")]
#: Metrics whose per-seed difference against :data:`BASELINE` is reported (the error ranking and the
#: uncertainty map's own calibration: what the fusion and the other methods claim to improve).
PAIRED = ("auroc", "u_ece_fg")
BASELINE = "tunepp_mc"


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed_{seed}"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; empty, non-integer, negative or repeated seeds are one line."""
    try:
        seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise TuneppError(f"--seeds {text!r}: expected comma-separated integers like 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise TuneppError(f"--seeds {text!r}: expected distinct non-negative integers like 0,1,2")
    return seeds


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95 % t-interval half-width of the finite ``values`` (``ci`` None below 2 values,
    ``mean`` None when there are none: a metric a row does not have, e.g. ORT latency of saliency)."""
    mean, half, n = mean_ci95(values)
    return {"mean": mean if n else None, "ci": half, "n": n}


def _setup(res: dict[str, Any]) -> dict[str, Any]:
    """What must be the same in every seed's compare.json for their rows to be averaged."""
    t = res.get("training", {})
    return {"config": res.get("config"), "samples": res.get("samples"), "train_cases": res.get("train_cases"),
            "test cases": len(res.get("test_cases", [])), "window": res.get("window"),
            "overlap": res.get("overlap"), "threads": res.get("threads"), "methods": sorted(res.get("methods", {})),
            "TUNE++ epochs": t.get("tunepp", {}).get("epochs"), "head iters": t.get("head", {}).get("iters_max"),
            "vi iters": t.get("vi", {}).get("iters")}


def load_seed_results(out: Path, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Every seed's compare.json; a missing or unreadable file, or one run with other settings than the
    first seed's, is one line naming the file."""
    results: dict[int, dict[str, Any]] = {}
    first: tuple[int, dict[str, Any]] | None = None
    for s in seeds:
        path = seed_dir(out, s) / "compare.json"
        if not path.is_file():
            raise DataError(f"{path}: no compare.json for seed {s} (run `tunepp compare --seeds {s}` into {out})")
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable compare.json ({type(e).__name__})") from None
        if not isinstance(res, dict) or not isinstance(res.get("methods"), dict) or BASELINE not in res["methods"]:
            raise DataError(f"{path}: not a tunepp compare.json (no '{BASELINE}' row)")
        setup = _setup(res)
        if first is None:
            first = (s, setup)
        else:
            for k, v in setup.items():
                if v != first[1][k]:
                    raise DataError(f"{path}: {k} = {v}, seed {first[0]} has {first[1][k]} "
                                    "(the seeds were run with different settings; rerun into another --out)")
        results[s] = res
    return results


def vi_sigma(path: Path) -> dict[str, float] | None:
    """The variational posterior's sigma over all its weights (median, 5 / 95 %), None if the file is gone."""
    if not path.is_file():
        return None
    from tunepp_deploy.methods.variational.posterior import sigma_summary
    from tunepp_deploy.methods.variational.train import load_variational

    every = sigma_summary(load_variational(path)[0])[-1]
    return {"median": every.median, "p05": every.p05, "p95": every.p95, "mean": every.mean}


def summarise_seeds(results: dict[int, dict[str, Any]], sigmas: dict[int, dict[str, float] | None] | None = None
                    ) -> dict[str, Any]:
    """Mean +- CI per method and metric, paired differences against :data:`BASELINE`, VI widths."""
    seeds = sorted(results)
    names = list(results[seeds[0]]["methods"])
    methods: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for name in names:
        rows = [results[s]["methods"][name] for s in seeds]
        methods[name] = {k: {**mean_ci([r.get(k) for r in rows]), "values": [r.get(k) for r in rows]}
                         for k, _ in METRICS}
        if name == BASELINE:
            continue
        base = [results[s]["methods"][BASELINE] for s in seeds]
        paired[name] = {}
        for k in PAIRED:
            diffs = [None if r.get(k) is None or b.get(k) is None else r[k] - b[k]
                     for r, b in zip(rows, base, strict=True)]
            paired[name][k] = {**mean_ci(diffs), "values": diffs}
    first = results[seeds[0]]
    return {"seeds": seeds, "setup": _setup(first), "test_cases": {s: results[s]["test_cases"] for s in seeds},
            "training": {s: results[s].get("training") for s in seeds}, "notes": first.get("notes", {}),
            "methods": methods, "paired_vs": BASELINE, "paired": paired,
            "vi_sigma": {s: (sigmas or {}).get(s) for s in seeds}}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"


def _cell(m: dict[str, Any]) -> str:
    if m["mean"] is None:
        return "-"
    return _fmt(m["mean"]) + ("" if m["ci"] is None else f" ± {_fmt(m['ci'])}")


def markdown(summary: dict[str, Any]) -> str:
    seeds, setup = summary["seeds"], summary["setup"]
    head = [h for _, h in METRICS]
    lines = [f"# tunepp compare over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Mean ± half-width of the 95 % t-interval over seeds (n = seeds; each seed's value is the mean over "
             "its test cases).", "",
             "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, row in summary["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[k]) for k, _ in METRICS) + " |")
    base = summary["paired_vs"]
    lines += ["", f"Paired differences against `{base}` (within a seed: same phantoms, split and test "
              "cases; saliency rows also the same backbone and masks), "
              "mean ± 95 % t-interval, then per seed:", "",
              "| method | " + " | ".join(f"Δ {k}" for k in PAIRED) + " | "
              + " | ".join(f"Δ {k} per seed" for k in PAIRED) + " |", "|---|" + "---|" * (2 * len(PAIRED))]
    for name, row in summary["paired"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[k]) for k in PAIRED) + " | "
                     + " | ".join(", ".join(_fmt(v) for v in row[k]["values"]) for k in PAIRED) + " |")
    sig = summary["vi_sigma"]
    if any(v is not None for v in sig.values()):
        lines += ["", "Variational posterior sigma over all weights, per seed (median [5 %, 95 %]): "
                  + "; ".join(f"seed {s}: " + ("-" if v is None else
                                               f"{_fmt(v['median'])} [{_fmt(v['p05'])}, {_fmt(v['p95'])}]")
                              for s, v in sig.items()) + "."]
    lines += ["", "Setup (equal in every seed): " + ", ".join(f"{k} {v}" for k, v in setup.items()) + ".", "",
              "Uncertainty maps:", ""] + [f"- `{n}`: {t}" for n, t in summary["notes"].items()] + [""]
    return "\n".join(lines)


def write_seeds_report(summary: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "compare_seeds.json", out / "compare_seeds.md"
    text = json.dumps(summary, indent=2)
    write_atomic(j, lambda t: t.write_text(text))
    body = markdown(summary)
    write_atomic(md, lambda t: t.write_text(body))
    return [j, md]


def summarise_dir(out: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """:func:`summarise_seeds` of the seed folders under ``out`` (with each seed's VI widths)."""
    results = load_seed_results(out, seeds)
    sigmas = {s: vi_sigma(Path(r["models"]["vi"])) if r.get("models", {}).get("vi") else None
              for s, r in results.items()}
    return summarise_seeds(results, sigmas)


def seed_config(config: Path, seed: int) -> dict[str, Any]:
    """The config of seed ``s`` as a plain dict: the given one with ``train.seed = infer.seed = s``."""
    return load_config(config, {"train.seed": seed, "infer.seed": seed}).model_dump(mode="json")


def run_seeds(config: Path, out: Path, seeds: Sequence[int], phantoms: int, shape: tuple[int, int, int],
              settings: CompareSettings, console: Console) -> dict[str, Any]:
    """Run the comparison once per seed (skipping finished seeds, module docstring), then summarise."""
    import torch

    from tunepp_deploy.compare.report import write_report
    from tunepp_deploy.compare.run import run_compare
    from tunepp_deploy.config.load import config_from_dict
    from tunepp_deploy.data.phantom import write_phantom_dataset

    wanted = {s: seed_config(config, s) for s in seeds}  # a bad config fails before any seed runs
    # Something a comparison runs leaves torch's intra-op thread count changed (measured: 1 -> 2 after
    # one seed in the same process), so each seed starts from the count the process started with and
    # every seed's table is measured, and recorded, with the same threads.
    threads = torch.get_num_threads()
    for s in seeds:
        d = seed_dir(out, s)
        cfg_file = d / "config.yaml"
        if cfg_file.is_file() and yaml.safe_load(cfg_file.read_text()) != wanted[s]:
            raise TuneppError(f"{cfg_file}: seed {s} was run with another config than {config} "
                              "(use another --out, or the config it was run with)")
        if (d / "compare.json").is_file():
            console.print(f"seed {s}: {d / 'compare.json'} exists, skipped")
            continue
        data = d / "data"
        if not (data / "dataset.json").is_file():
            console.print(f"seed {s}: writing {phantoms} phantoms (data seed {s}) -> {data}")
            write_phantom_dataset(data, phantoms, seed=s, shape=shape)
        cfg_text = yaml.safe_dump(wanted[s])
        write_atomic(cfg_file, lambda t, text=cfg_text: t.write_text(text))
        console.print(f"[bold]seed {s}[/]: tunepp compare -> {d}")
        torch.set_num_threads(threads)
        res = run_compare(config_from_dict(wanted[s], str(cfg_file)), data, d, settings, console)
        res["seed"] = s
        write_report(res, d)
    torch.set_num_threads(threads)
    summary = summarise_dir(out, seeds)
    write_seeds_report(summary, out)
    return summary


__all__ = ["BASELINE", "METRICS", "PAIRED", "load_seed_results", "mean_ci", "parse_seeds", "run_seeds",
           "seed_dir", "summarise_dir", "summarise_seeds", "vi_sigma", "write_seeds_report"]
