"""Export TUNE++ for deployment: a self-describing ONNX graph with dropout masks as inputs
(:mod:`.onnx_export`, :mod:`.metadata`) and TensorRT engines built from it (:mod:`.trt_build`).

Imports are kept light: TensorRT and ModelOpt are imported only inside the functions that need them.
"""
