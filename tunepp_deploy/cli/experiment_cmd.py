"""``tunepp experiment ...``: reproducible experiments (phantoms; ISIC folders for the saliency comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors

app = typer.Typer(help="Reproducible experiments on phantoms (fidelity of the seed's claims).", no_args_is_help=True)


@app.command("fidelity")
@user_errors
def fidelity(
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder (data, runs, fidelity.md); an "
                                                          "interrupted experiment resumes in the same folder.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config.")] = Path("configs/phantom.yaml"),
    seeds: Annotated[int, typer.Option(min=1, help="Training seeds (each: one base + every variant).")] = 5,
    variants: Annotated[str, typer.Option(help="Comma-separated: none, dt, component, ph.")] = "none,dt,component,ph",
    base_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the base run (no topology term).")] = 7,
    finetune_epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs per variant.")] = 3,
    iters_per_epoch: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 20,
    train_cases: Annotated[int, typer.Option(min=3, help="Training phantoms (train + val).")] = 16,
    test_cases: Annotated[int, typer.Option(min=1, help="Held-out test phantoms.")] = 20,
    shift_cases: Annotated[int, typer.Option(min=1, help="Phantoms per shift (noise, intensity, shape).")] = 7,
    samples: Annotated[int, typer.Option(min=1, help="MC samples at test time.")] = 4,
    mc_seeds: Annotated[int, typer.Option(min=0, help="Seeds whose runs also get MC inference (test + shifted "
                                                      "cases: uncertainty, triage, OOD); all get a deterministic "
                                                      "pass.")] = 3,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes (one thread each).")] = 2,
    data_seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
) -> None:
    """Topology losses over seeds vs no topology loss and post-processing: Dice, Betti / Betti-matching
    error, HD95, fg ECE, voxel AUROC/AURC with single-pass baselines, triage, OOD AUROC (mean ± 95% CI)."""
    from tunepp_deploy.experiments.fidelity import FidelitySettings, run_fidelity

    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    s = FidelitySettings(config=config, seeds=seeds, variants=names,
                         base_epochs=base_epochs, finetune_epochs=finetune_epochs, iters_per_epoch=iters_per_epoch,
                         train_cases=train_cases, test_cases=test_cases, shift_cases=shift_cases, samples=samples,
                         mc_seeds=mc_seeds,
                         jobs=jobs, data_seed=data_seed)
    body = run_fidelity(out, s, Console(stderr=True))
    Console(stderr=True).print(f"done in {body['seconds'] / 60:.1f} min -> [bold]{out / 'fidelity.md'}[/]")


def _floats(text: str, flag: str) -> list[float]:
    from tunepp_deploy.errors import ConfigError

    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} '{text}': expected comma-separated numbers") from None


def _ints(text: str, flag: str) -> list[int]:
    from tunepp_deploy.errors import ConfigError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} '{text}': expected comma-separated integers") from None


@app.command("saliency")
@user_errors
def saliency(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for saliency.json and saliency.md.")],
    isic_images: Annotated[Path | None, typer.Option(help="ISIC image folder (ISIC_XXXXXXX.jpg); default: 2D "
                                                          "phantom slices.")] = None,
    isic_masks: Annotated[Path | None, typer.Option(help="ISIC mask folder (ISIC_XXXXXXX_segmentation.png); "
                                                         "default: the image folder.")] = None,
    cases: Annotated[int | None, typer.Option(min=2, help="Phantom cases (default 12) or first N ISIC images "
                                                          "(default all).")] = None,
    size: Annotated[int, typer.Option(min=4, help="ISIC images resized to SIZE x SIZE (multiple of 4).")] = 128,
    iters: Annotated[int, typer.Option(min=1, help="Training iterations per seed.")] = 300,
    samples: Annotated[int, typer.Option(min=2, help="MC samples (each with a Grad-CAM).")] = 10,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (split, init, batches, dropout masks).")] = "0,1,2",
    weights: Annotated[str, typer.Option(help="Comma-separated fusion weights w in [0, 1] (w=1: predictive variance "
                                              "alone, always added; w=0: saliency variance alone).")]
    = "0,0.25,0.5,0.75,1",
) -> None:
    """The saliency-fusion seed's 2D comparison: fg-ECE / AUROC of predictive vs saliency vs fused variance,
    each fused w also against a uniform-noise control (fusion 'helps' only where it beats both)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunepp_deploy.errors import ConfigError
    from tunepp_deploy.methods.saliency.data2d import isic_data, phantom_data
    from tunepp_deploy.methods.saliency.experiment import SaliencySettings, check_settings, run_saliency_experiment
    from tunepp_deploy.methods.saliency.report import prepare_out, write_saliency_report

    settings = check_settings(SaliencySettings(iters=iters, samples=samples, seeds=tuple(_ints(seeds, "--seeds")),
                                               weights=tuple(_floats(weights, "--weights"))))
    if isic_masks is not None and isic_images is None:
        raise ConfigError("--isic-masks needs --isic-images")
    prepare_out(out)
    console = Console(stderr=True)
    data = (isic_data(isic_images, isic_masks, size, cases) if isic_images is not None
            else phantom_data(cases if cases is not None else 12))
    console.print(f"{data.source}: {len(data.images)} images of {data.images.shape[1]} channel(s), "
                  f"{len(set(data.groups.tolist()))} cases/images to split")
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console)
    overall = bar.add_task("seeds", total=len(settings.seeds))
    stage = bar.add_task("", total=1)

    def progress(seed: int, name: str, done: int, total: int) -> None:
        bar.update(stage, description=f"seed {seed}: {name}", completed=done, total=total)
        if name == "score":
            bar.advance(overall)

    with bar:
        body = run_saliency_experiment(data, settings, progress)
    js, md = write_saliency_report(out, body)
    for line in body["verdict"]:
        console.print(f"- {line}")
    console.print(f"done in {body['seconds'] / 60:.1f} min -> [bold]{md}[/] ({js.name})")


@app.command("noise-draws")
@user_errors
def noise_draws(
    model: Annotated[Path, typer.Option("--model", "-m", help="A TUNE++ checkpoint or ONNX file.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="The fixed scan (NIfTI).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for noise_draws.json and .md.")] = Path(
        "docs/results"),
    samples: Annotated[int, typer.Option(min=1, help="Dropout samples S.")] = 25,
    repeats: Annotated[int, typer.Option(min=1, help="Noise seeds per T.")] = 3,
    reference: Annotated[int, typer.Option(min=1, help="T of the reference run.")] = 256,
    draws: Annotated[str, typer.Option(help="Comma-separated ladder of T.")] = "0,2,4,8,16,32",
) -> None:
    """Logit-noise draws T vs the error of the aleatoric / epistemic / total maps against a large-T reference."""
    from tunepp_deploy.experiments.noise_draws import run_noise_draws

    console = Console(stderr=True)
    run_noise_draws(model, image, out, draws=_ints(draws, "--draws"), reference=reference, samples=samples,
                    repeats=repeats, log=console.print)
    console.print(f"-> [bold]{out / 'noise_draws.md'}[/]")


@app.command("flag-threshold")
@user_errors
def flag_threshold(
    model: Annotated[Path, typer.Option("--model", "-m", help="A TUNE++ checkpoint or ONNX file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for flag_threshold.json and .md.")] = Path(
        "docs/results"),
    repeats: Annotated[int, typer.Option(min=1, help="Independent phantom sets.")] = 3,
    cases: Annotated[int, typer.Option(min=1, help="Phantoms per set (in-distribution and each shift).")] = 2,
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples (default: the model's config).")] = None,
) -> None:
    """Component mean uncertainty as a detector of wrong components: AUROC and the Youden-optimal flag threshold."""
    from tunepp_deploy.experiments.flag_threshold import run_flag_threshold

    console = Console(stderr=True)
    run_flag_threshold(model, out, repeats=repeats, cases=cases, samples=samples, log=console.print)
    console.print(f"-> [bold]{out / 'flag_threshold.md'}[/]")


@app.command("dropout-sites")
@user_errors
def dropout_sites(
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder (data, runs, dropout_sites.md); an "
                                                          "interrupted study resumes in the same folder.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config.")] = Path("configs/phantom.yaml"),
    seeds: Annotated[int, typer.Option(min=1, help="Training seeds (each trains every variant).")] = 3,
    sites: Annotated[str, typer.Option(help="Comma-separated variants, sites of one variant joined by '+'; the "
                                            "first is the reference of the paired differences.")]
    = "dec1+dec0,dec0,head",
    base_epochs: Annotated[int, typer.Option(min=1, help="Epochs of each seed's dropout-free base.")] = 4,
    finetune_epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs per variant (its sites).")] = 2,
    iters_per_epoch: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 15,
    train_cases: Annotated[int, typer.Option(min=3, help="Training phantoms (train + val).")] = 16,
    test_cases: Annotated[int, typer.Option(min=1, help="Held-out test phantoms (another data seed).")] = 4,
    samples: Annotated[int, typer.Option(min=2, help="MC samples (evaluation and timing).")] = 25,
    time_repeats: Annotated[int, typer.Option(min=1, help="Alternated engine / naive-loop timings per run.")] = 1,
    jobs: Annotated[int, typer.Option(min=1, max=2, help="Worker processes (one thread each).")] = 2,
    data_seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
) -> None:
    """Dropout sites over seeds: MC-S speed vs the naive loop of S eager passes, and Dice, fg ECE, voxel
    AUROC/AURC of the total/epistemic maps vs the deterministic max-softmax (mean ± 95% CI, paired)."""
    from tunepp_deploy.experiments.dropout_sites import SitesSettings, run_dropout_sites

    names = tuple(v.strip() for v in sites.split(",") if v.strip())
    s = SitesSettings(config=config, seeds=seeds, variants=names, base_epochs=base_epochs,
                      finetune_epochs=finetune_epochs, iters_per_epoch=iters_per_epoch,
                      train_cases=train_cases, test_cases=test_cases, samples=samples, time_repeats=time_repeats,
                      jobs=jobs, data_seed=data_seed)
    body = run_dropout_sites(out, s, Console(stderr=True))
    Console(stderr=True).print(f"done in {body['seconds'] / 60:.1f} min -> [bold]{out / 'dropout_sites.md'}[/]")
