"""The triage page of an output folder (``index.html``, :mod:`.page`) and its per-case thumbnails
(``NAME_preview.png``, :mod:`.preview`), built from the case reports: ``tunepp report DIR``."""
