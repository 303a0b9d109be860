"""``tunepp model-info``: parameters, FLOPs per window and the MC-dropout layout of a config.

A thin typer wrapper; the numbers come from :func:`tunepp_deploy.model.summary.summarize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunepp_deploy.config import load_config
from tunepp_deploy.errors import ConfigError
from tunepp_deploy.model.summary import ModelSummary, summarize


def parse_window(text: str) -> tuple[int, int, int]:
    """``"96,96,96"`` or ``"96x96x96"`` -> ``(96, 96, 96)``; :class:`ConfigError` otherwise."""
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise ConfigError(f"--window must be three positive integers like 96,96,96, got {text!r}")
    return values  # type: ignore[return-value]


def render_summary(s: ModelSummary, title: str) -> Table:
    """The rich table ``model-info`` prints."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("Item")
    table.add_column("Value", justify="right")
    table.add_row("Parameters", f"{s.parameters:,} ({s.parameters / 1e6:.2f} M)")
    table.add_row("Window", "x".join(map(str, s.window)))
    table.add_row("Total stride", "x".join(map(str, s.total_stride)))
    table.add_row("GFLOPs per window (single pass)", f"{s.gflops:.2f}")
    table.add_row("  trunk (before first site, run once)", f"{s.trunk_gflops:.2f} ({s.trunk_share:.0%})")
    table.add_row("  head (run per MC sample)", f"{s.head_gflops:.2f} ({1 - s.trunk_share:.0%})")
    table.add_row("GFLOPs for 25 MC samples (trunk once)", f"{s.mc_gflops(25):.1f}")
    for site in s.sites:
        shape = site.mask_shape(s.window, 1)
        table.add_row(
            f"Dropout site {site.name}",
            f"C={site.channels} p={site.p:g} {site.mode} mask {list(shape)}",
        )
    if not s.sites:
        table.add_row("Dropout sites", "none (MC samples would all be identical)")
    for name, shape in s.trunk_outputs:
        table.add_row(f"Trunk output {name}", str(list(shape)))
    return table


def model_info(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML experiment config.")],
    window: Annotated[str | None, typer.Option("--window", help="D,H,W window (default: the config's crop).")] = None,
) -> None:
    """Print parameters, GFLOPs per window (FlopCounterMode), dropout sites and the trunk/head split."""
    cfg = load_config(config)
    win = parse_window(window) if window else None
    summary = summarize(cfg, win)
    Console().print(render_summary(summary, f"TUNE++ model: {cfg.name}"))


__all__ = ["model_info", "parse_window", "render_summary"]
