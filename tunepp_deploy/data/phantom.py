"""CT-like phantoms whose organs have designed topology.

Nobody can download Synapse, BTCV or ACDC here, so the toolkit makes its own data: a body in air
with four labelled structures whose Betti numbers (b0 components, b1 tunnels, b2 cavities) are
known by construction, so the topology loss, the Betti metrics and the uncertainty report can be
checked on any machine:

====  =========  ==================================================  ==============
 id   name       shape                                               Betti
====  =========  ==================================================  ==============
 1    solid      rotated ellipsoid; in ~30% of cases a small          (1,0,0) / (2,0,0)
                 detached second component (an "accessory" organ)
 2    torus      solid torus, random radii and orientation            (1,1,0)
 3    hollow     thick ellipsoidal shell around a fluid cavity        (1,0,1)
 4    tube       thin curved vessel (a swept circle along a bent arc) (1,0,0)
====  =========  ==================================================  ==============

Shapes are defined in millimetres and voxelised on an anisotropic grid, then the image gets
organ-specific Hounsfield units, a Gaussian blur (partial volume) and noise. The designed Betti
numbers are written next to each case and are checked in the tests by GUDHI, not by this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from tunepp_deploy.data.nifti import write_atomic

PHANTOM_CLASSES = ("background", "solid", "torus", "hollow", "tube")
DEFAULT_SPACING = (2.0, 2.0, 2.5)
DEFAULT_SHAPE = (64, 64, 48)

# Mean HU per tissue: air, body (soft tissue), the four organs, and the hollow organ's fluid.
_HU_AIR, _HU_BODY, _HU_FLUID = -1000.0, 30.0, 0.0
_HU_ORGAN = {1: 110.0, 2: 170.0, 3: 75.0, 4: 240.0}


@dataclass(frozen=True)
class PhantomCase:
    """One generated case: HU image, label map, geometry and the designed topology per label."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    betti: dict[str, tuple[int, int, int]]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _local_coords(grid: np.ndarray, centre: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Coordinates (mm) of every voxel in the organ's own rotated frame, shape (3, *grid)."""
    d = grid - centre[:, None, None, None]
    return np.einsum("ij,j...->i...", rot.T, d)


def _ellipsoid(p: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return ((p / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def _torus(p: np.ndarray, major: float, minor: float) -> np.ndarray:
    ring = np.sqrt(p[0] ** 2 + p[1] ** 2) - major
    return ring**2 + p[2] ** 2 <= minor**2


def _tube(p: np.ndarray, bend: float, radius: float, arc: float) -> np.ndarray:
    """A circle of ``radius`` swept along an arc of a circle of radius ``bend`` (angle ``arc``)."""
    ang = np.arctan2(p[1], p[0])
    ring = np.sqrt(p[0] ** 2 + p[1] ** 2) - bend
    inside = ring**2 + p[2] ** 2 <= radius**2
    return inside & (np.abs(ang) <= arc / 2)


def generate_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise_hu: float = 20.0,
    blur_mm: float = 1.2,
    contact: bool = False,
) -> PhantomCase:
    """Generate one phantom. Organs sit in the four quadrants of the body so they never touch.

    Sizes are chosen so each structure is at least ~2 voxels thick at this spacing: thinner parts
    could break 26-connectivity or open a cavity, and the designed Betti numbers would be wrong.

    ``contact=True``: the hollow organ is moved toward the solid one until they share a contact
    surface (the hollow organ wins the overlap, a shallow cap of the solid), so the topology loss's
    junction weights J (two other labels close) are non-zero along the contact rim. Such a case is
    redrawn (from the same generator) until our Betti kernel confirms the designed numbers — the
    cap could in principle cut the solid or another organ — and the tests check it with GUDHI.
    """
    if not contact:
        return _generate(rng, shape, spacing, noise_hu, blur_mm, contact=False)
    from tunepp_deploy.kernels import betti_per_label

    for _ in range(20):
        case = _generate(rng, shape, spacing, noise_hu, blur_mm, contact=True)
        designed = np.array([case.betti[n] for n in PHANTOM_CLASSES[1:]])
        if np.array_equal(np.asarray(betti_per_label(case.labels, num_labels=len(PHANTOM_CLASSES) - 1)), designed):
            return case
    raise RuntimeError("no contact phantom with the designed topology in 20 draws")


def _move_into_contact(grid: np.ndarray, start: np.ndarray, target: np.ndarray, rot: np.ndarray,
                       outer: np.ndarray, other: np.ndarray, min_overlap: int = 20) -> np.ndarray:
    """The centre on the segment start -> target where the ellipsoid ``outer`` first overlaps ``other``
    by at least ``min_overlap`` voxels (a contact surface, not a deep intersection)."""
    for t in np.linspace(0.0, 1.0, 81):
        c = start + t * (target - start)
        if (_ellipsoid(_local_coords(grid, c, rot), outer) & other).sum() >= min_overlap:
            return c
    return start


def _generate(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    noise_hu: float,
    blur_mm: float,
    contact: bool,
) -> PhantomCase:
    sp = np.asarray(spacing, dtype=np.float64)
    shp = np.asarray(shape)
    axes = [np.arange(n) * s for n, s in zip(shape, sp, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    extent = (shp - 1) * sp
    centre = extent / 2

    labels = np.zeros(shape, dtype=np.uint8)
    body_radii = np.array([extent[0] * 0.47, extent[1] * 0.42, extent[2] * 0.6])
    body = _ellipsoid(_local_coords(grid, centre, np.eye(3)), body_radii)
    fluid = np.zeros(shape, dtype=bool)

    quadrant = rng.permutation(4)
    offsets = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=np.float64)
    q_extent = extent[:2] * 0.24
    solid_components = 1

    def organ_centre(k: int) -> np.ndarray:
        xy = centre[:2] + offsets[quadrant[k]] * q_extent + rng.uniform(-2.0, 2.0, size=2)
        z = centre[2] + rng.uniform(-0.08, 0.08) * extent[2]
        return np.array([xy[0], xy[1], z])

    # 1: solid ellipsoid (+ occasional accessory component)
    c = solid_centre = organ_centre(0)
    radii = rng.uniform([13.0, 11.0, 11.0], [17.0, 14.0, 15.0])
    solid = _ellipsoid(_local_coords(grid, c, _random_rotation(rng)), radii)
    if rng.random() < 0.3:
        acc_c = c + np.array([0.0, 0.0, radii.max() + 8.0]) * rng.choice([-1.0, 1.0])
        acc = _ellipsoid(_local_coords(grid, acc_c, np.eye(3)), np.array([5.0, 5.0, 5.5]))
        if acc.any() and not ndimage.binary_dilation(solid, iterations=2)[acc].any():
            solid |= acc
            solid_components = 2
    labels[solid & body] = 1

    # 2: torus (tunnel)
    c = organ_centre(1)
    major, minor = rng.uniform(13.0, 15.0), rng.uniform(5.5, 6.5)
    labels[_torus(_local_coords(grid, c, _random_rotation(rng)), major, minor)] = 2

    # 3: hollow shell around a fluid cavity
    c = organ_centre(2)
    rot = _random_rotation(rng)
    outer = rng.uniform([14.0, 13.0, 13.0], [17.0, 15.0, 15.0])
    inner = outer - rng.uniform(5.5, 6.5)
    if contact:
        c = _move_into_contact(grid, c, solid_centre, rot, outer, labels == 1)
    p = _local_coords(grid, c, rot)
    shell_out, shell_in = _ellipsoid(p, outer), _ellipsoid(p, inner)
    labels[shell_out & ~shell_in] = 3
    fluid |= shell_in

    # 4: thin bent tube
    c = organ_centre(3)
    bend, rad, arc = rng.uniform(12.0, 15.0), rng.uniform(3.5, 4.2), rng.uniform(2.4, 3.8)
    labels[_tube(_local_coords(grid, c, _random_rotation(rng)), bend, rad, arc) & (labels == 0)] = 4

    hu = np.full(shape, _HU_AIR, dtype=np.float32)
    hu[body] = _HU_BODY + rng.normal(0.0, 5.0)
    hu[fluid] = _HU_FLUID
    for lab, val in _HU_ORGAN.items():
        hu[labels == lab] = val + rng.normal(0.0, 8.0)
    hu = ndimage.gaussian_filter(hu, sigma=blur_mm / sp)
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)

    origin = -centre + rng.uniform(-20.0, 20.0, size=3)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = origin
    betti = {
        "solid": (solid_components, 0, 0),
        "torus": (1, 1, 0),
        "hollow": (1, 0, 1),
        "tube": (1, 0, 0),
    }
    return PhantomCase(hu.astype(np.float32), labels, tuple(float(s) for s in sp), affine, betti)


def write_phantom_dataset(
    out: str | Path,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    progress: bool = False,
    contact: bool = False,
) -> Path:
    """Write ``cases`` phantoms as ``imagesTr/phantom_XXX_0000.nii.gz`` + ``labelsTr/phantom_XXX.nii.gz``.

    Also writes ``dataset.json`` (classes, spacing, case list, and each case's designed Betti
    numbers per label). Case ``i`` depends only on ``(seed, i)`` so a dataset can be extended.
    ``contact``: organs that touch (:func:`generate_case`), recorded in ``dataset.json``.
    """
    from rich.progress import track

    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {
        "name": "tunepp-phantom",
        "classes": list(PHANTOM_CLASSES),
        "spacing": list(spacing),
        "modality": "ct",
        "contact": bool(contact),
        "cases": {},
    }
    it = range(cases)
    for i in track(it, description="phantoms", disable=not progress):
        rng = np.random.default_rng([seed, i])
        name = f"phantom_{i:03d}"
        write_case(out, name, generate_case(rng, shape=shape, spacing=spacing, contact=contact), meta)
    write_atomic(out / "dataset.json", lambda t: t.write_text(json.dumps(meta, indent=2)))
    return out


def write_case(out: Path, name: str, case: PhantomCase, meta: dict[str, object]) -> None:
    """Write one case as ``imagesTr/NAME_0000.nii.gz`` + ``labelsTr/NAME.nii.gz`` (mm units, q/sform
    code 1) and record its designed Betti numbers under ``meta["cases"][NAME]``."""
    import nibabel as nib

    files = ((case.image, "imagesTr", f"{name}_0000.nii.gz"), (case.labels, "labelsTr", f"{name}.nii.gz"))
    for arr, sub, fname in files:
        img = nib.Nifti1Image(arr, case.affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        write_atomic(out / sub / fname, lambda t, img=img: nib.save(img, str(t)), suffix=".nii.gz")
    meta["cases"][name] = {"betti": {k: list(v) for k, v in case.betti.items()}}  # type: ignore[index]
