"""Inference backends behind one interface (:class:`~.base.Runner`), one module per backend.

``torch`` (a checkpoint, CPU or CUDA), ``ort`` (an exported ONNX file on ONNX Runtime), ``openvino``
(the same ONNX file on OpenVINO's CPU plugin, optional extra ``[openvino]``) and ``trt`` (a TensorRT
engine). :func:`~.load.open_runner` picks one from the model file and ``--backend``;
:func:`~.load.auto_backend` says what ``auto`` picks and why.
"""

from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.load import BACKENDS, auto_backend, open_runner, read_model_meta

__all__ = ["BACKENDS", "Runner", "auto_backend", "open_runner", "read_model_meta"]
