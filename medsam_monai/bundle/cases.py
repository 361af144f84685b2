"""A bundle run's cases: one from ``--input_dict`` or many from a datalist, and the dataset over them.

A case is a dict: ``image`` (a file or DICOM folder), optional ``series_uid`` (which DICOM series of
that folder), its prompts (``box``, ``box_ras``, ``boxes``, ``points``, ``negative_points``,
``points_ras``, ``negative_points_ras``, ``mask_prompt`` with ``label_value``, ``multimask``: see
:mod:`medsam_monai.transforms.prompts`) and, to evaluate, ``label``; for ``everything.json``, a 2D
image or a volume with its ``slice`` and ``axis`` (:mod:`medsam_monai.transforms.planes`).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset

from ..transforms import CASE_INDEX_KEY, case_name
from .settings import BundleExit, check_transform_chain

__all__ = ["CaseDataset", "case_name", "image_of", "load_cases", "name_or_none", "read_datalist"]

#: Keys of a case that hold paths, resolved against the datalist's folder (or ``dataset_dir``).
PATH_KEYS = ("image", "label", "mask_prompt")


def load_cases(
    input_dict: Any = None,
    datalist: str | os.PathLike[str] | None = None,
    datalist_key: str = "testing",
    dataset_dir: str | os.PathLike[str] = ".",
) -> list[Any]:
    """The run's cases: the one ``input_dict``, or the ``datalist_key`` list of a datalist JSON.

    ``dataset_dir`` is where relative paths given on the command line start: an ``input_dict``'s
    ``image`` and ``label``, and ``datalist`` itself (``.``, the default: the current folder). The
    paths inside a datalist start from the datalist's own folder, as MONAI's ``load_decathlon_datalist``.
    """
    if (input_dict is None) == (datalist is None):
        raise BundleExit(
            "give one case with --input_dict \"{'image': 'ct.nii.gz', 'box': [i0, j0, k0, i1, j1, k1]}\" "
            "or many with --datalist PATH (not both)"
        )
    if datalist is not None:
        return read_datalist(under(dataset_dir, os.fspath(datalist)), datalist_key)
    if isinstance(input_dict, str):
        # fire hands over a string when the shell quoting did not survive as a Python literal
        try:
            input_dict = ast.literal_eval(input_dict)
        except (ValueError, SyntaxError):
            pass
    if not isinstance(input_dict, Mapping):
        raise BundleExit(f"--input_dict must be a dict such as {{'image': 'ct.nii.gz', 'box': [...]}}, got {input_dict!r}")
    return [with_paths_under(input_dict, dataset_dir)]


def under(base: str | os.PathLike[str], path: str) -> str:
    """``path`` as it is when absolute or when ``base`` is the current folder, else ``base/path``."""
    if os.path.isabs(path) or os.fspath(base) in ("", "."):
        return path
    return os.path.normpath(os.path.join(os.fspath(base), path))


def with_paths_under(entry: Mapping[str, Any], base: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of a case whose relative ``image`` and ``label`` paths start from ``base``."""
    item = dict(entry)
    for key in PATH_KEYS:
        if isinstance(item.get(key), str) and item[key]:
            item[key] = under(base, item[key])
    return item


def read_datalist(path: str | os.PathLike[str], key: str = "testing") -> list[Any]:
    """Entries of a MONAI datalist (the Decathlon format ``load_decathlon_datalist`` reads).

    As there, ``image`` and ``label`` paths are relative to the datalist's folder and a bare string
    entry is an image. Unlike it, a malformed entry is kept as it is, so that only that case fails.
    """
    file = Path(path)
    if not file.is_file():
        raise BundleExit(f"datalist {file} does not exist")
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise BundleExit(f"datalist {file} is not readable JSON: {err}") from None
    entries = content.get(key) if isinstance(content, Mapping) else None
    if not isinstance(entries, list) or not entries:
        found = ", ".join(repr(k) for k, v in content.items() if isinstance(v, list)) if isinstance(content, Mapping) else ""
        raise BundleExit(
            f"datalist {file} has no non-empty list {key!r} (lists found: {found or 'none'}); choose one with --datalist_key"
        )
    return [datalist_entry(entry, file.parent) for entry in entries]


def datalist_entry(entry: Any, base: Path) -> Any:
    """One datalist entry as a case (a bare string is an image); paths joined to ``base`` (always, as MONAI)."""
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, Mapping):
        return entry
    item = dict(entry)
    for key in PATH_KEYS:
        if isinstance(item.get(key), str) and item[key]:
            item[key] = os.path.normpath(os.path.join(base, item[key]))
    return item


def image_of(entry: Any) -> str:
    """The case's image path; a one-line ValueError when the entry has none."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"a case is a dict with 'image' and its prompts, got {type(entry).__name__} {entry!r}")
    image = entry.get("image")
    if not isinstance(image, (str, os.PathLike)) or not os.fspath(image):
        raise ValueError("no 'image' given")
    return os.fspath(image)


def name_or_none(entry: Any) -> str | None:
    """The case's name, or None when it has no image."""
    try:
        return case_name(image_of(entry))
    except ValueError:
        return None


class CaseDataset(Dataset):
    """The run's cases as a MONAI ``Dataset``: item ``n`` is case ``n`` through ``transform`` (the preprocessing).

    A ``transform`` that is not callable (``--preprocessing sam`` puts a word in place of the
    transform chain) ends the run in one line (:func:`~.settings.check_transform_chain`). Each item
    also gets its position (``case_index``), which seeds evaluation's box jitter, so a
    case's boxes do not depend on the cases before it. An entry that is not a dict with an image is
    a one-line ValueError when its item is read, so only that case fails.
    """

    def __init__(self, data: Sequence[Any], transform: Any = None) -> None:
        check_transform_chain(transform)
        super().__init__(data, transform)

    def _transform(self, index: int) -> Any:  # MONAI's hook for one item, overridden
        entry = self.data[index]
        image_of(entry)
        item = dict(entry)
        item[CASE_INDEX_KEY] = index
        return self.transform(item) if self.transform is not None else item
