"""The model description that travels inside an ONNX file (``metadata_props``) or an engine's sidecar.

Inference needs more than weights: the class names, the spacing and intensity normalisation the
network was trained with, the window, and the dropout sites whose masks it must feed. Storing all of
it (the full config as JSON, plus the frequently read fields as their own keys for tools such as
Netron) in the exported file means ``tunepp infer --model model.onnx`` needs nothing else, and a
file exported from another config — or a plain ONNX graph — is recognised and refused in one line.

Keys (all prefixed ``tunepp.``): ``format``, ``version``, ``config`` (JSON), ``classes``,
``spacing``, ``intensity``, ``window``, ``dropout_sites``, ``inputs``, ``outputs``; a quantized graph
(``tunepp export int8``) adds ``quantization`` (:data:`QUANT_KEY`, JSON), absent from float exports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from tunepp_deploy import __version__
from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import IntensityConfig, TuneppConfig
from tunepp_deploy.errors import ConfigError, ModelMismatchError
from tunepp_deploy.model.blocks.conv import Int3
from tunepp_deploy.model.blocks.dropout import DropoutSite
from tunepp_deploy.model.network import TUNEPP
from tunepp_deploy.model_file import meta_ints, meta_number, parse_json_prop

#: Bumped when the graph's inputs/outputs or the metadata keys change meaning.
EXPORT_FORMAT = 1
PREFIX = "tunepp."
INPUT_NAME = "x"
OUTPUT_NAMES = ("logits", "log_var")
#: Present only in int8 Q/DQ graphs: a JSON record of how they were quantized (:func:`quantization_record`).
QUANT_KEY = PREFIX + "quantization"


def mask_input_name(site: DropoutSite) -> str:
    """Graph input name of a site's mask."""
    return f"mask_{site.name}"


@dataclass(frozen=True)
class ModelMeta:
    """Everything an inference backend needs besides the graph itself."""

    config: TuneppConfig
    window: Int3
    sites: tuple[DropoutSite, ...]
    version: str = __version__
    format: int = EXPORT_FORMAT

    @property
    def classes(self) -> list[str]:
        return list(self.config.data.classes)

    @property
    def num_classes(self) -> int:
        return len(self.config.data.classes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.config.data.spacing)  # type: ignore[return-value]

    @property
    def intensity(self) -> IntensityConfig:
        return self.config.data.intensity

    @property
    def in_channels(self) -> int:
        return self.config.model.in_channels

    @property
    def mask_names(self) -> list[str]:
        return [mask_input_name(s) for s in self.sites]

    @property
    def input_names(self) -> list[str]:
        return [INPUT_NAME, *self.mask_names]

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props`` or a JSON sidecar."""
        props = {
            "format": str(self.format),
            "version": self.version,
            "config": json.dumps(config_to_dict(self.config), sort_keys=True),
            "classes": json.dumps(self.classes),
            "spacing": json.dumps(list(self.spacing)),
            "intensity": json.dumps(self.intensity.model_dump(mode="json")),
            "window": json.dumps(list(self.window)),
            "dropout_sites": json.dumps(
                [{"name": s.name, "channels": s.channels, "p": s.p, "mode": s.mode, "stride": list(s.stride)}
                 for s in self.sites]
            ),
            "inputs": json.dumps(self.input_names),
            "outputs": json.dumps(list(OUTPUT_NAMES)),
        }
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> ModelMeta:
        """Parse :meth:`to_props` output; anything missing or foreign is a :class:`ModelMismatchError`."""
        if PREFIX + "format" not in props or PREFIX + "config" not in props:
            raise ModelMismatchError(
                f"{source}: not a tunepp model (no tunepp metadata; export it with `tunepp export onnx`)"
            )
        fmt = props[PREFIX + "format"]
        if fmt != str(EXPORT_FORMAT):
            raise ModelMismatchError(
                f"{source}: export format {fmt} from tunepp {props.get(PREFIX + 'version')}, this is tunepp "
                f"{__version__} (format {EXPORT_FORMAT}); re-export it"
            )
        try:
            cfg = config_from_dict(parse_json_prop(props, PREFIX + "config", source), f"{source} metadata")
        except ConfigError as e:
            raise ModelMismatchError(str(e)) from None
        window = meta_ints(parse_json_prop(props, PREFIX + "window", source), PREFIX + "window", source, length=3)
        sites = _sites(parse_json_prop(props, PREFIX + "dropout_sites", source), source)
        expected = [p for p in _positions(cfg) if p in cfg.model.dropout.sites]
        if [s.name for s in sites] != expected:
            raise ModelMismatchError(f"{source}: dropout sites in the metadata disagree with its config")
        return cls(cfg, window, sites, props.get(PREFIX + "version", "?"), int(fmt))  # type: ignore[arg-type]


def _sites(raw: object, source: str) -> tuple[DropoutSite, ...]:
    """The ``dropout_sites`` prop as sites; a malformed entry is one line naming the key."""
    key = PREFIX + "dropout_sites"
    if not isinstance(raw, list):
        raise ModelMismatchError(f"{source}: metadata {key!r} is not a list")
    sites = []
    for d in raw:
        if not isinstance(d, dict) or not {"name", "channels", "p", "mode", "stride"} <= set(d):
            raise ModelMismatchError(f"{source}: metadata {key!r} entry {str(d)[:60]} lacks "
                                     "name/channels/p/mode/stride")
        try:
            sites.append(DropoutSite(str(d["name"]), meta_ints([d["channels"]], key, source)[0],
                                     meta_number(d["p"], key, source, 0.0, 1.0), _mode(d["mode"], key, source),
                                     meta_ints(d["stride"], key, source, length=3)))
        except (ValueError, TypeError) as e:  # DropoutSite's own checks
            raise ModelMismatchError(f"{source}: metadata {key!r} entry {str(d)[:60]}: {e}") from None
    return tuple(sites)


def _mode(raw: object, key: str, source: str) -> str:
    if raw not in ("channel", "element"):
        raise ModelMismatchError(f"{source}: metadata {key!r} mode {str(raw)[:30]!r} is not channel or element")
    return str(raw)


def _positions(cfg: TuneppConfig) -> list[str]:
    """Execution order of the network's positions (bottleneck, dec{L-2}..dec0, head)."""
    L = len(cfg.model.widths)
    return ["bottleneck", *(f"dec{i}" for i in range(L - 2, -1, -1)), "head"]


def quantization_record(**fields: object) -> dict[str, object]:
    """The :data:`QUANT_KEY` record of an int8 Q/DQ graph: format and types fixed, ``fields`` from the exporter."""
    return {"format": "onnx-qdq", "weights": "int8 per-channel (symmetric)", "activations": "int8 (static)",
            **fields}


def quantization_of(props: Mapping[str, str]) -> dict[str, object] | None:
    """The quantization record in a graph's metadata props, None for a float graph (or an unreadable record)."""
    raw = props.get(QUANT_KEY)
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def meta_for(net: TUNEPP, cfg: TuneppConfig, window: Int3 | None = None) -> ModelMeta:
    """The metadata of ``net`` built from ``cfg``, for windows of ``window`` (default: the config's)."""
    win = tuple(int(w) for w in (window or cfg.window))
    net.check_window(win)
    return ModelMeta(cfg, win, tuple(net.dropout_sites()))  # type: ignore[arg-type]


__all__ = ["EXPORT_FORMAT", "INPUT_NAME", "OUTPUT_NAMES", "PREFIX", "QUANT_KEY", "ModelMeta", "mask_input_name",
           "meta_for", "quantization_of", "quantization_record"]
