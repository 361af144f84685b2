"""A case's box prompts (the keys ``box``, ``box_ras``, ``boxes``) -> validated voxel boxes of its image.

This is the prompt vocabulary of the bundle's cases (``--input_dict``, datalist entries), numbered
as ``medsam segment --box ... --box-ras ...`` numbers its boxes. It lives with the transforms because
:class:`~medsam_monai.transforms.dictionary.PromptBoxesd` applies it, and the transforms sit below
the bundle (the bundle imports them, never the other way round).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from ..io import Volume
from .boxes import Box6, VoxelBox, check_voxel_box, ras_box_to_voxel_box

#: The prompt keys of a case, for error messages.
PROMPT_HELP = "'box': [i0, j0, k0, i1, j1, k1] (voxels), 'box_ras': [x0, y0, z0, x1, y1, z1] (mm) or 'boxes': [...]"

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
    """``value`` as a list of boxes: one box (6 numbers) or a list of them."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return list(value)
    return [value]


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


def boxes_from_prompts(prompts: Mapping[Hashable, Any], volume: Volume) -> tuple[list[VoxelBox], dict[int, str]]:
    """A case's boxes, validated against its image, numbered as ``medsam segment`` numbers them.

    Keys: ``box`` (voxel indices ``[i0, j0, k0, i1, j1, k1]`` in the file's own order, inclusive,
    or a list of such boxes), ``box_ras`` (RAS millimetres, likewise), ``boxes`` (a list of voxel
    boxes or of dicts ``{"box" | "box_ras": [...], "label": n, "name": "liver"}``). Boxes are taken
    in that order; box n gets label n unless it names its own, and name ``Segment_<label>``.

    Returns:
        The boxes, and the segment names by label (used by ``.seg.nrrd`` outputs).
    """
    found: list[Found] = []
    for key, is_ras in (("box", False), ("box_ras", True)):
        for n, box in enumerate(box_list(prompts.get(key))):
            found.append((voxel_box_of(box, is_ras, volume, f"{key!r}" if n == 0 else f"{key!r} #{n + 1}"), None, None))
    items = prompts.get("boxes")
    if items is not None and not isinstance(items, (list, tuple)):
        raise ValueError(f"'boxes' must be a list, got {items!r}")
    for n, item in enumerate(items or []):
        found.append(box_item(item, volume, f"'boxes' #{n + 1}"))
    if not found:
        raise ValueError(f"no box given; add {PROMPT_HELP}")
    return numbered_boxes(found)


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
