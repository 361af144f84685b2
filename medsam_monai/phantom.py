"""Synthetic CT-like phantoms: the embedded default of ``medsam demo``, test data, and the training
data of the ``tiny`` demo model.

- :func:`ct_phantom`: one fixed abdomen-like volume with a labelled liver-like organ (label 1).
- :func:`demo_phantom`: the phantom of ``medsam demo``: a random one with a seed that the
  ``tiny`` demo model's training, validation and test phantoms do not use.
- :func:`random_ct_phantom`: a random one: a body of fat and muscle, a spine, and two to four
  labelled "organs" (rotated ellipsoids with bumpy surfaces) with contrast-enhanced CT values,
  partial-volume blur and noise, random size, spacing and storage orientation (axis order and
  flips with the matching affine, so the same anatomy is stored as RAS, LPS, permuted, ...).

HU values follow portal-venous-phase abdominal CT: air -1000, fat about -100, muscle 40-55,
liver 100-120, spleen 110-130, kidney 160-200, pancreas 90-110, cysts 0-20, bone 500-900.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .io import Volume
from .masks import mask_box


@dataclass
class Phantom:
    volume: Volume
    labels: np.ndarray  # [i, j, k]; 1 = the "organ" (random phantoms: 1..N, one value per organ)
    organ_box: tuple[int, int, int, int, int, int]  # inclusive IJK box around label 1
    organ_names: dict[int, str] = field(default_factory=dict)


def label_box(labels: np.ndarray, value: int) -> tuple[int, int, int, int, int, int]:
    """The inclusive IJK box ``(i0, j0, k0, i1, j1, k1)`` of the voxels equal to ``value``."""
    mask = labels == value
    if not mask.any():
        raise ValueError(f"label {value} is absent")
    lo, hi = mask_box(mask)
    return (*lo, *hi)  # type: ignore[return-value]


def ct_phantom(
    shape: tuple[int, int, int] = (96, 80, 40), spacing: tuple[float, float, float] = (2.0, 2.0, 4.0), seed: int = 0
) -> Phantom:
    """An abdomen-like CT volume in RAS voxel order: air, a fat-rimmed body of soft tissue (HU ~ 40),
    a liver-like organ (HU ~ 105, portal venous phase; label 1) and an unlabelled kidney-like
    blob (HU ~ 180), with Gaussian noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    ci, cj, ck = (n / 2 for n in shape)
    body = ((i - ci) / (0.45 * shape[0])) ** 2 + ((j - cj) / (0.4 * shape[1])) ** 2 <= 1
    inner = ((i - ci) / (0.40 * shape[0])) ** 2 + ((j - cj) / (0.35 * shape[1])) ** 2 <= 1
    organ = (
        ((i - 0.35 * shape[0]) / (0.16 * shape[0])) ** 2
        + ((j - 0.45 * shape[1]) / (0.18 * shape[1])) ** 2
        + ((k - ck) / (0.3 * shape[2])) ** 2
    ) <= 1
    blob = (
        ((i - 0.68 * shape[0]) / (0.07 * shape[0])) ** 2
        + ((j - 0.6 * shape[1]) / (0.08 * shape[1])) ** 2
        + ((k - ck) / (0.2 * shape[2])) ** 2
    ) <= 1
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0
    hu[inner] = 40.0
    hu[organ] = 105.0
    hu[blob] = 180.0
    hu += rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    labels = organ.astype(np.uint8)
    return Phantom(
        Volume(hu.astype(np.int16), affine, source="phantom"),
        labels,
        label_box(labels, 1),  # type: ignore[arg-type]
        {1: "organ"},
    )


DEMO_PHANTOM_SEED = 300_028  # outside every training range; four organs, all different


def demo_phantom() -> Phantom:
    """The phantom ``medsam demo`` segments: :func:`random_ct_phantom` of :data:`DEMO_PHANTOM_SEED`."""
    return random_ct_phantom(DEMO_PHANTOM_SEED)


# --------------------------------------------------------------------------------------------
# random phantoms
# --------------------------------------------------------------------------------------------

# In-plane neighbours only: the rim between organs is measured within each slice.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)

# (name, HU range) of the organs a random phantom draws from.
ORGAN_HU: tuple[tuple[str, tuple[float, float]], ...] = (
    ("liver", (100.0, 120.0)),
    ("spleen", (110.0, 130.0)),
    ("kidney", (160.0, 200.0)),
    ("pancreas", (90.0, 110.0)),
    ("cyst", (0.0, 20.0)),
)


def random_ct_phantom(
    seed: int,
    max_organs: int = 4,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Phantom:
    """A random abdomen-like CT phantom (see the module docstring); same arguments, same phantom.

    Labels are 1..N (N in 2..``max_organs``), one per organ, named in ``organ_names``. Organs do
    not touch (two voxels of tissue between them in-plane) and each has at least 200 voxels
    (fewer in small volumes). ``shape`` (x, y, z voxels before the random storage order) and
    ``spacing`` (mm) replace the random ones, e.g. for small test volumes.
    """
    rng = np.random.default_rng(seed)
    drawn_spacing = np.array([rng.uniform(0.7, 1.2), rng.uniform(0.7, 1.2), rng.uniform(2.0, 4.0)])
    # x (right-left), y (anterior-posterior), z (slices): 60-100 voxels in-plane, 24-40 slices.
    drawn_shape = (int(rng.integers(60, 101)), int(rng.integers(56, 93)), int(rng.integers(24, 41)))
    shape = tuple(int(n) for n in shape) if shape is not None else drawn_shape
    spacing = np.asarray(spacing, dtype=float) if spacing is not None else drawn_spacing
    min_voxels = min(200, int(np.prod(shape)) // 200)
    world = _world_coordinates(shape, spacing)
    hu, body = _body(world, shape, spacing, rng)
    labels = np.zeros(shape, dtype=np.uint8)
    near_organs = np.zeros(shape, dtype=bool)
    names: dict[int, str] = {}
    wanted = int(rng.integers(2, max_organs + 1))
    for _ in range(40):  # enough attempts to place the organs in almost every body
        if len(names) == wanted:
            break
        name, (lo, hi) = ORGAN_HU[int(rng.integers(len(ORGAN_HU)))]
        mask = _organ_mask(world, body, shape, spacing, rng)
        if mask.sum() < min_voxels or (mask & near_organs).any():
            continue  # organs keep a rim of soft tissue between them, as separate structures do
        value = len(names) + 1
        labels[mask] = value
        hu[mask] = rng.uniform(lo, hi)
        names[value] = name
        near_organs |= ndimage.binary_dilation(mask, structure=_IN_PLANE, iterations=2)
    if len(names) < 2:
        return random_ct_phantom(seed + 1_000_003, max_organs, shape, spacing)  # rare: too small a body for two organs
    hu = _acquisition(hu, spacing, rng)
    array, label_array, affine = _random_storage(hu.astype(np.int16), labels, spacing, rng)
    volume = Volume(array, affine, source=f"random_ct_phantom(seed={seed})")
    return Phantom(volume, label_array, label_box(label_array, 1), names)


def _world_coordinates(shape: tuple[int, int, int], spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """Millimetre coordinates of the voxel centres relative to the volume centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return tuple(np.meshgrid(*axes, indexing="ij"))


def _body(world: tuple[np.ndarray, ...], shape, spacing, rng) -> tuple[np.ndarray, np.ndarray]:
    """HU of air, a fat rim, muscle and a spine; and the mask where organs may go."""
    x, y, _ = world
    half_x, half_y = (shape[0] - 1) / 2 * spacing[0], (shape[1] - 1) / 2 * spacing[1]
    ax, ay = rng.uniform(0.82, 0.95) * half_x, rng.uniform(0.75, 0.92) * half_y
    outline = (x / ax) ** 2 + (y / ay) ** 2
    fat = rng.uniform(5.0, 12.0)  # subcutaneous fat thickness, mm
    inner = (x / (ax - fat)) ** 2 + (y / (ay - fat)) ** 2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[outline <= 1] = rng.uniform(-110.0, -90.0)
    hu[inner <= 1] = rng.uniform(40.0, 55.0)
    spine_y = -(ay - fat) * 0.65  # posterior (y is anterior)
    spine = ((x / 9.0) ** 2 + ((y - spine_y) / 8.0) ** 2) <= 1
    hu[spine] = rng.uniform(500.0, 900.0)
    allowed = (inner <= 0.85) & ~ndimage.binary_dilation(spine, iterations=2)
    return hu, allowed


def _rotation(rng) -> np.ndarray:
    """A random rotation, mostly about the body axis (organs lie roughly along it)."""
    angle_z = rng.uniform(0, np.pi)
    tilt = rng.normal(0.0, 0.25, size=2)
    cz, sz = np.cos(angle_z), np.sin(angle_z)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    cx, sx = np.cos(tilt[0]), np.sin(tilt[0])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    cy, sy = np.cos(tilt[1]), np.sin(tilt[1])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _organ_mask(world, allowed: np.ndarray, shape, spacing, rng) -> np.ndarray:
    """A rotated ellipsoid with a bumpy surface, centred at a random allowed voxel."""
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        return np.zeros(shape, dtype=bool)
    centre_index = candidates[int(rng.integers(len(candidates)))]
    centre = np.array([w[tuple(centre_index)] for w in world])
    extent_z = (shape[2] - 1) * spacing[2]
    radii = np.array([rng.uniform(8.0, 22.0), rng.uniform(7.0, 18.0), rng.uniform(0.15, 0.35) * extent_z])
    points = np.stack([w - c for w, c in zip(world, centre)], axis=-1) @ _rotation(rng)
    radius = np.sqrt(np.sum((points / radii) ** 2, axis=-1))
    return (radius <= 1.0 + _bumps(shape, rng)) & allowed


def _bumps(shape, rng, amplitude: float = 0.25) -> np.ndarray:
    """A smooth random field in about [-amplitude, amplitude]: irregular, blob-like organ surfaces."""
    field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=(6.0, 6.0, 2.0))
    return field / max(float(np.abs(field).max()), 1e-6) * amplitude


def _acquisition(hu: np.ndarray, spacing: np.ndarray, rng) -> np.ndarray:
    """Partial-volume blur (about 1 mm in-plane, a third of a slice) and scanner noise."""
    sigma = (0.8 / spacing[0], 0.8 / spacing[1], 0.35)
    blurred = ndimage.gaussian_filter(hu, sigma=sigma)
    return blurred + rng.normal(0.0, rng.uniform(6.0, 15.0), size=hu.shape).astype(np.float32)


def _random_storage(array: np.ndarray, labels: np.ndarray, spacing: np.ndarray, rng):
    """Store the RAS-ordered arrays in a random axis order with flips, and the matching affine.

    The world position of every voxel is unchanged: ``affine @ [i, j, k, 1]`` of the stored
    arrays gives the same RAS millimetres as the canonical ``diag(spacing)`` grid (up to the origin).
    """
    permutation = tuple(int(v) for v in rng.permutation(3))
    flips = rng.random(3) < 0.5
    canonical = np.diag([*spacing, 1.0])
    index_to_canonical = np.zeros((4, 4))
    index_to_canonical[3, 3] = 1
    stored, stored_labels = array.transpose(permutation), labels.transpose(permutation)
    for d, axis in enumerate(permutation):  # stored axis d is canonical axis `axis`
        n = stored.shape[d]
        if flips[d]:
            index_to_canonical[axis, d] = -1
            index_to_canonical[axis, 3] = n - 1
        else:
            index_to_canonical[axis, d] = 1
    flip_axes = tuple(int(d) for d in np.flatnonzero(flips))
    if flip_axes:
        stored, stored_labels = np.flip(stored, flip_axes), np.flip(stored_labels, flip_axes)
    affine = canonical @ index_to_canonical
    return np.ascontiguousarray(stored), np.ascontiguousarray(stored_labels), affine
