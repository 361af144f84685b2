"""One helper per job (issue 16 item 6): one-line error text and the tight box of a mask.

Each job has one function that every face calls: these tests pin its rule, check that the faces go
through it, and (for the error text) fail when a second copy of the rule appears in the package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import medsam_monai
from medsam_monai.errors import one_line
from medsam_monai.masks import mask_box

PACKAGE = Path(medsam_monai.__file__).parent


def lines_matching(pattern: re.Pattern[str]) -> list[str]:
    """``module.py:line`` of every line of the package's code (not docstrings or comments) matching ``pattern``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith(("#", '"""')):
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{number}")
    return found


# ----- one-line error text ------------------------------------------------------------------------


def test_one_line_joins_lines_and_names_a_silent_exception():
    itk_like = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute:\n /src/itk.cxx:99:\n\tsitk::ERROR: bad  file")
    assert one_line(itk_like) == "Exception thrown in SimpleITK ImageFileReader_Execute: /src/itk.cxx:99: sitk::ERROR: bad file"
    assert one_line("a\r\nb\tc") == "a b c"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"  # no message: its type still says something
    assert one_line("") == ""


def test_whitespace_is_collapsed_in_one_place():
    copies = lines_matching(re.compile(r'" "\.join\(.*\.split\(\)\)'))
    assert [place.split(":")[0] for place in copies] == ["errors.py"], copies


def test_the_faces_print_a_multi_line_reason_as_one_line():
    from medsam_monai.bundle.settings import BundleExit
    from medsam_monai.server.errors import error_response
    from medsam_monai.server.http import json_error_bytes

    assert str(BundleExit("datalist x.json is not readable JSON:\n  line 3")) == (
        "medsam bundle: error: datalist x.json is not readable JSON: line 3"
    )
    answer = json.loads(error_response(422, "invalid_request", "volume:\nshape wrong").body)
    assert answer == {"detail": "volume: shape wrong", "code": "invalid_request"}
    assert json.loads(json_error_bytes(400, "bad_request", "Illegal header\nline").split(b"\r\n\r\n", 1)[1]) == {
        "detail": "Illegal header line",
        "code": "bad_request",
    }


def test_the_cli_prints_a_multi_line_error_as_one_line(monkeypatch, capsys):
    from medsam_monai import cli

    def fails(args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli.download, "run", fails)
    assert cli.main(["download", "medsam_vit_b"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == "medsam: error: first line second line\n"


# ----- the tight box of a mask ----------------------------------------------------------------------


def test_mask_box_is_the_inclusive_box_on_every_axis():
    mask = np.zeros((9, 8, 7), bool)
    mask[2, 5, 1] = mask[6, 3, 4] = True
    assert mask_box(mask) == ([2, 3, 1], [6, 5, 4])
    assert mask_box(mask[2]) == ([5, 1], [5, 1])  # (H, W): ([y0, x0], [y1, x1])
    with pytest.raises(ValueError, match="empty mask"):
        mask_box(np.zeros((4, 4), bool))


def test_every_box_from_a_mask_is_mask_box():
    from medsam_monai.io import slicer_segment_metadata
    from medsam_monai.phantom import label_box
    from medsam_monai.propagation import propagated_box
    from medsam_monai.transforms import tight_boxes

    labels = np.zeros((20, 16, 6), np.uint8)
    labels[3:9, 4:15, 2:5] = 1
    labels[10, 2, 0] = 2
    lo, hi = mask_box(labels == 1)
    assert label_box(labels, 1) == (*lo, *hi)
    extent = next(v for k, v in slicer_segment_metadata(labels, {}).items() if k.endswith("_Extent") and "0 -1" not in v)
    assert extent == f"{lo[0]} {hi[0]} {lo[1]} {hi[1]} {lo[2]} {hi[2]}"
    section = labels[:, :, 3] == 1  # (H, W) = (20, 16)
    (y0, x0), (y1, x1) = mask_box(section)
    assert np.allclose(tight_boxes(section.astype(np.uint8), [1], size=64)[0, 1:], np.array([x0, y0, x1, y1]) * [4, 3.2, 4, 3.2])
    assert np.allclose(propagated_box(section, np.zeros(4), section.shape, 64, margin=0.0), [x0 * 4, y0 * 3.2, x1 * 4, y1 * 3.2])


# ----- the same grid ------------------------------------------------------------------------------------


def test_one_grid_rule_for_evaluations_metatensors_and_trainings_volumes():
    """One tolerance (GRID_ATOL mm on every affine entry) and one behaviour (a one-line ValueError)."""
    from medsam_monai.io import Volume
    from medsam_monai.transforms import check_same_grid, volume_to_metatensor
    from medsam_monai.transforms.volumes import GRID_ATOL

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-480.0, -300.0, 900.0)  # far from the origin: a relative tolerance would grow here
    image = Volume(np.zeros((6, 5, 4), np.int16), affine, "ct.nii.gz")

    def label_moved_by(mm: float, shape=(6, 5, 4)) -> Volume:
        moved = affine.copy()
        moved[2, 3] += mm
        return Volume(np.zeros(shape, np.int32), moved, "label.nii.gz")

    for as_given in (lambda v: v, volume_to_metatensor):
        check_same_grid(as_given(label_moved_by(0.5 * GRID_ATOL)), as_given(image))  # header rounding: the same grid
        with pytest.raises(ValueError, match=r"^label label.nii.gz lies on another grid than the image") as moved:
            check_same_grid(as_given(label_moved_by(2 * GRID_ATOL)), as_given(image))
        with pytest.raises(ValueError, match=r"shape \(6, 5, 3\) differs from the image's \(6, 5, 4\)") as cropped:
            check_same_grid(as_given(label_moved_by(0.0, shape=(6, 5, 3))), as_given(image))
        assert "\n" not in str(moved.value) + str(cropped.value)
