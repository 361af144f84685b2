"""A PNG preview: the key slices with the mask overlaid."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_COLOURS = np.array([[230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40], [200, 80, 220]], dtype=np.float32)


def overlay(slice_uint8: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) grey slice and (H, W) labels -> (H, W, 3) uint8 picture, one colour per label."""
    rgb = np.repeat(slice_uint8[..., None].astype(np.float32), 3, axis=-1)
    for value in np.unique(labels[labels > 0]):
        colour = _COLOURS[(int(value) - 1) % len(_COLOURS)]
        where = labels == value
        rgb[where] = (1 - alpha) * rgb[where] + alpha * colour
    return rgb.clip(0, 255).astype(np.uint8)


def save_preview(path: str | os.PathLike[str], slices: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Path:
    """Side by side overlays of ``slices`` (display orientation), written atomically as PNG."""
    from PIL import Image

    tiles = [overlay(s, lab) for s, lab in zip(slices, labels)]
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles]
    picture = np.concatenate(padded, axis=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        Image.fromarray(picture).save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
