"""Variational encoder-decoders (seed: "Uncertainty Quantification using Variational Inference for
Biomedical Image Segmentation"): mean-field Gaussian convolutions, ELBO training, weight noise as
explicit inputs for reproducible, exportable sampling.

Modules: ``base`` (the noise/KL contract), ``unet`` / ``vnet`` / ``fcn`` (backbones), ``build``,
``noise`` (seeded sampler), ``elbo`` (loss), ``train`` (fit/save/load), ``export`` (ONNX),
``runners`` (the sampling graph on torch or ONNX Runtime). Whole scans are
:mod:`tunepp_deploy.predictors.variational`.
"""

from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.build import ARCHS, build_variational
from tunepp_deploy.methods.variational.noise import WeightNoise, sample_weight_noise

__all__ = ["ARCHS", "BayesianSegNet", "WeightNoise", "build_variational", "sample_weight_noise"]
