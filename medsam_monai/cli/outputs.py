"""What ``segment`` and ``demo`` write besides the labels: the preview picture, and a warning per empty segment."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path


def warn_empty_segments(voxel_counts: dict[str, int], hint: str = "check the box, --axis and --modality/--window") -> None:
    """One stderr line per segment that has no voxel: written all the same (exit status 0), but a user
    reading only the exit status or the file would not know that a structure was not found."""
    for name, count in voxel_counts.items():
        if count == 0:
            print(
                f"medsam: warning: segment {name!r} is empty: nothing found in its box, or all of it went to a more "
                f"probable overlapping segment; {hint}",
                file=sys.stderr,
            )


def check_preview(path: str | None, protect: Sequence[str | Path]) -> Path | None:
    """The preview path checked before any work (picture type, not a folder, writable), None without one."""
    from ..preview import check_preview_path

    return None if path is None else check_preview_path(path, protect=protect)


def staged_preview(
    path: Path | None, volume, intensities, labels, objects, axis: str, segment_names: dict[int, str]
) -> AbstractContextManager:
    """A context manager: on entry the preview of the key slices is written to a temporary file beside
    ``path``, on a successful exit moved over it (on failure removed); nothing at all without a path.

    ``intensities`` and ``labels`` are (I, J, K) arrays on ``volume``'s grid; ``objects`` the VoxelBoxes."""
    from contextlib import nullcontext

    from ..preview import staged_preview as staged_picture
    from ..preview import volume_preview
    from ..segment import key_slices_ijk

    if path is None:
        return nullcontext()
    picture = volume_preview(
        intensities,
        labels,
        volume.affine,
        [(item.label, item.box) for item in objects],
        key_slices_ijk(objects, volume, axis),
        axis,
        segment_names,
    )
    return staged_picture(path, picture)


def shown_prompts(prompts) -> list:
    """The prompts of :func:`medsam_monai.segment.build_prompts` as a preview shows them
    (:class:`~medsam_monai.preview.ShownPrompt`): a boxed object on its key slice with its box and that
    slice's points, an object of points alone on each of its slices."""
    from ..preview import ShownPrompt
    from ..segment import PointsOnlyPrompt

    shown = []
    for prompt in prompts:
        if isinstance(prompt, PointsOnlyPrompt):
            slices = sorted(prompt.points)
            box = None
        else:
            slices = [prompt.key_slice]
            x0, y0, _, x1, y1, _ = prompt.box
            box = (x0, y0, x1, y1)
        for z in slices:
            coords, flags = prompt.points.get(z, ((), ()))
            points = tuple((float(x), float(y), bool(flag)) for (x, y), flag in zip(coords, flags))
            shown.append(ShownPrompt(prompt.label, z, box, points))
    return shown


def staged_prompt_preview(path: Path | None, picture) -> AbstractContextManager:
    """:func:`medsam_monai.preview.staged_preview` of a picture already drawn; nothing at all without a path."""
    from contextlib import nullcontext

    from ..preview import staged_preview as staged_picture

    return nullcontext() if path is None else staged_picture(path, picture)
