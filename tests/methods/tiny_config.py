"""The tiny config the method tests share (a module, not conftest: a test importing ``conftest`` by name
gets whichever conftest comes first on sys.path, which under pytest-xdist is tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data.crop_size": [16, 16, 8], "data.spacing": [4.0, 4.0, 5.0], "model.widths": [8, 16],
    "model.depths": [1, 1], "model.decoder_depths": [1], "model.proj_tokens": 8,
    "model.dropout.sites": ["dec0", "head"],
}
