"""The three other seed methods, each in its own subpackage, next to TUNE++ MC dropout.

* :mod:`.variational` — mean-field Gaussian Bayesian encoder-decoders (U-Net, V-Net, FCN) trained
  with an ELBO; weight noise is an explicit input, like TUNE++'s dropout masks.
* :mod:`.segwithu` — a post-hoc perturbation-energy uncertainty head on a frozen TUNE++ backbone
  (one deterministic forward pass).
* :mod:`.saliency` — Seg-Grad-CAM per MC sample, saliency variance and its fusion with the
  predictive variance (2D and 3D).

Reusable layers live in :mod:`.blocks`; networks never define layers inline.
"""
