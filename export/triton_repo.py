"""``tunepp export triton``: a Triton Inference Server model repository that serves MC dropout.

Layout written (docs/triton.md explains serving and querying)::

    REPO/tunepp_onnx/config.pbtxt   1/model.onnx   the graph on the ONNX Runtime backend, masks as inputs
    REPO/tunepp_trt/config.pbtxt    1/README.txt   the same I/O on the TensorRT backend; 1/model.plan must be
                                                   built on the serving GPU with `tunepp export trt`
    REPO/tunepp_mc/config.pbtxt     1/model.py     Python backend: windows + seed -> mean probs + maps
                                    1/model.onnx   (dynamic batching on)

**The raw graph models have ``max_batch_size: 0``.** Triton's batching assumes every input shares the
leading batch axis; the graph's masks have ``R = S x B`` rows for ``B`` windows (sample-major), so a
batched config would make Triton reject every request with ``S > 1`` and dynamic batching would
interleave two requests' rows into nonsense. With ``max_batch_size: 0`` the dims carry the dynamic
axis as ``-1`` and the client sends the masks it drew. ``tunepp_mc`` does the batching-safe thing:
its batch axis is the window axis, and masks are drawn inside from each request's seed.

Written atomically: the repository is built in a hidden sibling folder, its ORT/TRT configs are
validated against the graph (:mod:`.triton_config`, when ``tritonclient`` is installed), and only then
renamed onto ``out``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS
from tunepp_deploy.infer.runners.load import read_onnx_meta

from .metadata import ModelMeta
from .onnx_export import file_sha256
from .triton_config import ONNX_TO_TRITON, ModelConfig, TensorSpec, render, validate_file
from .triton_mc import MAP_NAMES

ONNX_MODEL, TRT_MODEL, MC_MODEL = "tunepp_onnx", "tunepp_trt", "tunepp_mc"
TRT_README = """Put model.plan here: a TensorRT engine of ../../tunepp_onnx/1/model.onnx built ON THE SERVING GPU
(engines are specific to the GPU model and TensorRT version) with

    tunepp export trt --onnx model.onnx --out model.plan --max-batch B --samples S

and the same TensorRT version as the Triton server's TensorRT backend. Until then Triton reports
tunepp_trt as unavailable; start the server with --model-control-mode=explicit --load-model=... to
serve the other models without it.
"""


@dataclass(frozen=True)
class TritonRepo:
    """What :func:`write_repository` wrote."""

    path: Path
    models: tuple[str, ...]
    samples: int
    max_batch_size: int
    validated: bool
    onnx_sha256: str

    @property
    def summary(self) -> str:
        check = "configs validated against the graph" if self.validated else \
            "configs NOT validated (install tritonclient to check them)"
        return (f"wrote Triton repository {self.path} ({', '.join(self.models)}; tunepp_mc: {self.samples} samples, "
                f"max batch {self.max_batch_size}, dynamic batching; {check})")


def _graph_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of the graph as ``max_batch_size: 0`` specs (module docstring: why 0)."""
    init = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        tt = v.type.tensor_type
        dtype = ONNX_TO_TRITON.get(int(tt.elem_type))
        if dtype is None:
            raise TuneppError(f"graph tensor {v.name!r} has ONNX element type {tt.elem_type}, which Triton "
                              "cannot serve")
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return TensorSpec(v.name, dtype, dims)

    return (tuple(spec(v) for v in model.graph.input if v.name not in init),
            tuple(spec(v) for v in model.graph.output))


def graph_configs(model: onnx.ModelProto) -> dict[str, ModelConfig]:
    """The ONNX Runtime and TensorRT configs of the raw graph (masks as inputs)."""
    ins, outs = _graph_specs(model)
    return {
        ONNX_MODEL: ModelConfig(ONNX_MODEL, ins, outs, 0, platform="onnxruntime_onnx", instance_kind="KIND_CPU",
                                comment="tunepp graph on ONNX Runtime: x [B, C, *window] plus one mask per dropout "
                                        "site [S*B, ...] (sample-major rows).\nmax_batch_size 0: the masks' rows "
                                        "are not the windows' batch axis (docs/triton.md). Use KIND_GPU for "
                                        "onnxruntime-gpu."),
        TRT_MODEL: ModelConfig(TRT_MODEL, ins, outs, 0, platform="tensorrt_plan", instance_kind="KIND_GPU",
                               default_model_filename="model.plan",
                               comment="The same graph as a TensorRT engine. 1/model.plan must be built on the serving "
                                       "GPU:\n  tunepp export trt --onnx tunepp_onnx/1/model.onnx --out "
                                       "tunepp_trt/1/model.plan"),
    }


def mc_config(meta: ModelMeta, samples: int, max_batch_size: int, noise_draws: int, threads: int,
              delay_us: int) -> ModelConfig:
    """The Python-backend MC model: windows ``[C, *window]`` + seed (+ optional start) per batch item."""
    win = tuple(meta.window)
    ins = (TensorSpec("x", "TYPE_FP32", (meta.in_channels, *win)), TensorSpec("seed", "TYPE_INT64", (1,)),
           TensorSpec("start", "TYPE_INT64", (3,), optional=True))
    outs = (TensorSpec(MAP_NAMES[0], "TYPE_FP32", (meta.num_classes, *win)),
            *(TensorSpec(n, "TYPE_FP32", win) for n in MAP_NAMES[1:]))
    return ModelConfig(
        MC_MODEL, ins, outs, max_batch_size, backend="python", instance_kind="KIND_CPU", dynamic_batching=True,
        max_queue_delay_us=delay_us,
        parameters={"onnx": "model.onnx", "samples": str(samples), "noise_draws": str(noise_draws),
                    "threads": str(threads), "classes": ",".join(meta.classes)},
        comment=f"MC dropout of one window batch: masks drawn from each item's seed exactly as `tunepp infer`,\n"
                f"{samples} samples, returns mean_probs and the uncertainty maps. start: the window's first voxel\n"
                "in the volume (input voxels; needed for element-mode masks, default 0).",
    )


def _tritonclient_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tritonclient") is not None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TuneppError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TuneppError(f"{out}: folder is not empty (pass --force to replace it)")


def write_repository(onnx_path: str | Path, out_dir: str | Path, samples: int = 25, max_batch_size: int = 8,
                     noise_draws: int = DEFAULT_NOISE_DRAWS, threads: int = 0, force: bool = False,
                     delay_us: int = 1000) -> TritonRepo:
    """Write the repository (module docstring) for ``onnx_path``; bad inputs are one-line errors."""
    src, out = Path(onnx_path), Path(out_dir)
    if samples < 1 or max_batch_size < 1 or noise_draws < 0 or threads < 0:
        raise TuneppError(f"need samples >= 1, max batch >= 1, noise draws >= 0, threads >= 0 (got {samples}, "
                          f"{max_batch_size}, {noise_draws}, {threads})")
    model, meta = read_onnx_meta(src)  # missing / unreadable / not a tunepp graph: one line
    if not meta.sites or not all(n in {i.name for i in model.graph.input} for n in meta.mask_names):
        raise TuneppError(f"{src}: the graph has no dropout mask inputs; a Triton MC repository needs a TUNE++ "
                          "graph from `tunepp export onnx`")
    _prepare_out(out, force)
    cfgs = graph_configs(model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise TuneppError(f"{out.parent}: cannot create the repository there ({e.strerror or e})") from None
    try:
        for name, cfg in cfgs.items():
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(render(cfg))
        shutil.copyfile(src, tmp / ONNX_MODEL / "1" / "model.onnx")
        (tmp / TRT_MODEL / "1" / "README.txt").write_text(TRT_README)
        mc = tmp / MC_MODEL
        (mc / "1").mkdir(parents=True)
        (mc / "config.pbtxt").write_text(render(mc_config(meta, samples, max_batch_size, noise_draws, threads,
                                                          delay_us)))
        shutil.copyfile(src, mc / "1" / "model.onnx")
        template = resources.files("tunepp_deploy.export") / "triton_model_py.txt"
        (mc / "1" / "model.py").write_text(template.read_text())
        validated = _tritonclient_available()
        if validated:
            for name in cfgs:
                validate_file(tmp / name / "config.pbtxt", model)
            validate_file(mc / "config.pbtxt")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TuneppError(f"{out}: cannot write the repository ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TritonRepo(out, (ONNX_MODEL, TRT_MODEL, MC_MODEL), samples, max_batch_size, validated, file_sha256(src))


__all__ = ["MC_MODEL", "ONNX_MODEL", "TRT_MODEL", "TritonRepo", "graph_configs", "mc_config", "write_repository"]
