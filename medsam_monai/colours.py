"""Segment colours shared by the 3D Slicer ``.seg.nrrd`` writer and the preview picture.

One rule for both, so that a segment looks the same in the preview as in 3D Slicer: segments are
taken in label-value order and the n-th gets the n-th colour of 3D Slicer's generic anatomy table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

RGB = tuple[float, float, float]

# Default segment colours (RGB in 0..1), the first entries of 3D Slicer's generic anatomy colours.
SEGMENT_PALETTE: tuple[RGB, ...] = (
    (0.501961, 0.682353, 0.501961),
    (0.945098, 0.839216, 0.568627),
    (0.694118, 0.478431, 0.396078),
    (0.435294, 0.721569, 0.823529),
    (0.847059, 0.396078, 0.309804),
    (0.866667, 0.509804, 0.396078),
    (0.564706, 0.933333, 0.564706),
    (0.752941, 0.407843, 0.345098),
    (0.862745, 0.960784, 0.078431),
    (0.305882, 0.247059, 0.0),
)


def palette_colour(position: int) -> RGB:
    """The default colour (0..1) of the segment at ``position`` (0-based) in label-value order."""
    return SEGMENT_PALETTE[position % len(SEGMENT_PALETTE)]


def segment_values(labels: np.ndarray, segment_names: Mapping[int, str] | None = None) -> list[int]:
    """The segments of a labelmap, in order: every non-zero value present plus every named value."""
    present = {int(v) for v in np.unique(labels) if v != 0}
    return sorted(present | {int(v) for v in (segment_names or {})})


def segment_colours(
    labels: np.ndarray,
    segment_names: Mapping[int, str] | None = None,
    colors: Mapping[int, RGB] | None = None,
) -> dict[int, RGB]:
    """Label value -> RGB (0..1) of each segment, as the ``.seg.nrrd`` writer gives them."""
    given = dict(colors or {})
    return {value: given.get(value, palette_colour(n)) for n, value in enumerate(segment_values(labels, segment_names))}


def to_rgb255(colour: RGB) -> tuple[int, int, int]:
    """An RGB colour in 0..1 as 8-bit values."""
    return tuple(round(255 * min(max(float(c), 0.0), 1.0)) for c in colour)  # type: ignore[return-value]
