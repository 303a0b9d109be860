"""One exception type for every user-facing failure.

The CLI turns a :class:`TuneppError` into a single red line and exit code 2, so library code
raises it (or a subclass) with a message that names the offending file, key or shape, and never
prints tracebacks at users for input they can fix.
"""

from __future__ import annotations


class TuneppError(Exception):
    """A failure caused by the user's input or environment, reported as one line."""


class ConfigError(TuneppError, ValueError):
    """A YAML config or a checkpoint's config that does not validate."""


class DataError(TuneppError, ValueError):
    """An image, label or dataset folder that cannot be used."""


class ModelMismatchError(TuneppError):
    """A checkpoint, ONNX file or engine that belongs to another config, version or device."""
