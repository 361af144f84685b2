"""The main jobs: a volume and voxel (or RAS) prompts -> a 3D label volume on the input's own grid
(:func:`segment_volume`), and a 2D image and pixel prompts -> a 2D label image (:func:`segment_image`).

Volumes: the volume is windowed (CT) or normalised (MR), reoriented by axis permutation and flips so
that each slice along the chosen axis is in radiological display orientation, segmented by MedSAM's 3D
propagation, and the labels are mapped back to the input's voxel order.

2D images follow ``MedSAM_Inference.py``: MedSAM's 2D intensity rule (``pre_grey_rgb.py``: a grey
image repeated to 3 channels, one above 8 bits min-maxed to [0, 255], RGB kept;
:func:`image_intensities`), then the image as a one-slice volume through the predictor (built with
``uint8_after_resize=True`` for MedSAM's pipeline: the resized image truncated to uint8 before the
min-max, as the script does), boxes scaled x * 1024 / W, y * 1024 / H, sigmoid, one bilinear resize,
> 0.5. With a SAM checkpoint (``preprocessing="sam"``) SAM's own pipeline runs instead.

Prompts, in both: each box is one object (labels 1, 2, ... in order). Points ``(1 positive, 0
negative)`` join a box by :func:`assign_points`: with one box every point joins it; with several, the
box whose slices hold the point's slice and, where several do, the one the point lies inside. Without
any box, the points make one object (label 1) predicted on the slices they lie on only: a 2D prompt per
slice, no propagation (:class:`PointsOnlyPrompt`). A mask prompt is a label image on the input's grid:
the mask of each object's value becomes that object's dense prompt (SAM's low-res mask input) on every
slice where it has pixels, to refine an earlier result. With ``multimask`` each prediction gets SAM's
three candidates and keeps the one of highest predicted IoU; the IoUs are returned as scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

from .io import Volume
from .orientation import (
    DisplayLayout,
    box_ijk_to_display,
    display_layout,
    from_display,
    ijk_to_display_index,
    nearest_voxel,
    parse_axis,
    slice_to_voxel,
    to_display,
)
from .predictor import CancelCheck, MedSAMPredictor, ObjectPrompt, ProgressCallback
from .propagation import SlicePoints, check_cancel, key_slice, propagate
from .transforms import IntensityForModality, check_same_grid, mask_prompt_logits, medsam_2d_intensity

# one home of voxel boxes, below the predictor; ras_box_to_voxel_box is re-exported for the faces
from .transforms.boxes import VoxelBox, check_voxel_box, label_values_of, ras_box_to_voxel_box  # noqa: F401

if TYPE_CHECKING:
    from .images import Image2D

BoxLike = VoxelBox | Sequence[float]
Box4 = tuple[float, float, float, float]  # (x0, y0, x1, y1) pixel columns and rows, inclusive
# a box of the display frame: (x0, y0, z0, x1, y1, z1), x column, y row, z slice, inclusive
DisplayBox = tuple[float, float, int, float, float, int]


@dataclass(frozen=True)
class PointsOnlyPrompt:
    """An object given by points (and mask prompts) on some display slices and no box: each of those
    slices is predicted on its own from its points, and nothing propagates (a box names a slice range;
    points name only their own slices).

    ``points`` maps a slice index to ``((x, y), ...), (1 positive / 0 negative, ...)``, as
    :class:`~medsam_monai.propagation.ObjectPrompt`'s; ``mask_prompts`` a slice index to an (H, W) bool mask.
    """

    label: int
    points: Mapping[int, SlicePoints]
    mask_prompts: Mapping[int, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def key_slice(self) -> int:
        """The first slice with points (what a preview shows first)."""
        return min(self.points)


Prompt = ObjectPrompt | PointsOnlyPrompt  # what build_prompts makes and segment_prompts takes


def as_voxel_boxes(boxes: BoxLike | Sequence[BoxLike] | None) -> list[VoxelBox]:
    """The boxes as :class:`VoxelBox` objects: each item a VoxelBox (kept as it is) or six numbers
    ``(i0, j0, k0, i1, j1, k1)`` (a tuple, list or array), which gets label n for the n-th item
    (1, 2, ... in order). One box alone, not in a list, is taken too; None is no box. One-line
    ValueError otherwise.
    """
    if boxes is None:
        return []
    if isinstance(boxes, VoxelBox) or _is_numbers(boxes, 6):
        boxes = [boxes]  # type: ignore[list-item]
    out = []
    for n, item in enumerate(boxes, start=1):  # type: ignore[arg-type]
        if isinstance(item, VoxelBox):
            out.append(item)
        elif _is_numbers(item, 6):
            out.append(VoxelBox(tuple(np.asarray(item).tolist()), label=n))  # Python numbers, as VoxelBox holds
        else:
            raise ValueError(f"box {n} must be a VoxelBox or 6 numbers (i0, j0, k0, i1, j1, k1), got {item!r}")
    return out


def _is_numbers(item: object, count: int) -> bool:
    if isinstance(item, (str, bytes)) or not isinstance(item, (Sequence, np.ndarray)):
        return False
    values = list(item)  # type: ignore[call-overload]
    return len(values) == count and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)


def normalized_volume(volume: Volume, modality: str = "ct", window: object = None) -> np.ndarray:
    """The volume's intensities as MedSAM was trained on them (uint8, same voxel order)."""
    return np.asarray(IntensityForModality(modality=modality, window=window)(volume.array))


def image_intensities(
    image: Image2D | np.ndarray, modality: str | None = None, window: object = None, percentile_clip: bool = False
) -> np.ndarray:
    """A 2D image's intensities as the network takes them: uint8 (H, W, 3).

    By default MedSAM's 2D rule (:func:`~medsam_monai.transforms.medsam_2d_intensity`, optionally with
    its 0.5-99.5 percentile cut-off). A grey image with an explicit ``modality`` (``ct``, with
    ``window``, default abdomen; or ``mr``) gets the volume rule of that modality instead, as a CT
    slice of MedSAM's 3D training data did; a CT window alone implies ``ct``.
    """
    array = _image_array(image)
    if modality is None and window is None:
        return medsam_2d_intensity(array, percentile_clip)
    if percentile_clip:
        raise ValueError("the percentile cut-off is MedSAM's 2D rule; a modality brings its own normalisation")
    if array.ndim == 3:
        raise ValueError("a modality's normalisation (CT window, MR percentiles) applies to grey images; this one is RGB")
    grey = np.asarray(IntensityForModality(modality or "ct", window)(array))
    return medsam_2d_intensity(grey)


def _image_array(image: Image2D | np.ndarray) -> np.ndarray:
    """The pixels of an :class:`~medsam_monai.images.Image2D` or an array: (H, W) or (H, W, 3)."""
    array = np.asarray(getattr(image, "array", image))
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)) or 0 in array.shape:
        raise ValueError(f"a 2D image is (H, W) grey or (H, W, 3) RGB, got shape {array.shape}")
    return array


# --------------------------------------------------------------------------------------------
# Prompts: checks, and which object each point joins
# --------------------------------------------------------------------------------------------


def check_pixel_box(box: Sequence[float], shape_hw: Sequence[int]) -> Box4:
    """A 2D box ``(x0, y0, x1, y1)`` (x column, y row, inclusive) checked against an (H, W) image."""
    if len(box) != 4:
        raise ValueError(f"a 2D box has 4 numbers X0,Y0,X1,Y1, got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite((x0, y0, x1, y1))):
        raise ValueError(f"box {_shown(box)} has a non-finite coordinate")
    if x0 > x1 or y0 > y1:
        raise ValueError(f"box {_shown(box)} is reversed: give X0,Y0 (the upper left corner) first")
    h, w = (int(v) for v in shape_hw)
    if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
        raise ValueError(f"box {_shown(box)} is outside the image (x 0..{w - 1}, y 0..{h - 1})")
    return x0, y0, x1, y1


def check_pixel_point(point: Sequence[float], shape_hw: Sequence[int]) -> tuple[float, float]:
    """A 2D point ``(x, y)`` (x column, y row) checked against an (H, W) image."""
    if len(point) != 2:
        raise ValueError(f"a point on a 2D image has 2 numbers X,Y, got {len(point)}")
    x, y = (float(v) for v in point)
    h, w = (int(v) for v in shape_hw)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"point {_shown(point)} has a non-finite coordinate")
    if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
        raise ValueError(f"point {_shown(point)} is outside the image (x 0..{w - 1}, y 0..{h - 1})")
    return x, y


def check_voxel_point(point: Sequence[float], shape: Sequence[int]) -> tuple[int, int, int]:
    """A voxel point ``(i, j, k)`` (whole indices) checked against a volume shape."""
    if len(point) != 3:
        raise ValueError(f"a point in a volume has 3 voxel indices I,J,K, got {len(point)}")
    if not all(np.isfinite(v) and float(v) == int(v) for v in point):
        raise ValueError(f"point {_shown(point)}: voxel indices must be whole numbers")
    ijk = tuple(int(v) for v in point)
    if any(not 0 <= v < int(n) for v, n in zip(ijk, shape)):
        raise ValueError(f"point {_shown(point)} is outside the image (voxel indices 0..{tuple(int(n) - 1 for n in shape[:3])})")
    return ijk  # type: ignore[return-value]


def ras_point_to_voxel(point: Sequence[float], volume: Volume) -> tuple[int, int, int]:
    """The voxel whose centre is nearest to a point ``(x, y, z)`` in RAS mm; ValueError when it lies outside the image."""
    if len(point) != 3 or not all(np.isfinite(point)):
        raise ValueError(f"an RAS point has 3 finite numbers X,Y,Z (mm), got {_shown(point)}")
    nearest = nearest_voxel(point, volume.affine, volume.shape)
    if nearest is None:
        raise ValueError(f"RAS point {_shown(point)} mm is outside the image")
    return nearest


def _shown(values: Sequence[float]) -> str:
    """``(10, 20.5, 3)``: numbers as a user typed them (no ``.0`` on whole ones)."""
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def assign_points(
    boxes: Sequence[DisplayBox], points: Sequence[tuple[float, float, int]], names: Sequence[str]
) -> list[int | None]:
    """For each point ``(x, y, z)`` of the display frame, the index of the box it joins (None: there is no box).

    With one box every point joins it (the point must lie on one of its slices); with several, the
    box whose slices hold the point's slice, and where several do, the one the point lies inside:
    exactly one, or a ValueError naming the point (``names[n]``, in the user's coordinates).
    """
    chosen: list[int | None] = []
    for (x, y, z), name in zip(points, names):
        if not boxes:
            chosen.append(None)
            continue
        on_slice = [n for n, b in enumerate(boxes) if b[2] <= z <= b[5]]
        if not on_slice:
            raise ValueError(f"{name} lies on none of the boxes' slices; a point joins the box on its slice")
        candidates = on_slice
        if len(on_slice) > 1:
            candidates = [n for n in on_slice if boxes[n][0] <= x <= boxes[n][3] and boxes[n][1] <= y <= boxes[n][4]]
        if len(candidates) != 1:
            numbers = " and ".join(str(n + 1) for n in (candidates or on_slice))
            where = f"inside boxes {numbers}" if candidates else f"inside none of boxes {numbers}"
            raise ValueError(f"{name} lies {where}: with several boxes on its slice, a point must lie inside exactly one")
        chosen.append(candidates[0])
    return chosen


def _display_mask_values(mask: np.ndarray, values: Sequence[int], what: str) -> list[int]:
    """``values`` checked to be labels of the (display) label array ``mask``."""
    present = label_values_of(mask)
    missing = [v for v in values if v not in present]
    if missing:
        held = ", ".join(map(str, present)) or "no label at all"
        raise ValueError(f"{what} holds no label {missing[0]} (it holds {held})")
    return list(values)


def build_prompts(
    shape: Sequence[int],
    boxes: Sequence[tuple[int, DisplayBox]],
    points: Sequence[tuple[float, float, int]] = (),
    point_labels: Sequence[int] | None = None,
    point_names: Sequence[str] | None = None,
    mask_prompt: np.ndarray | None = None,
    mask_values: Sequence[int] | None = None,
    mask_name: str = "the mask prompt",
) -> list[Prompt]:
    """The objects to segment in an (S, H, W) display volume, all in the display frame.

    Args:
        shape: (S, H, W) of the display volume (S = 1 for a 2D image).
        boxes: ``(label, (x0, y0, z0, x1, y1, z1))`` per object, checked already.
        points: ``(x, y, z)`` per point, checked already; joined to boxes by :func:`assign_points`.
        point_labels: 1 positive / 0 negative per point (default all positive).
        point_names: each point as the user gave it, for error messages.
        mask_prompt: (S, H, W) integer labels on the display grid; the mask of each object's value
            (``mask_values``, one per object, default its label) becomes its dense prompt on every
            slice of the object where it has pixels (an empty slice would prompt "nothing here").
        mask_name: what error messages call the mask prompt (its file, say).
    """
    flags = [1] * len(points) if point_labels is None else [int(v) for v in point_labels]
    if len(flags) != len(points):
        raise ValueError(f"{len(points)} points but {len(flags)} point labels")
    names = list(point_names) if point_names is not None else [f"point {_shown(p)}" for p in points]
    if not boxes and not points:
        raise ValueError("give at least one box or point")
    if not boxes and not any(flags):
        raise ValueError("negative points alone select nothing: add a positive point or a box")
    owners = assign_points([b for _, b in boxes], points, names)
    labels = [label for label, _ in boxes] or [1]
    if mask_values is not None and len(mask_values) != len(labels):
        raise ValueError(f"{len(mask_values)} mask values for {len(labels)} objects")
    values = None
    if mask_prompt is not None:
        if tuple(mask_prompt.shape) != tuple(shape[:3]):
            raise ValueError(f"{mask_name} has shape {tuple(mask_prompt.shape)}, not the image's {tuple(shape[:3])}")
        values = _display_mask_values(mask_prompt, list(mask_values or labels), mask_name)
    per_object: list[dict[int, tuple[list, list]]] = [{} for _ in labels]
    for (x, y, z), flag, owner in zip(points, flags, owners):
        coords, given = per_object[owner or 0].setdefault(int(z), ([], []))
        coords.append((float(x), float(y)))
        given.append(flag)

    def masks_on(n: int, slices: Sequence[int]) -> dict[int, np.ndarray]:
        if values is None:
            return {}
        mask = mask_prompt == values[n]  # type: ignore[operator]
        return {z: mask[z] for z in slices if mask[z].any()}

    if not boxes:
        for (_, _, z), name in zip(points, names):
            if not any(per_object[0][int(z)][1]):  # that slice would be predicted from background alone
                raise ValueError(f"{name} has no positive point on its slice: without a box, each slice needs one")
        points_by_slice = {z: (tuple(coords), tuple(given)) for z, (coords, given) in per_object[0].items()}
        return [PointsOnlyPrompt(1, points_by_slice, masks_on(0, sorted(points_by_slice)))]
    return [
        ObjectPrompt(box, label=label, points=per_object[n], mask_prompts=masks_on(n, range(int(box[2]), int(box[5]) + 1)))
        for n, (label, box) in enumerate(boxes)
    ]


# --------------------------------------------------------------------------------------------
# Running the prompts
# --------------------------------------------------------------------------------------------


def segment_prompts(
    predictor: MedSAMPredictor,
    display: np.ndarray,
    prompts: Sequence[Prompt],
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    multimask: bool = False,
    scores: dict[int, dict[int, np.ndarray]] | None = None,
) -> np.ndarray:
    """Segment prompts of :func:`build_prompts` in an (S, H, W) or (S, H, W, 3) display volume.

    Boxed objects go through MedSAM's propagation (:func:`~medsam_monai.propagation.propagate`);
    points-only ones through one 2D prediction per slice. ``scores``, if given, is filled with
    ``{label: {slice: predicted IoUs (M,)}}`` of every predicted slice (M = 3 with ``multimask``).

    Returns:
        (S, H, W) labels (uint8, or uint16 for labels above 255).
    """
    boxed = [p for p in prompts if isinstance(p, ObjectPrompt)]
    loose = [p for p in prompts if isinstance(p, PointsOnlyPrompt)]
    if boxed and loose:
        raise ValueError("objects with boxes and objects of points alone are segmented separately")
    if loose:
        return _segment_points_only(predictor, display, loose, progress, cancel, multimask, scores)
    if not multimask and scores is None:
        # the predictor's own entry point, which a subclass (a test stub, a gated server predictor) may wrap
        return predictor.segment_3d(display, boxed, progress=progress, cancel=cancel)
    return propagate(predictor, display, boxed, progress=progress, cancel=cancel, multimask_output=multimask, scores=scores)


def _segment_points_only(
    predictor: MedSAMPredictor,
    display: np.ndarray,
    prompts: Sequence[PointsOnlyPrompt],
    progress: ProgressCallback | None,
    cancel: CancelCheck | None,
    multimask: bool,
    scores: dict[int, dict[int, np.ndarray]] | None,
) -> np.ndarray:
    """Each prompt's slices predicted from their points alone; overlaps go to the more probable object."""
    shape_hw = (int(display.shape[1]), int(display.shape[2]))
    dtype = np.uint8 if max(p.label for p in prompts) < 256 else np.uint16
    labels = np.zeros(display.shape[:3], dtype=dtype)
    written = np.zeros(display.shape[:3], dtype=np.float32)
    total = sum(len(p.points) for p in prompts)
    done = 0
    for prompt in prompts:
        slices = sorted(prompt.points)
        for z, embedding in zip(slices, predictor.slice_embeddings(display, slices, cancel=cancel)):
            check_cancel(cancel)
            coords, flags = prompt.points[z]
            mask = prompt.mask_prompts.get(z)
            mask_input = None if mask is None else mask_prompt_logits(mask, predictor.preprocessing, predictor.image_size)
            prediction = predictor.predict_from_embedding(
                embedding, shape_hw, points=coords, point_labels=flags, mask_input=mask_input, multimask_output=multimask
            )
            best = int(np.argmax(prediction.iou))
            wins = prediction.masks[best] & (prediction.probabilities[best] > written[z])
            labels[z][wins] = prompt.label
            written[z][wins] = prediction.probabilities[best][wins]
            if scores is not None:
                scores.setdefault(prompt.label, {})[z] = prediction.iou
            done += 1
            if progress is not None:
                progress(done, total)
    return labels


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


def volume_prompts(
    volume: Volume,
    boxes: BoxLike | Sequence[BoxLike] | None,
    axis: str = "axial",
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    mask_prompt: Volume | np.ndarray | None = None,
    mask_values: Sequence[int] | None = None,
    point_names: Sequence[str] | None = None,
    mask_name: str = "the mask prompt",
) -> list[Prompt]:
    """The display-frame prompts (:func:`build_prompts`) of voxel boxes, voxel points ``(i, j, k)``
    and a mask prompt (a label volume on ``volume``'s grid) for slicing along ``axis``; every input
    checked (one-line ValueError), before any model work."""
    layout = display_layout(volume.affine, parse_axis(axis))
    boxed = []
    for item in as_voxel_boxes(boxes):
        s0, r0, c0, s1, r1, c1 = box_ijk_to_display(check_voxel_box(item.box, volume.shape), volume.shape, layout)
        boxed.append((item.label, (c0, r0, s0, c1, r1, s1)))
    shown = []
    for point in points or []:
        s, r, c = ijk_to_display_index(check_voxel_point(point, volume.shape), volume.shape, layout)
        shown.append((float(c), float(r), s))
    names = point_names if point_names is not None else [f"point {_shown(p)}" for p in points or []]
    display_mask = None
    if mask_prompt is not None:
        display_mask = to_display(check_mask_grid(mask_prompt, volume, mask_name), layout)
    return build_prompts(display_shape(volume, layout), boxed, shown, point_labels, names, display_mask, mask_values, mask_name)


def display_shape(volume: Volume, layout: DisplayLayout) -> tuple[int, int, int]:
    return tuple(int(volume.shape[v]) for v in layout.permutation)  # type: ignore[return-value]


def check_mask_grid(mask: Volume | np.ndarray, volume: Volume, what: str = "the mask prompt") -> np.ndarray:
    """The label array ``[i, j, k]`` of ``mask`` when it lies on ``volume``'s grid (same shape, and for a
    :class:`~medsam_monai.io.Volume` the same voxel-to-RAS affine: :func:`~medsam_monai.transforms.check_same_grid`)."""
    array = np.asarray(getattr(mask, "array", mask))
    if tuple(array.shape) != tuple(volume.shape):
        raise ValueError(f"{what} is on another grid: {_dims(array.shape)} voxels, the image {_dims(volume.shape)}")
    if isinstance(mask, Volume):
        check_same_grid(mask, volume, name=what)  # the one grid rule of evaluation and training
    return array


def _dims(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def segment_volume(
    predictor: MedSAMPredictor,
    volume: Volume,
    boxes: BoxLike | Sequence[BoxLike] | None,
    axis: str = "axial",
    modality: str = "ct",
    window: object = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensities: np.ndarray | None = None,
    *,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    mask_prompt: Volume | np.ndarray | None = None,
    mask_values: Sequence[int] | None = None,
    multimask: bool = False,
    scores: dict[int, dict[int, np.ndarray]] | None = None,
) -> np.ndarray:
    """Segment every box in 3D along ``axis`` (and objects of points alone on their slices).

    Each box's extent along the slicing axis is the slice range (one slice when it is zero);
    its in-plane extent is the box on the key slice. A box is a :class:`VoxelBox` or six numbers
    ``(i0, j0, k0, i1, j1, k1)``, inclusive voxel indices, labelled 1, 2, ... in order (see
    :func:`as_voxel_boxes`). ``intensities`` is the output of
    :func:`normalized_volume` for the same volume, modality and window when the caller already
    has it (a preview needs it too); otherwise it is computed here.

    Args:
        points: voxel points ``(i, j, k)``; each joins the prompt of its slice of the box it
            belongs to (the module doc's rule), or, with no box, makes an object on its slice only.
        point_labels: 1 positive / 0 negative per point (default all positive).
        mask_prompt: a label volume ``[i, j, k]`` on ``volume``'s grid (a :class:`Volume` or an array):
            the mask of each object's value (``mask_values``, default its label) is its dense prompt.
        multimask: SAM's three candidates per slice, the one of highest predicted IoU kept.
        scores: filled with ``{label: {display slice: predicted IoUs (M,)}}`` when given.

    Returns:
        Labels ``[i, j, k]`` on the input's grid (uint8, or uint16 for labels above 255).
    """
    prompts = volume_prompts(volume, boxes, axis, points, point_labels, mask_prompt, mask_values)
    return segment_volume_prompts(
        predictor, volume, prompts, axis, modality, window, progress, cancel, intensities, multimask, scores
    )


def segment_volume_prompts(
    predictor: MedSAMPredictor,
    volume: Volume,
    prompts: Sequence[Prompt],
    axis: str = "axial",
    modality: str = "ct",
    window: object = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensities: np.ndarray | None = None,
    multimask: bool = False,
    scores: dict[int, dict[int, np.ndarray]] | None = None,
) -> np.ndarray:
    """:func:`segment_volume` for prompts already built by :func:`volume_prompts` (a face that shows them
    in a preview builds them once). Returns labels ``[i, j, k]`` on the input's grid."""
    if intensities is None:
        intensities = normalized_volume(volume, modality, window)
    elif intensities.shape != volume.shape or intensities.dtype != np.uint8:
        raise ValueError(
            f"intensities must be uint8 of the volume's shape {volume.shape}, got {intensities.dtype} {intensities.shape}"
        )
    layout = display_layout(volume.affine, parse_axis(axis))
    display = np.ascontiguousarray(to_display(intensities, layout))
    labels = segment_prompts(predictor, display, prompts, progress, cancel, multimask, scores)
    return np.ascontiguousarray(from_display(labels, layout))


def slice_name(volume: Volume, axis: str, display_slice: int) -> str:
    """A display slice as the file's own voxel index along the slicing axis, e.g. ``k = 20``."""
    layout = display_layout(volume.affine, parse_axis(axis))
    return f"{'ijk'[layout.permutation[0]]} = {slice_to_voxel(display_slice, volume.shape, layout)}"


def dice(truth: np.ndarray, found: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(truth.sum() + found.sum())
    return 1.0 if total == 0 else 2.0 * float((truth & found).sum()) / total


def key_slices_ijk(boxes: BoxLike | Sequence[BoxLike], volume: Volume, axis: str) -> list[int]:
    """The display slice index of each box's key slice (for previews)."""
    layout = display_layout(volume.affine, parse_axis(axis))
    keys = []
    for item in as_voxel_boxes(boxes):
        s0, _, _, s1, _, _ = box_ijk_to_display(check_voxel_box(item.box, volume.shape), volume.shape, layout)
        keys.append(key_slice(s0, s1))
    return keys


# --------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------


def image_prompts(
    shape_hw: Sequence[int],
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    mask_prompt: np.ndarray | None = None,
    mask_values: Sequence[int] | None = None,
    point_names: Sequence[str] | None = None,
    mask_name: str = "the mask prompt",
) -> list[Prompt]:
    """The prompts (:func:`build_prompts`, slice 0) of pixel boxes ``(x0, y0, x1, y1)`` (labels 1, 2, ...),
    pixel points ``(x, y)`` and a mask prompt, an (H, W) label image, on an (H, W) image; all checked."""
    h, w = (int(v) for v in shape_hw)
    boxed = []
    for n, box in enumerate(boxes, start=1):
        x0, y0, x1, y1 = check_pixel_box(box, (h, w))
        boxed.append((n, (x0, y0, 0, x1, y1, 0)))
    shown = [(*check_pixel_point(p, (h, w)), 0) for p in points or []]
    names = point_names if point_names is not None else [f"point {_shown(p)}" for p in points or []]
    display_mask = None
    if mask_prompt is not None:
        array = np.asarray(getattr(mask_prompt, "array", mask_prompt))
        if array.ndim != 2:
            raise ValueError(f"{mask_name} must be a label image (H, W), got shape {array.shape}")
        if array.shape != (h, w):
            raise ValueError(f"{mask_name} is on another grid: {_dims(array.shape)} pixels, the image {_dims((h, w))}")
        display_mask = array[None]
    return build_prompts((1, h, w), boxed, shown, point_labels, names, display_mask, mask_values, mask_name)


def segment_image(
    predictor: MedSAMPredictor,
    image: Image2D | np.ndarray,
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    mask_prompt: np.ndarray | None = None,
    multimask: bool = False,
    percentile_clip: bool = False,
    *,
    mask_values: Sequence[int] | None = None,
    modality: str | None = None,
    window: object = None,
    intensities: np.ndarray | None = None,
    prompts: Sequence[Prompt] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Segment a 2D image as ``MedSAM_Inference.py`` does (with MedSAM's pipeline; SAM's with a SAM predictor).

    For MedSAM's exact 2D steps the predictor is built with ``uint8_after_resize=True``
    (:func:`medsam_monai.models.load_predictor`).

    Args:
        image: an :class:`~medsam_monai.images.Image2D` or its array, (H, W) grey or (H, W, 3) RGB,
            values as read (any range: :func:`image_intensities` makes them uint8).
        boxes: ``(x0, y0, x1, y1)`` per object in pixel columns (x) and rows (y), inclusive; labels 1, 2, ...
        points: ``(x, y)`` per point, joined to the boxes as in the module doc; without a box they
            make one object (label 1).
        point_labels: 1 positive / 0 negative per point (default all positive).
        mask_prompt: an (H, W) label image; the mask of each object's value (``mask_values``, default
            its label) is its dense prompt.
        multimask: SAM's three candidates, the one of highest predicted IoU kept.
        percentile_clip: MedSAM's 0.5-99.5 percentile cut-off of its 2D rule.
        modality, window: a grey image's modality rule instead of MedSAM's 2D rule (:func:`image_intensities`).
        intensities: the uint8 (H, W, 3) output of :func:`image_intensities` when the caller has it.
        prompts: the output of :func:`image_prompts` when the caller has it (then boxes, points and
            the mask prompt are not read again).

    Returns:
        Labels (H, W) (uint8, or uint16 above 255; 0 background, 1..N) and the scores
        ``{label: predicted IoUs (M,)}`` (M = 3 with ``multimask``, else 1).
    """
    array = _image_array(image)
    if intensities is None:
        intensities = image_intensities(array, modality, window, percentile_clip)
    elif intensities.shape != (*array.shape[:2], 3) or intensities.dtype != np.uint8:
        raise ValueError(f"intensities must be uint8 (H, W, 3) of the image, got {intensities.dtype} {intensities.shape}")
    if prompts is None:
        prompts = image_prompts(array.shape[:2], boxes, points, point_labels, mask_prompt, mask_values)
    # the 3-channel image, as MedSAM resizes it: its uint8 truncation after the resize must see the same values
    scores: dict[int, dict[int, np.ndarray]] = {}
    labels = segment_prompts(predictor, intensities[None], prompts, progress, cancel, multimask, scores)
    return labels[0], {label: by_slice[0] for label, by_slice in scores.items()}


def label_image_as_volume(labels: np.ndarray, spacing: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """A 2D label image (H, W) as a one-slice volume ``[i, j, k]`` (W, H, 1) and its affine, for the volume
    formats (NIfTI, NRRD, ``.seg.nrrd``): i the column, j the row, with ITK's convention for a 2D raster
    (columns toward the patient's left, rows toward posterior: LPS identity), so that 3D Slicer shows it
    over the image read from the same file. ``spacing`` (row, column) mm, 1 mm where unknown; 1 mm thick."""
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    affine = np.diag([-float(col_mm), -float(row_mm), 1.0, 1.0])
    return np.ascontiguousarray(np.asarray(labels).T[:, :, None]), affine


def volume_as_label_image(array: np.ndarray) -> np.ndarray:
    """The inverse of :func:`label_image_as_volume`'s array: a (W, H, 1) one-slice volume -> (H, W)."""
    if array.ndim != 3 or array.shape[2] != 1:
        raise ValueError(f"a 2D label image stored as a volume has one slice (W, H, 1), got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, 0].T)
