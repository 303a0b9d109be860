"""Segmentation and uncertainty metrics, each with its definition in the docstring."""

from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class

__all__ = ["dice_per_class", "iou_per_class"]
