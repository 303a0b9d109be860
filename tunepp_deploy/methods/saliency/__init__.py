"""Saliency-variance fusion (seed: "On the Fusion of Predictive and Saliency Variance for
Uncertainty Calibration in Medical Image Segmentation").

Modules: ``gradcam`` (Seg-Grad-CAM per class, 2D/3D, and the target activation: after the last
dropout site by default), ``fusion`` (saliency variance, fusion, foreground ECE), ``phantom2d`` (2D
slices of the phantoms), ``isic`` (ISIC 2018 folder reader), ``experiment`` (the seed's 2D
comparison), ``volume3d`` (the small 3D comparison on whole phantom volumes), ``target_study`` (old
vs new Grad-CAM target, 2D and 3D, with t-intervals over seeds). Whole 3D scans (per-sample stitched
softmax and Grad-CAM, the 3D row of ``tunepp compare``) are :mod:`tunepp_deploy.predictors.saliency`.
The 2D network is :mod:`tunepp_deploy.methods.unet2d`.
"""

from tunepp_deploy.methods.saliency.fusion import (
    class_saliency_variance,
    fuse,
    mc_saliency,
    saliency_variance,
    uncertainty_calibration,
)
from tunepp_deploy.methods.saliency.gradcam import (
    BOTTLENECK,
    DEFAULT_TARGET,
    LAST_CONV,
    CamTarget,
    resolve_target,
    seg_grad_cam,
    seg_grad_cam_per_class,
    segmentation_score,
)

__all__ = [
    "BOTTLENECK",
    "DEFAULT_TARGET",
    "LAST_CONV",
    "CamTarget",
    "class_saliency_variance",
    "fuse",
    "mc_saliency",
    "resolve_target",
    "saliency_variance",
    "seg_grad_cam",
    "seg_grad_cam_per_class",
    "segmentation_score",
    "uncertainty_calibration",
]
