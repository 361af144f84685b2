"""Synthetic CT-like phantoms: the embedded default of ``medsam demo`` and test data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .io import Volume


@dataclass
class Phantom:
    volume: Volume
    labels: np.ndarray  # [i, j, k], 1 = the "organ"
    organ_box: tuple[int, int, int, int, int, int]  # inclusive IJK box around label 1


def ct_phantom(shape: tuple[int, int, int] = (96, 80, 40), spacing: tuple[float, float, float] = (2.0, 2.0, 4.0),
               seed: int = 0) -> Phantom:
    """An abdomen-like CT volume in RAS voxel order: air, a fat-rimmed body, a liver-like organ
    (HU ~ 60) and a kidney-like blob (HU ~ 150), with Gaussian noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    ci, cj, ck = (n / 2 for n in shape)
    body = ((i - ci) / (0.45 * shape[0])) ** 2 + ((j - cj) / (0.4 * shape[1])) ** 2 <= 1
    inner = ((i - ci) / (0.40 * shape[0])) ** 2 + ((j - cj) / (0.35 * shape[1])) ** 2 <= 1
    organ = (((i - 0.35 * shape[0]) / (0.16 * shape[0])) ** 2 + ((j - 0.45 * shape[1]) / (0.18 * shape[1])) ** 2
             + ((k - ck) / (0.3 * shape[2])) ** 2) <= 1
    blob = (((i - 0.68 * shape[0]) / (0.07 * shape[0])) ** 2 + ((j - 0.6 * shape[1]) / (0.08 * shape[1])) ** 2
            + ((k - ck) / (0.2 * shape[2])) ** 2) <= 1
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0
    hu[inner] = 40.0
    hu[organ] = 60.0
    hu[blob] = 150.0
    hu += rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    labels = organ.astype(np.uint8)
    idx = np.argwhere(organ)
    box = (*idx.min(0).tolist(), *idx.max(0).tolist())
    return Phantom(Volume(hu.astype(np.int16), affine, source="phantom"), labels, box)  # type: ignore[arg-type]
