"""The tight box of a mask, the one rule for every box derived from a mask.

The boxes a label gives a training sample, evaluation's boxes, the next slice's box in 3D
propagation, a 3D Slicer segment's extent and a phantom's organ box are all this box. numpy only,
below :mod:`medsam_monai.io` and :mod:`medsam_monai.transforms`, so that both can use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_box"]


def mask_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """The inclusive tight box of a non-empty N-D mask, as (lower corner, upper corner), one index per axis.

    A (H, W) mask gives ``([y0, x0], [y1, x1])``; an ``[i, j, k]`` mask ``([i0, j0, k0], [i1, j1, k1])``.
    An empty mask has no box: ValueError.
    """
    mask = np.asarray(mask, dtype=bool)
    lo, hi = [], []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if occupied.size == 0:
            raise ValueError("an empty mask has no box")
        lo.append(int(occupied[0]))
        hi.append(int(occupied[-1]))
    return lo, hi
