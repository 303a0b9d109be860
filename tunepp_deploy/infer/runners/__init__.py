"""Inference backends behind one interface (:class:`~.base.Runner`), one module per backend.

``torch`` (a checkpoint, CPU or CUDA), ``ort`` (an exported ONNX file on ONNX Runtime) and ``trt``
(a TensorRT engine). :func:`~.load.open_runner` picks one from the model file and ``--backend``.
"""

from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.load import BACKENDS, open_runner, read_model_meta

__all__ = ["BACKENDS", "Runner", "open_runner", "read_model_meta"]
