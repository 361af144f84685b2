"""A preview picture a clinician can read: each object's key slice with its mask, box, name and orientation.

The picture has one tile per key slice (objects whose key slices coincide share a tile), in radiological
display orientation (the patient's right on the image left), upscaled to at least
:data:`MIN_LONG_SIDE` px on its long side with the voxel aspect of the spacing kept. Each tile shows
the masks (filled, with a solid rim), the box of each object whose key slice it is, the object's name,
its point prompts on that slice (positive green, negative red), the slice's axis and voxel index, and
orientation letters on its four edges. A legend names every segment in the colour that the 3D Slicer
``.seg.nrrd`` gives it (:mod:`medsam_monai.colours`). A 2D image (:func:`image_preview`) is one tile,
grey or in colour as read, without orientation letters (a raster knows no patient sides).

Writing is staged: :func:`staged_preview` writes the picture to a hidden temporary file beside the
target at once and moves it into place only when the caller's block (writing the label volume, say)
succeeds, so that a preview which cannot be written never leaves a label output replaced.
"""

from __future__ import annotations

import io
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .colours import RGB, segment_colours, to_rgb255
from .orientation import (
    DisplayLayout,
    box_ijk_to_display,
    display_affine,
    display_index_to_ijk,
    display_layout,
    parse_axis,
    to_display,
)

# The suffix decides the format, as for the label outputs.
PREVIEW_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
MIN_LONG_SIDE = 512  # px, the long side of a key slice at least (small volumes are upscaled)
MAX_LONG_SIDE = 1024  # px, the long side at most (large slices are not made larger than this)
TILES_PER_ROW = 4
FILL_ALPHA = 0.35  # mask fill over the grey image; the rim is drawn solid
RIM_PX = 2
BOX_PX = 2
JPEG_QUALITY = 92

_BACKGROUND = (16, 16, 16)
_TEXT = (235, 235, 235)
_SHADOW = (0, 0, 0)
# point prompts as SAM's demos draw them: positive green, negative red, with a dark outline
_POSITIVE = (40, 220, 60)
_NEGATIVE = (235, 40, 40)

# RAS world axis and sign -> the letter of the side it points to.
_SIDE_LETTERS = {(0, 1): "R", (0, -1): "L", (1, 1): "A", (1, -1): "P", (2, 1): "S", (2, -1): "I"}
_VOXEL_AXIS_NAMES = "ijk"

Box2D = tuple[int, int, int, int]  # (row0, col0, row1, col1), inclusive display pixels of a slice
ShownPoint = tuple[float, float, bool]  # (x column, y row, positive) in pixels of a slice


class PreviewError(ValueError):
    """The preview cannot be written; the message is one line naming the user's path."""


@dataclass(frozen=True)
class EdgeLetters:
    """The patient side each edge of a displayed slice faces (R/L, A/P, S/I)."""

    top: str
    bottom: str
    left: str
    right: str


@dataclass
class PreviewTile:
    """One key slice to show.

    ``image`` (rows, cols) grey or (rows, cols, 3) RGB uint8 and ``labels`` (rows, cols) int are in
    display orientation; ``pixel_mm`` is the (row, col) spacing; ``boxes`` maps a label to its
    inclusive (r0, c0, r1, c1); ``points`` are the point prompts on the slice; ``letters`` None
    draws no orientation letters.
    """

    image: np.ndarray
    labels: np.ndarray
    pixel_mm: tuple[float, float]
    title: str
    letters: EdgeLetters | None
    boxes: dict[int, Box2D] = field(default_factory=dict)
    points: list[ShownPoint] = field(default_factory=list)


@dataclass(frozen=True)
class ShownPrompt:
    """An object's prompt on the display slice a preview shows for it.

    ``box`` is ``(x0, y0, x1, y1)`` (columns, rows, inclusive) or None (an object of points alone);
    ``points`` its point prompts on that slice.
    """

    label: int
    slice: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[ShownPoint, ...] = ()


# --------------------------------------------------------------------------------------------
# Paths and formats
# --------------------------------------------------------------------------------------------


def preview_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format name the suffix of ``path`` asks for; PreviewError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in PREVIEW_FORMATS:
        kinds = ", ".join(PREVIEW_FORMATS)
        raise PreviewError(f"{path}: unsupported preview type {suffix or '(no suffix)'!r}; use one of {kinds}")
    return PREVIEW_FORMATS[suffix]


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _nearest_existing_folder(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (where missing folders would be created)."""
    current = folder.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_folder_writable(path: Path) -> None:
    """Refuse ``path`` unless a file can be created beside it (probed with a file created and removed)."""
    folder = _nearest_existing_folder(path.parent)
    if not folder.is_dir():
        raise PreviewError(f"{path}: cannot write the preview: {folder} is not a folder")
    if folder != path.parent.absolute():
        # The folders below would be created: the existing ancestor must let us create them.
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PreviewError(f"{path}: cannot write the preview: no permission to create folders in {folder}")
        return
    probe = folder / _hidden_name(path, "probe")
    try:
        with open(probe, "xb"):
            pass
    except OSError as err:
        raise PreviewError(f"{path}: cannot write the preview: {err.strerror or err}") from None
    probe.unlink(missing_ok=True)


def _hidden_name(path: Path, kind: str) -> str:
    """A hidden, unique name for a temporary file beside ``path``, short enough for any file system even
    when the user's own name is near the 255-byte limit."""
    return f".{path.name[:64]}.{secrets.token_hex(6)}.{kind}"


def check_preview_path(path: str | os.PathLike[str], protect: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Validate a preview path before any work: a known picture suffix, not a folder, not one of
    ``protect`` (the input image, the label output), in a folder where a file can be created."""
    out = Path(path)
    try:
        if out.is_dir():
            raise PreviewError(f"{out} is a folder; give a file name such as preview.png")
        preview_format(out)
        for other in protect:
            if _same_file(out, Path(other)):
                raise PreviewError(f"{out}: the preview would overwrite {other}; give it another name")
    except OSError as err:  # a name too long, say
        raise PreviewError(f"{out}: cannot write the preview: {err.strerror or err}") from None
    _check_folder_writable(out)
    return out


# --------------------------------------------------------------------------------------------
# Geometry of a tile
# --------------------------------------------------------------------------------------------


def edge_letters(affine: np.ndarray, layout: DisplayLayout) -> EdgeLetters:
    """The orientation letters of a display slice of a volume with ``affine`` shown by ``layout``.

    Derived from the display affine (display index -> RAS mm): the right edge faces where the column
    index grows, the bottom edge where the row index grows, each the world axis its direction is
    closest to. A radiological axial display gives top A, bottom P, left R, right L.
    """
    # The linear part of the display affine does not depend on the volume's size.
    matrix = display_affine(affine, (1, 1, 1), layout)[:3, :3]
    down, across = _closest_side(matrix[:, 1]), _closest_side(matrix[:, 2])
    return EdgeLetters(top=_opposite(down), bottom=down, left=_opposite(across), right=across)


def _closest_side(direction: np.ndarray) -> str:
    world = int(np.argmax(np.abs(direction)))
    return _SIDE_LETTERS[(world, 1 if direction[world] > 0 else -1)]


def _opposite(letter: str) -> str:
    return {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}[letter]


def tile_size(shape: tuple[int, int], pixel_mm: tuple[float, float]) -> tuple[int, int]:
    """(height, width) in px of a slice of ``shape`` (rows, cols) with ``pixel_mm`` (row, col) spacing.

    The physical aspect is kept; the finer spacing sets the scale unless that makes the long side
    shorter than :data:`MIN_LONG_SIDE` (upscale) or longer than :data:`MAX_LONG_SIDE` (downscale).
    """
    height_mm, width_mm = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    long_mm = max(height_mm, width_mm)
    native_long = long_mm / min(pixel_mm)
    long_px = min(max(native_long, MIN_LONG_SIDE), MAX_LONG_SIDE)
    mm_per_px = long_mm / long_px
    return max(1, round(height_mm / mm_per_px)), max(1, round(width_mm / mm_per_px))


def _nearest_indices(count_in: int, count_out: int) -> np.ndarray:
    """For each of ``count_out`` output pixels, the input pixel whose extent holds its centre."""
    return np.minimum(((np.arange(count_out) + 0.5) * count_in / count_out).astype(np.int64), count_in - 1)


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (rows, cols) labels to ``size`` (height, width): labels never blend."""
    return labels[np.ix_(_nearest_indices(labels.shape[0], size[0]), _nearest_indices(labels.shape[1], size[1]))]


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (rows, cols) or (rows, cols, 3) uint8 slice to ``size`` (height, width)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.BILINEAR))


def box_pixels(box: Box2D, shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) inclusive pixel rectangle that covers the voxels of ``box`` (r0, c0, r1, c1)
    of a slice of ``shape`` (rows, cols) shown at ``size`` (height, width): its outline runs along the
    outer edge of the box's voxels."""
    scale_y, scale_x = size[0] / shape[0], size[1] / shape[1]
    r0, c0, r1, c1 = box
    x0, y0 = math.floor(c0 * scale_x), math.floor(r0 * scale_y)
    x1, y1 = math.ceil((c1 + 1) * scale_x) - 1, math.ceil((r1 + 1) * scale_y) - 1
    return x0, y0, min(x1, size[1] - 1), min(y1, size[0] - 1)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _font(size: int):
    """Pillow's scalable default font at ``size`` px (Pillow >= 10.1), else its small bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # older Pillow, or built without FreeType
        return ImageFont.load_default()


def _rim(labels: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels of a non-zero label within ``width`` px of a pixel with another value."""
    rim = np.zeros(labels.shape, dtype=bool)
    for shift in range(1, width + 1):
        # Rows, then columns: pixels ``shift`` apart that differ mark both of them.
        differs = labels[shift:, :] != labels[:-shift, :]
        rim[shift:, :] |= differs
        rim[:-shift, :] |= differs
        differs = labels[:, shift:] != labels[:, :-shift]
        rim[:, shift:] |= differs
        rim[:, :-shift] |= differs
    return rim & (labels != 0)


def _overlay(image: np.ndarray, labels: np.ndarray, colours: Mapping[int, tuple[int, int, int]]) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 and (H, W) labels -> (H, W, 3) uint8: each mask filled translucent, its rim solid."""
    rgb = image.astype(np.float32) if image.ndim == 3 else np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
    rim = _rim(labels, RIM_PX)
    for value in np.unique(labels[labels > 0]):
        colour = np.asarray(colours.get(int(value), _TEXT), dtype=np.float32)
        where = labels == value
        rgb[where] = (1 - FILL_ALPHA) * rgb[where] + FILL_ALPHA * colour
        rgb[where & rim] = colour
    return rgb.round().clip(0, 255).astype(np.uint8)


def _text(draw, xy: tuple[float, float], text: str, font, fill, anchor: str = "la") -> None:
    """Text with a dark outline, legible on any background."""
    draw.text(xy, text, font=font, fill=fill, anchor=anchor, stroke_width=2, stroke_fill=_SHADOW)


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=2)
    return right - left, bottom - top


def render_tile(
    tile: PreviewTile, colours: Mapping[int, tuple[int, int, int]], names: Mapping[int, str], font_px: int
) -> np.ndarray:
    """The (H, W, 3) uint8 picture of one key slice, H x W = :func:`tile_size`: masks, boxes and names."""
    from PIL import Image, ImageDraw

    shape = tile.image.shape[:2]
    size = tile_size(shape, tile.pixel_mm)
    picture = _overlay(_resize_image(tile.image, size), _resize_labels(tile.labels, size), colours)
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_px)
    for label, box in tile.boxes.items():
        x0, y0, x1, y1 = box_pixels(box, shape, size)
        colour = colours.get(label, _TEXT)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=BOX_PX)
        _box_name(draw, names.get(label, f"Segment_{label}"), (x0, y0, x1, y1), size, font, colour)
    radius = max(4, font_px // 3)
    for x, y, positive in tile.points:
        cx, cy = point_pixel((x, y), shape, size)
        fill = _POSITIVE if positive else _NEGATIVE
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill, outline=_SHADOW, width=2)
    return np.asarray(canvas)


def point_pixel(point: tuple[float, float], shape: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Where a point ``(x, y)`` of a slice of ``shape`` (rows, cols) lies in the tile of ``size`` (height,
    width): the centre of its pixel (SAM reads a point as its pixel's centre, ``+ 0.5``)."""
    return (point[0] + 0.5) * size[1] / shape[1], (point[1] + 0.5) * size[0] / shape[0]


def _box_name(draw, name: str, rect: tuple[int, int, int, int], size: tuple[int, int], font, colour) -> None:
    """The object's name just above its box, or just inside it when the box touches the top; never on the box."""
    x0, y0, _, _ = rect
    # The ink of text drawn at (0, 0), outline included: glyphs start below the anchor and may reach left of it.
    left, top, right, bottom = draw.textbbox((0, 0), name, font=font, stroke_width=2)
    gap = BOX_PX + 2
    y = y0 - gap - bottom if y0 - gap - bottom + top >= 0 else y0 + BOX_PX + gap - top
    x = min(max(x0 - left, -left), max(size[1] - right, -left))
    _text(draw, (x, y), name, font, colour)


def _draw_edge_letters(draw, letters: EdgeLetters, rect: tuple[int, int, int, int], band: int, font) -> None:
    """The orientation letters centred in the bands around the slice at ``rect`` (x0, y0, x1, y1), outside
    the image so that they hide neither anatomy nor names."""
    x0, y0, x1, y1 = rect
    middle_x, middle_y = (x0 + x1) / 2, (y0 + y1) / 2
    _text(draw, (middle_x, y0 - band / 2), letters.top, font, _TEXT, anchor="mm")
    _text(draw, (middle_x, y1 + band / 2), letters.bottom, font, _TEXT, anchor="mm")
    _text(draw, (x0 - band / 2, middle_y), letters.left, font, _TEXT, anchor="mm")
    _text(draw, (x1 + band / 2, middle_y), letters.right, font, _TEXT, anchor="mm")


def render_preview(tiles: Sequence[PreviewTile], names: Mapping[int, str], colours: Mapping[int, RGB]):
    """The whole picture (a PIL RGB image): tiles in rows of :data:`TILES_PER_ROW`, each with its title
    above and its orientation letters around it, and a legend naming each segment of ``names`` in its colour."""
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("a preview needs at least one slice")
    colours255 = {value: to_rgb255(c) for value, c in colours.items()}
    font_px = _font_px(tiles)
    pictures = [render_tile(t, colours255, names, font_px) for t in tiles]
    pad, title_h, band = font_px // 2, font_px + font_px // 2, font_px + font_px // 2
    cell_h = title_h + band + max(p.shape[0] for p in pictures) + band
    cell_w = band + max(p.shape[1] for p in pictures) + band
    per_row = min(len(pictures), TILES_PER_ROW)
    rows = math.ceil(len(pictures) / per_row)
    width = per_row * cell_w + (per_row + 1) * pad
    legend = _legend_lines(names, colours255, font_px, width - 2 * pad)
    legend_h = len(legend) * (font_px + pad) + pad
    canvas = Image.new("RGB", (width, rows * (cell_h + pad) + pad + legend_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_px)
    for n, (tile, picture) in enumerate(zip(tiles, pictures)):
        x = pad + (n % per_row) * (cell_w + pad)
        y = pad + (n // per_row) * (cell_h + pad)
        _text(draw, (x, y), tile.title, font, _TEXT)
        left, top = x + band, y + title_h + band
        canvas.paste(Image.fromarray(picture), (left, top))
        rect = (left, top, left + picture.shape[1] - 1, top + picture.shape[0] - 1)
        if tile.letters is not None:
            _draw_edge_letters(draw, tile.letters, rect, band, font)
    _draw_legend(draw, legend, (pad, rows * (cell_h + pad) + pad), font_px, font)
    return canvas


def _font_px(tiles: Sequence[PreviewTile]) -> int:
    """One text size for the whole picture, in proportion to the tiles (20 px for a 512 px tile)."""
    long_side = max(max(tile_size(t.image.shape[:2], t.pixel_mm)) for t in tiles)
    return max(16, round(long_side / 26))


def _legend_lines(
    names: Mapping[int, str], colours: Mapping[int, tuple[int, int, int]], font_px: int, width: int
) -> list[list[tuple[str, tuple[int, int, int]]]]:
    """The legend's entries (name, colour) in label order, wrapped into lines no wider than ``width``."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font(font_px)
    lines: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    used = 0
    for value in sorted(colours):
        entry = (names.get(value, f"Segment_{value}"), colours[value])
        entry_w = font_px + font_px // 2 + _text_size(measure, entry[0], font)[0] + 2 * font_px
        if lines[-1] and used + entry_w > width:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += entry_w
    return lines


def _draw_legend(draw, lines, origin: tuple[int, int], font_px: int, font) -> None:
    """Each entry: a colour swatch, then the name written in the same colour."""
    x0, y = origin
    for line in lines:
        x = x0
        for name, colour in line:
            draw.rectangle((x, y + 2, x + font_px - 3, y + font_px - 1), fill=colour)
            _text(draw, (x + font_px + font_px // 2, y), name, font, colour)
            x += font_px + font_px // 2 + _text_size(draw, name, font)[0] + 2 * font_px
        y += font_px + font_px // 2


# --------------------------------------------------------------------------------------------
# From a volume
# --------------------------------------------------------------------------------------------


def preview_tiles(
    intensities: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    boxes: Sequence[tuple[int, tuple[int, int, int, int, int, int]]],
    key_slices: Sequence[int],
    axis: str,
) -> list[PreviewTile]:
    """One tile per distinct key slice of the objects.

    ``intensities`` (uint8) and ``labels`` are ``[i, j, k]`` arrays; ``boxes`` are (label, inclusive IJK
    box) pairs, ``key_slices`` their display slice indices along ``axis`` (in the same order).
    """
    layout = display_layout(affine, parse_axis(axis))
    image, shown = to_display(intensities, layout), to_display(labels, layout)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    pixel_mm = (float(spacing[layout.permutation[1]]), float(spacing[layout.permutation[2]]))
    letters = edge_letters(affine, layout)
    tiles: dict[int, PreviewTile] = {}
    for (label, box), key in zip(boxes, key_slices):
        if key not in tiles:
            title = _slice_title(key, intensities.shape, layout)
            tiles[key] = PreviewTile(np.asarray(image[key]), np.asarray(shown[key]), pixel_mm, title, letters)
        _, r0, c0, _, r1, c1 = box_ijk_to_display(box, intensities.shape, layout)
        tiles[key].boxes[int(label)] = (r0, c0, r1, c1)
    return list(tiles.values())


def _slice_title(key: int, shape_ijk: Sequence[int], layout: DisplayLayout) -> str:
    """E.g. ``axial slice k = 20 of 0-39``: the file's own voxel index, as ITK-SNAP and 3D Slicer show it."""
    voxel_axis = layout.permutation[0]
    index = display_index_to_ijk((key, 0, 0), shape_ijk, layout)[voxel_axis]
    return f"{layout.axis} slice {_VOXEL_AXIS_NAMES[voxel_axis]} = {index} of 0-{int(shape_ijk[voxel_axis]) - 1}"


def prompt_tiles(
    intensities: np.ndarray, labels: np.ndarray, affine: np.ndarray, axis: str, prompts: Sequence[ShownPrompt]
) -> list[PreviewTile]:
    """One tile per distinct display slice of ``prompts`` (their boxes and points drawn on it).

    ``intensities`` (uint8) and ``labels`` are ``[i, j, k]`` arrays; the prompts are in the display
    frame of ``axis`` (slice, columns and rows as the network saw them).
    """
    layout = display_layout(affine, parse_axis(axis))
    image, shown = to_display(intensities, layout), to_display(labels, layout)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    pixel_mm = (float(spacing[layout.permutation[1]]), float(spacing[layout.permutation[2]]))
    letters = edge_letters(affine, layout)
    tiles: dict[int, PreviewTile] = {}
    for prompt in prompts:
        if prompt.slice not in tiles:
            title = _slice_title(prompt.slice, intensities.shape, layout)
            tiles[prompt.slice] = PreviewTile(
                np.asarray(image[prompt.slice]), np.asarray(shown[prompt.slice]), pixel_mm, title, letters
            )
        _add_prompt(tiles[prompt.slice], prompt)
    return list(tiles.values())


def _add_prompt(tile: PreviewTile, prompt: ShownPrompt) -> None:
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        tile.boxes[int(prompt.label)] = (math.floor(y0), math.floor(x0), math.floor(y1), math.floor(x1))
    tile.points.extend(prompt.points)


def prompts_preview(
    intensities: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    axis: str,
    prompts: Sequence[ShownPrompt],
    segment_names: Mapping[int, str],
):
    """The preview picture (PIL RGB image) of a segmented volume from display-frame prompts (boxes, points)."""
    return _picture(prompt_tiles(intensities, labels, affine, axis, prompts), labels, segment_names)


def image_preview(
    image: np.ndarray,
    labels: np.ndarray,
    prompts: Sequence[ShownPrompt],
    segment_names: Mapping[int, str],
    pixel_mm: tuple[float, float] | None = None,
    title: str = "",
):
    """The preview picture (PIL RGB image) of a segmented 2D image: one tile, as read (rows x columns).

    ``image`` (H, W) or (H, W, 3) uint8, ``labels`` (H, W); ``prompts`` on slice 0 in pixel
    coordinates; ``pixel_mm`` the (row, column) spacing (square pixels when unknown).
    """
    h, w = image.shape[:2]
    tile = PreviewTile(np.asarray(image), np.asarray(labels), pixel_mm or (1.0, 1.0), title or f"{w} x {h} px", None)
    for prompt in prompts:
        _add_prompt(tile, prompt)
    return _picture([tile], labels, segment_names)


def _picture(tiles: Sequence[PreviewTile], labels: np.ndarray, segment_names: Mapping[int, str]):
    colours = segment_colours(labels, segment_names)
    names = {value: segment_names.get(value, f"Segment_{value}") for value in colours}
    return render_preview(tiles, names, colours)


def volume_preview(
    intensities: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    boxes: Sequence[tuple[int, tuple[int, int, int, int, int, int]]],
    key_slices: Sequence[int],
    axis: str,
    segment_names: Mapping[int, str],
):
    """The preview picture (PIL RGB image) of a segmented volume, in the ``.seg.nrrd``'s segment colours."""
    tiles = preview_tiles(intensities, labels, affine, boxes, key_slices, axis)
    colours = segment_colours(labels, segment_names)
    names = {value: segment_names.get(value, f"Segment_{value}") for value in colours}
    return render_preview(tiles, names, colours)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def encode_preview(picture, image_format: str) -> bytes:
    """The picture's file bytes in ``image_format`` (a value of :data:`PREVIEW_FORMATS`)."""
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    picture.convert("RGB").save(buffer, format=image_format, **options)
    return buffer.getvalue()


@contextmanager
def staged_preview(path: str | os.PathLike[str], picture) -> Iterator[Path]:
    """Write ``picture`` now to a hidden temporary file beside ``path``; move it over ``path`` when the
    ``with`` block succeeds, remove it when the block fails (``path`` is then left as it was).

    The temporary file is created like any new file (mode 0666 less the umask, 0644 under umask 022),
    as the label writers do; ``tempfile.mkstemp`` would make it 0600.
    """
    out = Path(path)
    data = encode_preview(picture, preview_format(out))
    temporary = out.with_name(_hidden_name(out, "tmp"))
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise PreviewError(f"{out}: cannot write the preview: {err.strerror or err}") from None
        yield out
        try:
            os.replace(temporary, out)
        except OSError as err:
            raise PreviewError(f"{out}: cannot write the preview: {err.strerror or err}") from None
    finally:
        temporary.unlink(missing_ok=True)


def save_preview(path: str | os.PathLike[str], picture) -> Path:
    """Write ``picture`` to ``path`` atomically in the format its suffix names."""
    with staged_preview(path, picture) as out:
        return out
