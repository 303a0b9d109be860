"""Saliency-variance fusion (seed: "On the Fusion of Predictive and Saliency Variance for
Uncertainty Calibration in Medical Image Segmentation").

Modules: ``gradcam`` (Seg-Grad-CAM, 2D/3D, and the 3D target layer), ``fusion`` (saliency variance,
fusion, foreground ECE), ``phantom2d`` (2D slices of the phantoms), ``isic`` (ISIC 2018 folder
reader), ``experiment`` (the seed's 2D comparison). Whole 3D scans (per-sample stitched softmax and
Grad-CAM, the 3D row of ``tunepp compare``) are :mod:`tunepp_deploy.predictors.saliency`. The 2D
network is :mod:`tunepp_deploy.methods.unet2d`.
"""

from tunepp_deploy.methods.saliency.fusion import fuse, mc_saliency, saliency_variance, uncertainty_calibration
from tunepp_deploy.methods.saliency.gradcam import BOTTLENECK, resolve_target, seg_grad_cam, segmentation_score

__all__ = [
    "BOTTLENECK",
    "fuse",
    "mc_saliency",
    "resolve_target",
    "saliency_variance",
    "seg_grad_cam",
    "segmentation_score",
    "uncertainty_calibration",
]
