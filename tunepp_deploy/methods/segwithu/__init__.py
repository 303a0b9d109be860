"""SegWithU (seed: "Uncertainty as Perturbation Energy for Single-Forward-Pass Risk-Aware Medical
Image Segmentation"): a post-hoc head on a frozen TUNE++ backbone.

Modules: ``taps`` (decoder features by hooks), ``head`` (probes, maps, temperature), ``losses``,
``model`` (backbone + head, checkpoint), ``train`` (``tunepp train-head``), ``export`` (one
single-pass ONNX graph), ``runner`` (that graph on torch or ONNX Runtime). Whole scans are
:mod:`tunepp_deploy.predictors.segwithu`.
"""

from tunepp_deploy.methods.segwithu.head import SegWithUHead, SegWithUOutput, probe_codes
from tunepp_deploy.methods.segwithu.model import SegWithU, load_segwithu, save_segwithu

__all__ = ["SegWithU", "SegWithUHead", "SegWithUOutput", "load_segwithu", "probe_codes", "save_segwithu"]
