"""Load YAML configs into :class:`~tunepp_deploy.config.schema.TuneppConfig` with one-line errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ConfigError


def _format_validation(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def config_from_dict(data: dict[str, Any], source: str = "config") -> TuneppConfig:
    """Validate a plain dict (e.g. the one stored in a checkpoint or ONNX metadata)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return TuneppConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None


def shipped_configs() -> list[str]:
    """Names of the configs installed with the package (``synapse``, ``phantom``, ...)."""
    root = resources.files("tunepp_deploy.configs")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A config file: an existing path, else a shipped config by name (``phantom`` or ``phantom.yaml``).

    So ``tunepp demo`` and ``tunepp train --config phantom`` work from any folder and from a wheel,
    where the repository's ``configs/`` folder is not on disk next to the user.
    """
    p = Path(path)
    if p.is_file():
        return p
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if p.parent in (Path("."), Path("configs")) and name in shipped_configs():
        return Path(str(resources.files("tunepp_deploy.configs") / f"{name}.yaml"))
    raise ConfigError(f"config file not found: {p} (shipped configs: {', '.join(shipped_configs())})")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TuneppConfig:
    """Read ``path`` (or a shipped config's name) and validate it; ``overrides`` maps dotted keys to
    values (``train.epochs``)."""
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return config_from_dict(data, str(p))


def config_to_dict(cfg: TuneppConfig) -> dict[str, Any]:
    """JSON-safe dict of a config (tuples become lists), for checkpoints and ONNX metadata."""
    return cfg.model_dump(mode="json")
