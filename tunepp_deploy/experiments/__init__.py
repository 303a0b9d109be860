"""Reproducible experiments on phantoms (``tunepp experiment ...``)."""
