"""tunepp-deploy: train, export and run TUNE++ with Monte-Carlo dropout and topology kernels.

The importable package. Subpackages ``kernels``, ``export``, ``calibrate`` and ``bench`` live in
top-level folders of the repository and are mapped in here by ``pyproject.toml``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
