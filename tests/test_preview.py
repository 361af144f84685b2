"""The preview picture: readable size and aspect, boxes, colours of the .seg.nrrd, orientation letters,
file type and mode; and every output path checked before the run, nothing replaced when a write fails."""

from __future__ import annotations

import itertools
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam_monai.cli import main
from medsam_monai.colours import segment_colours, to_rgb255
from medsam_monai.io import write_label_volume
from medsam_monai.orientation import display_layout
from medsam_monai.phantom import ct_phantom
from medsam_monai.preview import (
    EdgeLetters,
    PreviewError,
    PreviewTile,
    check_preview_path,
    edge_letters,
    preview_tiles,
    render_preview,
    render_tile,
    save_preview,
    staged_preview,
    tile_size,
)

# The tiny model is the packaged demo model: no checkpoint file, no download.
TINY = ["--variant", "tiny", "--device", "cpu"]
# Two boxes of a small phantom (48 x 40 x 8 voxels, 1 x 1 x 4 mm), key slices k = 3 and k = 4.
BOXES = ["--box", "9,10,2,25,28,4", "--box", "28,18,4,38,30,5"]


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    phantom = ct_phantom(shape=(48, 40, 8), spacing=(1.0, 1.0, 4.0))
    path = tmp_path_factory.mktemp("ct") / "small.nii.gz"
    nib.save(nib.Nifti1Image(phantom.volume.array, phantom.volume.affine), path)
    return path


@pytest.fixture(scope="module")
def segmented(small_ct, tmp_path_factory):
    """One real run of `medsam segment` under umask 022: a .seg.nrrd and a PNG preview."""
    folder = tmp_path_factory.mktemp("run")
    out, preview = folder / "organs.seg.nrrd", folder / "organs.png"
    previous = os.umask(0o022)
    try:
        code = main(
            [
                "segment",
                str(small_ct),
                *BOXES,
                "--label",
                "liver",
                "--label",
                "kidney",
                "--out",
                str(out),
                "--preview",
                str(preview),
                *TINY,
            ]
        )
    finally:
        os.umask(previous)
    assert code == 0
    return out, preview


# --------------------------------------------------------------------------------------------
# size, aspect, boxes, titles
# --------------------------------------------------------------------------------------------


def test_a_thick_slice_volume_seen_coronally_keeps_its_aspect_and_is_512_px_long():
    # 0.7 x 0.7 x 5 mm: coronal slices are 16 x 5 = 80 mm high (k) and 60 x 0.7 = 42 mm wide (i).
    shape, affine = (60, 50, 16), np.diag([0.7, 0.7, 5.0, 1.0])
    intensities = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[20:30, 20:30, 6:10] = 1
    (tile,) = preview_tiles(intensities, labels, affine, [(1, (20, 20, 6, 29, 29, 9))], [25], "coronal")
    assert tile.image.shape == (16, 60) and tile.pixel_mm == (5.0, 0.7)
    picture = render_tile(tile, {1: (255, 0, 0)}, {1: "organ"}, font_px=20)
    assert picture.shape == (512, round(512 * 42 / 80), 3)  # not squashed to 16 x 60


@pytest.mark.parametrize(
    "shape, pixel_mm, expected",
    [
        ((40, 48), (1.0, 1.0), (427, 512)),  # small: upscaled to 512 on the long side
        ((512, 512), (0.7, 0.7), (512, 512)),  # already 512: as it is
        ((700, 600), (0.5, 0.5), (700, 600)),  # between the limits: one pixel per voxel
        ((2048, 1024), (0.25, 0.25), (1024, 512)),  # huge: at most 1024
        ((30, 200), (5.0, 0.8), (480, 512)),  # anisotropic: 150 mm x 160 mm
    ],
)
def test_tile_size(shape, pixel_mm, expected):
    assert tile_size(shape, pixel_mm) == expected


def test_box_outline_runs_along_the_outer_edge_of_the_box_voxels_in_the_objects_colour():
    # 64 x 32 voxels of 1 mm become 512 x 256 px: 8 px per voxel, so voxel c spans pixels 8c .. 8c + 7.
    tile = PreviewTile(
        np.full((32, 64), 90, np.uint8),
        np.zeros((32, 64), np.uint8),
        (1.0, 1.0),
        "t",
        EdgeLetters("A", "P", "R", "L"),
        boxes={3: (10, 12, 25, 40)},
    )  # rows 10..25, cols 12..40
    colour = (17, 201, 99)
    picture = render_tile(tile, {3: colour}, {3: "organ"}, font_px=20)
    assert picture.shape == (256, 512, 3)
    x0, y0, x1, y1 = 8 * 12, 8 * 10, 8 * 41 - 1, 8 * 26 - 1
    for edge in (picture[y0, x0 : x1 + 1], picture[y1, x0 : x1 + 1], picture[y0 : y1 + 1, x0], picture[y0 : y1 + 1, x1]):
        assert (edge == colour).all(axis=-1).all()
    assert (picture[y0 + 20, x0 + 20] == 90).all()  # inside the box: the image, untouched
    assert (picture[y0 - 30 : y0 - 2, x0 : x0 + 60] == colour).all(axis=-1).any()  # the name above the box


def test_masks_keep_their_colour_after_nearest_neighbour_upscaling():
    labels = np.zeros((32, 64), np.uint8)
    labels[4:12, 4:20] = 1
    tile = PreviewTile(np.zeros((32, 64), np.uint8), labels, (1.0, 1.0), "t", EdgeLetters("A", "P", "R", "L"))
    picture = render_tile(tile, {1: (200, 100, 0)}, {}, font_px=20)
    rim_and_fill = {tuple(p) for p in picture[32:96, 32:160].reshape(-1, 3)}
    assert rim_and_fill == {(200, 100, 0), (70, 35, 0)}  # solid rim, 35 % fill over black: no blended edges
    assert (picture[:32] == 0).all() and (picture[:, 160:] == 0).all()  # the mask ends on its voxel edges


def test_title_gives_the_axis_and_the_files_own_voxel_index():
    # k runs inferior here (a flipped slice axis): display slice 2 is voxel k = 7 of 0..9.
    affine = np.diag([1.0, 1.0, -3.0, 1.0])
    shape = (20, 16, 10)
    tiles = preview_tiles(
        np.zeros(shape, np.uint8),
        np.zeros(shape, np.uint8),
        affine,
        [(1, (2, 2, 6, 8, 8, 8)), (2, (10, 2, 6, 14, 8, 8))],
        [2, 2],
        "axial",
    )
    assert len(tiles) == 1 and set(tiles[0].boxes) == {1, 2}  # one tile for a shared key slice
    assert tiles[0].title == "axial slice k = 7 of 0-9"


# --------------------------------------------------------------------------------------------
# orientation letters
# --------------------------------------------------------------------------------------------

RADIOLOGICAL = {
    "axial": EdgeLetters(top="A", bottom="P", left="R", right="L"),
    "coronal": EdgeLetters(top="S", bottom="I", left="R", right="L"),
    "sagittal": EdgeLetters(top="S", bottom="I", left="A", right="P"),
}


def _stored_as(permutation, flips, spacing=(0.8, 0.9, 3.0)) -> np.ndarray:
    """The affine of a RAS volume stored with its axes permuted, then some of them flipped."""
    affine = np.diag([*spacing, 1.0])[:, [*permutation, 3]]
    for axis, flip in enumerate(flips):
        if flip:
            affine[:3, 3] += affine[:3, axis] * 9
            affine[:3, axis] *= -1
    return affine


@pytest.mark.parametrize("axis", sorted(RADIOLOGICAL))
def test_letters_are_radiological_for_every_voxel_order(axis):
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            affine = _stored_as(permutation, flips)
            assert edge_letters(affine, display_layout(affine, axis)) == RADIOLOGICAL[axis], (permutation, flips)


def test_letters_follow_the_layout_not_the_axis_name():
    ras, lps = np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-1.0, -1.0, 1.0, 1.0])
    # An RAS volume shown with the layout meant for an LPS one is upside down and mirrored.
    assert edge_letters(ras, display_layout(lps, "axial")) == EdgeLetters(top="P", bottom="A", left="L", right="R")
    assert edge_letters(ras, display_layout(lps, "sagittal")) == EdgeLetters(top="S", bottom="I", left="P", right="A")


def test_letters_of_an_oblique_scan_name_the_closest_sides():
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.7, 5.0])
    assert edge_letters(affine, display_layout(affine, "axial")) == RADIOLOGICAL["axial"]


# --------------------------------------------------------------------------------------------
# file type, mode, staging
# --------------------------------------------------------------------------------------------


def _picture():
    tile = PreviewTile(
        np.full((20, 30), 128, np.uint8),
        np.zeros((20, 30), np.uint8),
        (1.0, 1.0),
        "axial",
        EdgeLetters("A", "P", "R", "L"),
        boxes={1: (2, 2, 10, 10)},
    )
    return render_preview([tile], {1: "organ"}, {1: (0.5, 0.6, 0.5)})


@pytest.mark.parametrize(
    "name, magic",
    [
        ("p.png", b"\x89PNG"),
        ("p.JPG", b"\xff\xd8\xff"),
        ("p.jpeg", b"\xff\xd8\xff"),
        ("p.tif", b"II*\x00"),
        ("p.tiff", b"II*\x00"),
        ("p.bmp", b"BM"),
    ],
)
def test_the_suffix_decides_the_format(tmp_path, name, magic):
    assert save_preview(tmp_path / name, _picture()).read_bytes()[: len(magic)] == magic


@pytest.mark.parametrize("name", ["p.gif", "p.webp", "preview", "p.png.txt"])
def test_other_suffixes_are_refused(tmp_path, name):
    with pytest.raises(PreviewError, match="unsupported preview type"):
        check_preview_path(tmp_path / name)


def test_a_preview_never_overwrites_the_input_or_the_label_output(tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(b"an input picture")
    with pytest.raises(PreviewError, match="would overwrite"):
        check_preview_path(tmp_path / "sub" / ".." / "scan.png", protect=[image])
    assert check_preview_path(tmp_path / "new" / "folder" / "key.png", protect=[image]) == tmp_path / "new" / "folder" / "key.png"
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_the_umask_as_for_the_label_output(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        preview = save_preview(tmp_path / "p.png", _picture())
        labels = write_label_volume(tmp_path / "m.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    finally:
        os.umask(previous)
    assert preview.stat().st_mode & 0o777 == mode == labels.stat().st_mode & 0o777


def test_a_failing_block_leaves_the_old_preview_and_no_temporary_file(tmp_path):
    old = tmp_path / "p.png"
    old.write_bytes(b"the user's picture")
    with pytest.raises(RuntimeError, match="label write failed"), staged_preview(old, _picture()):
        raise RuntimeError("label write failed")
    assert old.read_bytes() == b"the user's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def test_cli_preview_is_readable_and_has_the_output_mode(segmented):
    out, preview = segmented
    picture = Image.open(preview)
    assert picture.format == "PNG"
    assert picture.height >= 427 and picture.width >= 2 * 512  # two key slices of 48 x 40 mm, 512 x 427 px each
    assert preview.stat().st_mode & 0o777 == 0o644 == out.stat().st_mode & 0o777


def test_cli_preview_uses_the_seg_nrrd_segment_colours(segmented):
    out, preview = segmented
    header = sitk.ReadImage(str(out))
    written = {}
    for n in range(2):
        value = int(header.GetMetaData(f"Segment{n}_LabelValue"))
        written[value] = tuple(round(255 * float(c)) for c in header.GetMetaData(f"Segment{n}_Color").split())
    labels = sitk.GetArrayFromImage(header).transpose(2, 1, 0)
    assert {v: to_rgb255(c) for v, c in segment_colours(labels, {1: "liver", 2: "kidney"}).items()} == written
    pixels = np.asarray(Image.open(preview).convert("RGB")).reshape(-1, 3)
    for value, colour in written.items():
        # The box outline alone is some 1000 pixels of the segment's exact colour.
        assert (pixels == colour).all(axis=1).sum() > 500, (value, colour)


def test_cli_jpeg_suffix_writes_jpeg(small_ct, tmp_path):
    preview = tmp_path / "key.jpg"
    assert (
        main(
            [
                "segment",
                str(small_ct),
                "--box",
                "28,18,4,38,30,4",
                "--out",
                str(tmp_path / "m.nii.gz"),
                "--preview",
                str(preview),
                *TINY,
            ]
        )
        == 0
    )
    assert preview.read_bytes()[:3] == b"\xff\xd8\xff"
    assert Image.open(preview).format == "JPEG"


@pytest.mark.parametrize(
    "preview, message",
    [
        (lambda d: d / "key.gif", "unsupported preview type"),
        (lambda d: d, "is a folder"),
        (lambda d: d / "a_file.txt" / "key.png", "not a folder"),
        (lambda d: d / ("x" * 300 + ".png"), "too long"),
    ],
)
def test_bad_preview_path_is_refused_before_the_model_loads(small_ct, tmp_path, capsys, preview, message):
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"the user's earlier mask")
    (tmp_path / "a_file.txt").write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    # A checkpoint that does not exist: had the model loaded first, the error would be about it.
    code = main(
        [
            "segment",
            str(small_ct),
            *BOXES,
            "--out",
            str(out),
            "--preview",
            str(preview(tmp_path)),
            "--variant",
            "tiny",
            "--checkpoint",
            str(tmp_path / "missing.pt"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medsam: error: ") and err.count("\n") == 1 and message in err, err
    assert out.read_bytes() == b"the user's earlier mask"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _no_bigger_files_than(limit: int):
    """In the child: files cannot grow past ``limit`` bytes (a write fails with EFBIG, a real OS error,
    as on a full disk), SIGXFSZ ignored so that the write fails instead of killing the process."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def test_a_preview_that_fails_at_the_end_leaves_the_existing_output_untouched(small_ct, tmp_path):
    out, preview = tmp_path / "mask.nii.gz", tmp_path / "key.png"
    out.write_bytes(b"the user's earlier mask")
    preview.write_bytes(b"the user's earlier picture")
    # A 32 KB limit: the label file (< 2 KB) would fit, the preview picture (> 50 KB) does not.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsam_monai.cli",
            "segment",
            str(small_ct),
            "--box",
            "28,18,4,38,30,4",
            "--out",
            str(out),
            "--preview",
            str(preview),
            *TINY,
        ],
        check=False,
        capture_output=True,
        text=True,
        preexec_fn=_no_bigger_files_than(32 * 1024),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medsam: error: ") and str(preview) in last and "Traceback" not in result.stderr
    assert ".tmp" not in last  # the user's path, not a temporary name
    assert out.read_bytes() == b"the user's earlier mask"
    assert preview.read_bytes() == b"the user's earlier picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.png", "mask.nii.gz"]
