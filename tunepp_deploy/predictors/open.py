"""``open_predictor``: any method's model file on a backend, as one :class:`Predictor`.

``method="auto"`` reads the method from the file (:func:`tunepp_deploy.model_file.resolve_method`:
a checkpoint's ``method`` key, an ONNX file's ``tunepp_method`` prop; TUNE++ files have none);
``saliency`` runs saliency-variance fusion on a TUNE++ checkpoint. Every command that predicts —
``tunepp infer``, ``tunepp evaluate --model``, ``compare``, ``bench``, ``demo`` — opens its model here.
"""

from __future__ import annotations

from pathlib import Path

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.predictors.base import Predictor
from tunepp_deploy.predictors.settings import RunOptions, resolve

METHODS = ("tunepp", "segwithu", "variational", "saliency")


def open_predictor(
    model: str | Path,
    method: str = "auto",
    backend: str = "auto",
    device: str = "auto",
    options: RunOptions | None = None,
    threads: int | None = None,
    amp: bool = True,
    cuda_graphs: bool = False,
    temperature: bool = True,
    saliency_target: str = "last_conv",
    compile: bool = False,
    precision: str = "fp32",
) -> Predictor:
    """Open ``model`` as the predictor of its method (module docstring); the caller closes it.

    ``compile``: torch.compile the TUNE++ network's trunk and head (torch backend; other methods ignore it).
    ``precision``: ``fp32``, ``bf16`` or ``int8`` on the OpenVINO backend (TUNE++ only; int8 needs a graph from
    ``tunepp export int8``); anything but fp32 elsewhere is a one-line error.
    """
    from tunepp_deploy.infer.runners.load import resolve_device
    from tunepp_deploy.model_file import read_temperature, resolve_method

    path = Path(model)
    opts = options or RunOptions()
    if precision.lower() not in ("fp32", "f32") and (method == "saliency" or resolve_method(method, path) != "tunepp"):
        raise TuneppError(f"--precision {precision} is an OpenVINO option for TUNE++ models only")
    if opts.deterministic and (method == "saliency" or resolve_method(method, path) != "tunepp"):
        raise TuneppError("a deterministic pass (all dropout masks 1) is defined for TUNE++ models only")
    if method == "saliency":
        if resolve_method("auto", path) != "tunepp":
            raise TuneppError(f"{path}: saliency fusion runs on a TUNE++ checkpoint")
        from tunepp_deploy.predictors.saliency import open_saliency_predictor

        return open_saliency_predictor(path, backend, resolve_device(device), threads, opts, target=saliency_target)
    chosen = resolve_method(method, path)
    if chosen == "segwithu":
        from tunepp_deploy.predictors.segwithu import open_segwithu_predictor

        return open_segwithu_predictor(path, backend, resolve_device(device), threads, opts)
    if chosen == "variational":
        from tunepp_deploy.predictors.variational import open_variational_predictor

        return open_variational_predictor(path, backend, resolve_device(device), threads, opts)
    from tunepp_deploy.infer.runners import open_runner
    from tunepp_deploy.predictors.tunepp import TuneppPredictor

    runner = open_runner(path, backend, device, amp=amp, cuda_graphs=cuda_graphs, threads=threads,
                         compile=compile, precision=precision)
    try:
        t = None
        if temperature and runner.name != "trt":
            t = read_temperature(path)
        return TuneppPredictor(runner, resolve(runner.meta.config, opts), t)
    except BaseException:
        runner.close()
        raise


__all__ = ["METHODS", "open_predictor"]
