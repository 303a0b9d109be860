"""Sharding a folder batch: ``tunepp infer --num-parts N --part-id I`` runs part I of N.

So that a Slurm job array (``--part-id $SLURM_ARRAY_TASK_ID``) or N GPUs each take a part of one folder
without a scheduler, every part lists the same folder, sorts its cases **by case name** and keeps
case number ``i`` (0-based, in that order) when ``i % N == I``: round robin, as nnU-Net's
``-num_parts/-part_id`` does (``list[part_id::num_parts]``).

Why this split:

* it depends only on the sorted list of case names in the input folder — not on which cases are
  already done, locked by another run or failed — so every part computes the same split whenever it
  starts, and a part that is restarted (resume) takes exactly the cases it had;
* part sizes differ by at most one case, and when case names carry an order (acquisition date, site,
  size) round robin spreads it over the parts instead of giving one part all the large scans, as
  contiguous blocks would;
* names, not file paths, are sorted: ``case.nii`` and ``case_0000.nii.gz`` are the same case and sort
  by the name the outputs carry.

Adding or removing scans changes the split (as for any split of a sorted list); finish or stop every
part of a folder before changing what is in it. The parts write into one output folder with the usual
per-case locks, resume and manifest checks (:mod:`tunepp_deploy.infer.batch`), so together they
write exactly the files a single run writes; the last part to finish writes the complete triage page
(``tunepp report OUT`` rebuilds it at any time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunepp_deploy.data.layout import case_names
from tunepp_deploy.errors import TuneppError


def check_part(num_parts: int, part_id: int) -> None:
    """One-line :class:`TuneppError` unless ``num_parts >= 1`` and ``0 <= part_id < num_parts``."""
    if num_parts < 1:
        raise TuneppError(f"--num-parts {num_parts}: must be at least 1")
    if not 0 <= part_id < num_parts:
        raise TuneppError(f"--part-id {part_id}: must be between 0 and {num_parts - 1} for --num-parts {num_parts}")


def shard(images: Sequence[Path], num_parts: int, part_id: int) -> list[Path]:
    """The scans of part ``part_id`` of ``num_parts`` (module docstring), in case-name order.

    Case names are checked first (:func:`~tunepp_deploy.data.layout.case_names`: collisions and hidden
    names are one-line errors for every part alike).
    """
    check_part(num_parts, part_id)
    names = case_names(images)
    ordered = [im for _, im in sorted(zip(names, images, strict=True), key=lambda t: t[0])]
    return ordered[part_id::num_parts]


__all__ = ["check_part", "shard"]
