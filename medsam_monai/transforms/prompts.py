"""A case's prompts: boxes (``box``, ``box_ras``, ``boxes``) -> validated voxel boxes of its image, and
points, a mask prompt and the multimask choice (``points``, ``negative_points``, ``points_ras``,
``negative_points_ras``, ``mask_prompt`` with ``label_value``, ``multimask``) -> :class:`CasePrompts`.

This is the prompt vocabulary of the bundle's cases (``--input_dict``, datalist entries), the same
as ``medsam segment``'s (``--box``, ``--box-ras``, ``--point``, ``--negative-point``, ``--point-ras``,
``--negative-point-ras``, ``--mask-prompt``, ``--label-value``, ``--multimask``), numbered as it
numbers them. It lives with the transforms because
:class:`~medsam_monai.transforms.dictionary.PromptBoxesd` applies it, and the transforms sit below
the bundle (the bundle imports them, never the other way round). Points are checked here for their
form only; which voxel an RAS point names, whether a point lies in the image and which box it joins
are :mod:`medsam_monai.segment`'s rules, applied where the case is segmented.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ..io import Volume
from .boxes import Box6, VoxelBox, check_voxel_box, ras_box_to_voxel_box

#: The prompt keys of a case, for error messages.
PROMPT_HELP = (
    "'box': [i0, j0, k0, i1, j1, k1] (voxels), 'box_ras': [x0, y0, z0, x1, y1, z1] (mm), 'boxes': [...], "
    "or 'points': [i, j, k] (voxels) / 'points_ras': [x, y, z] (mm)"
)

#: The point keys of a case: (key, RAS millimetres rather than voxels, positive rather than negative).
POINT_KEYS = (
    ("points", False, True),
    ("negative_points", False, False),
    ("points_ras", True, True),
    ("negative_points_ras", True, False),
)
MULTIMASK_KEY = "multimask"
MASK_PROMPT_KEY = "mask_prompt"
LABEL_VALUE_KEY = "label_value"
LARGEST_LABEL = 65535


@dataclass(frozen=True)
class CasePoint:
    """One point of a case as given: ``coords`` voxel indices ``(i, j, k)`` or, when ``ras``, RAS mm
    ``(x, y, z)``; ``positive`` (foreground) or negative; ``key`` which of the case's values it is
    (``'points' #2``)."""

    coords: tuple[float, float, float]
    positive: bool
    ras: bool
    key: str

    @property
    def name(self) -> str:
        """How error messages call the point: ``'points' #2 [10, 20, 5]``."""
        return f"{self.key} [{', '.join(f'{v:g}' for v in self.coords)}]"


@dataclass(frozen=True, eq=False)
class CasePrompts:
    """A case's prompts besides its boxes.

    Attributes:
        points: its points, in the order of :data:`POINT_KEYS`, then as listed.
        multimask: the case's ``multimask`` (None: the run's setting).
        mask_prompt: its ``mask_prompt`` label volume, read and checked to lie on the image's grid, or None.
        mask_values: its ``label_value``: the label of ``mask_prompt`` each object refines, one per
            object in order (None: each object's own label).
        mask_name: how error messages call the mask prompt (the key and its file).
    """

    points: tuple[CasePoint, ...] = ()
    multimask: bool | None = None
    mask_prompt: Any = None
    mask_values: tuple[int, ...] | None = None
    mask_name: str = f"{MASK_PROMPT_KEY!r}"


# One prompt before numbering: the voxel box, the label it names (None: its position) and its name.
Found = tuple[Box6, "int | None", "str | None"]


def six_numbers(value: Any, what: str) -> tuple[int | float, ...]:
    """``value`` as 6 numbers (a list or tuple of ints/floats); one-line ValueError naming ``what`` otherwise."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 6
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{what} must be 6 numbers, got {value!r}")
    return tuple(value)


def box_list(value: Any) -> list[Any]:
    """``value`` as a list of boxes (or points): one box (6 numbers) or a list of them."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return list(value)
    return [value]


def numbered(key: str, n: int) -> str:
    """How messages name the n-th (0-based) value of a key: ``'box'``, then ``'box' #2``, ..."""
    return f"{key!r}" if n == 0 else f"{key!r} #{n + 1}"


def voxel_box_of(box: Any, is_ras: bool, volume: Volume, what: str) -> Box6:
    """One prompt box (voxels, or RAS mm when ``is_ras``) as a voxel box validated against ``volume``."""
    numbers = six_numbers(box, what)
    return ras_box_to_voxel_box(numbers, volume) if is_ras else check_voxel_box(numbers, volume.shape)


def box_item(item: Any, volume: Volume, where: str) -> Found:
    """One entry of ``boxes``: 6 voxel numbers, or a dict with ``box`` or ``box_ras`` and optional ``label``, ``name``."""
    if not isinstance(item, Mapping):
        return voxel_box_of(item, False, volume, where), None, None
    given = [key for key in ("box", "box_ras") if key in item]
    if len(given) != 1:
        raise ValueError(f"{where} needs exactly one of 'box' or 'box_ras', got keys {sorted(item)}")
    box = voxel_box_of(item[given[0]], given[0] == "box_ras", volume, f"{where} {given[0]!r}")
    label = item.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or not 0 < label < 65536):
        raise ValueError(f"{where} 'label' must be a whole number in 1..65535, got {label!r}")
    name = item.get("name")
    return box, label, None if name is None else str(name)


def boxes_from_prompts(
    prompts: Mapping[Hashable, Any], volume: Volume, required: bool = True
) -> tuple[list[VoxelBox], dict[int, str]]:
    """A case's boxes, validated against its image, numbered as ``medsam segment`` numbers them.

    Keys: ``box`` (voxel indices ``[i0, j0, k0, i1, j1, k1]`` in the file's own order, inclusive,
    or a list of such boxes), ``box_ras`` (RAS millimetres, likewise), ``boxes`` (a list of voxel
    boxes or of dicts ``{"box" | "box_ras": [...], "label": n, "name": "liver"}``). Boxes are taken
    in that order; box n gets label n unless it names its own, and name ``Segment_<label>``.
    ``required``: no box is a ValueError (a case of points alone passes False).

    Returns:
        The boxes, and the segment names by label (used by ``.seg.nrrd`` outputs).
    """
    found: list[Found] = []
    for key, is_ras in (("box", False), ("box_ras", True)):
        for n, box in enumerate(box_list(prompts.get(key))):
            found.append((voxel_box_of(box, is_ras, volume, numbered(key, n)), None, None))
    items = prompts.get("boxes")
    if items is not None and not isinstance(items, (list, tuple)):
        raise ValueError(f"'boxes' must be a list, got {items!r}")
    for n, item in enumerate(items or []):
        found.append(box_item(item, volume, f"'boxes' #{n + 1}"))
    if not found and required:
        raise ValueError(f"no box or point given; add {PROMPT_HELP}")
    return numbered_boxes(found)


def points_from_prompts(prompts: Mapping[Hashable, Any]) -> list[CasePoint]:
    """A case's points (:data:`POINT_KEYS`), each one point ``[i, j, k]`` / ``[x, y, z]`` or a list of them.

    Checked for their form here (3 finite numbers); a one-line ValueError names the key otherwise.
    """
    points = []
    for key, ras, positive in POINT_KEYS:
        for n, value in enumerate(box_list(prompts.get(key))):
            name = numbered(key, n)
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            ):
                form = "[x, y, z] (RAS mm)" if ras else "[i, j, k] (voxel indices)"
                raise ValueError(f"{name} must be 3 finite numbers {form}, or a list of such points; got {value!r}")
            points.append(CasePoint(tuple(float(v) for v in value), positive, ras, name))  # type: ignore[arg-type]
    return points


def multimask_of(prompts: Mapping[Hashable, Any]) -> bool | None:
    """The case's ``multimask`` (true or false), None when it gives none."""
    value = prompts.get(MULTIMASK_KEY)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{MULTIMASK_KEY!r} must be true or false, got {value!r}")
    return value


def mask_values_of(prompts: Mapping[Hashable, Any]) -> tuple[int, ...] | None:
    """The case's ``label_value``: one label value or a list of them (one per object), None when it gives none."""
    value = prompts.get(LABEL_VALUE_KEY)
    if value is None:
        return None
    if prompts.get(MASK_PROMPT_KEY) is None:
        raise ValueError(
            f"{LABEL_VALUE_KEY!r} chooses the label of {MASK_PROMPT_KEY!r} that an object refines; give {MASK_PROMPT_KEY!r} too"
        )
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= LARGEST_LABEL for v in values):
        raise ValueError(f"{LABEL_VALUE_KEY!r} must be a label value in 1..{LARGEST_LABEL} or a list of them, got {value!r}")
    return tuple(values)


def numbered_boxes(found: list[Found]) -> tuple[list[VoxelBox], dict[int, str]]:
    """Box n gets label n unless it names its own; every label gets a name (``Segment_<label>`` by default)."""
    boxes: list[VoxelBox] = []
    names: dict[int, str] = {}
    for position, (box, label, name) in enumerate(found, start=1):
        value = position if label is None else label
        boxes.append(VoxelBox(box, label=value))
        if name is not None:
            names[value] = name
        else:
            names.setdefault(value, f"Segment_{value}")
    return boxes, names
