"""``medsam everything``: SAM's automatic masks ("segment everything") of a 2D image or of one slice of
a CT/MR volume, written as COCO RLE records (.json) or as one label map; with ``--propagate`` each
mask of a volume's slice is carried through the neighbouring slices by MedSAM's 3D propagation.

A thin face over :mod:`medsam_monai.automatic` (:func:`~medsam_monai.automatic.automatic_masks`,
:func:`~medsam_monai.automatic.propagate_masks`), the same core as the server's everything jobs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .errors import UserError
from .model import load_predictor, resolve_device_option
from .parsing import add_model_options, add_preprocessing_option, finite_number, whole_number
from .progress import progress_reporter

#: SAM's generator parameters (segment-anything's ``SamAutomaticMaskGenerator``) but ``point_grids``
#: (``--point-grids FILE``): name, argparse type, SAM's default (spelt out: ``medsam --help`` must not
#: import torch, which :data:`medsam_monai.automatic.GENERATOR_PARAMETERS` does; a test checks they
#: agree) and help. Each is the option ``--name-with-dashes``.
GENERATOR_OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("points_per_side", whole_number, 32, "points along each side of the point grid (points_per_side^2 in all)"),
    ("points_per_batch", whole_number, 64, "points decoded together (memory grows with it)"),
    ("pred_iou_thresh", finite_number, 0.88, "keep masks whose predicted IoU is above this, in [0, 1]"),
    ("stability_score_thresh", finite_number, 0.95, "keep masks whose stability score is at least this, in [0, 1]"),
    ("stability_score_offset", finite_number, 1.0, "logit offset of the stability score's two thresholds, >= 0"),
    ("box_nms_thresh", finite_number, 0.7, "box IoU above which NMS drops the lower-scoring mask, in [0, 1]"),
    ("crop_n_layers", whole_number, 0, "crop layers below the whole image (layer i has (2^i)^2 crops)"),
    ("crop_nms_thresh", finite_number, 0.7, "box IoU for NMS between crops (masks of smaller crops win), in [0, 1]"),
    ("crop_overlap_ratio", finite_number, 512 / 1500, "overlap of layer-1 crops, a fraction of the short side, in [0, 1)"),
    ("crop_n_points_downscale_factor", whole_number, 1, "crop layer i has points_per_side / factor^i points a side"),
    ("min_mask_region_area", whole_number, 0, "fill holes and remove islands smaller than this many pixels (0: off)"),
)

#: The medical filters, applied after SAM's: (name, help).
FILTER_OPTIONS: tuple[tuple[str, str], ...] = (
    ("min_area_mm2", "drop masks smaller than this many mm^2 (needs the image's pixel spacing), >= 0"),
    ("max_area_fraction", "drop masks covering more than this fraction of the image (the body, the background), in (0, 1]"),
)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")  # the generator's, spelt out (a test checks)
JSON_SUFFIX = ".json"
# The volume types io.write_label_volume writes, named in errors (its list is private to it).
VOLUME_OUTPUTS = ".nii.gz, .nii, .nrrd, .mha, .seg.nrrd"
KIND_JSON, KIND_LABEL_IMAGE, KIND_LABEL_VOLUME = "json", "label image", "label volume"


def option(name: str) -> str:
    """SAM's parameter name as this command's option: ``points_per_side`` -> ``--points-per-side``."""
    return "--" + name.replace("_", "-")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``everything`` on the ``medsam`` command's subparsers."""
    everything = subparsers.add_parser(
        "everything",
        help="automatic masks of everything in a 2D image or a volume's slice (SAM's generator), optionally in 3D",
        description="SAM's automatic mask generator: a grid of points over the image, three masks per point, "
        "filtered by predicted IoU and stability, de-duplicated by NMS (segment-anything's parameters, names and "
        "defaults). Input: a 2D image (PNG, JPEG, TIFF, BMP, a one-frame DICOM) or one slice of a CT/MR volume "
        "(--slice, --axis). Output: --out masks.json (a list of SAM's records, each mask a COCO RLE that "
        "pycocotools decodes) or a label map (.png, .tif, .bmp; or a volume .nii.gz, .nrrd, .mha, .seg.nrrd), "
        "label n = record n, larger masks under smaller ones. --propagate carries each mask of a volume's slice "
        "through the neighbouring slices. MedSAM was trained with boxes: automatic masks suit SAM's checkpoints "
        "(--variant vit_l/vit_h, or --checkpoint sam_vit_b_01ec64.pth) better.",
    )
    everything.add_argument("image", help="a 2D image, or a volume (file or DICOM series folder)")
    everything.add_argument(
        "--out", required=True, help=f"{JSON_SUFFIX} records, a label image (.png, .tif, .tiff, .bmp) or a label volume"
    )
    for name, kind, default, text in GENERATOR_OPTIONS:
        metavar = "N" if kind is whole_number else "X"
        everything.add_argument(option(name), type=kind, default=None, metavar=metavar, help=f"{text}; SAM's default {default:g}")
    everything.add_argument(
        "--point-grids",
        metavar="FILE",
        help="a JSON file of the points instead of --points-per-side: one list of [x, y] in [0, 1] (fractions of "
        "the crop) per crop layer, or one list for the whole image",
    )
    everything.add_argument(
        "--output-mode",
        choices=list(OUTPUT_MODES),
        default=None,
        help="how .json records hold masks: coco_rle (default) or uncompressed_rle; a label map holds binary masks",
    )
    for name, text in FILTER_OPTIONS:
        everything.add_argument(option(name), type=finite_number, default=None, metavar="X", help=text)
    everything.add_argument(
        "--slice",
        type=whole_number,
        default=None,
        metavar="K",
        help="volume: the slice, a voxel index along the voxel axis that --axis slices (default: the middle one)",
    )
    everything.add_argument(
        "--axis", default=None, choices=["axial", "coronal", "sagittal"], help="volume: slicing axis (default axial)"
    )
    everything.add_argument(
        "--propagate",
        action="store_true",
        help="volume: carry each mask through the neighbouring slices with MedSAM's 3D propagation (until it "
        "vanishes); written as a label volume, labels 1..N",
    )
    everything.add_argument(
        "--series-uid", default=None, metavar="UID", help="the DICOM series to read when the folder holds several"
    )
    everything.add_argument(
        "--modality",
        default=None,
        choices=["ct", "mr"],
        help="intensity normalisation: ct (window) or mr (0.5-99.5 percentiles); default ct for a volume and "
        "MedSAM's 2D rule for a 2D image",
    )
    everything.add_argument(
        "--window",
        default=None,
        metavar="PRESET|L,W",
        help="CT window: abdomen (default), lung, brain, mediastinum, bone, or LEVEL,WIDTH (on a 2D image it implies "
        "--modality ct)",
    )
    add_model_options(everything)
    add_preprocessing_option(everything)
    everything.set_defaults(func=run)
    return everything


# --------------------------------------------------------------------------------------------
# What is checked before anything is read
# --------------------------------------------------------------------------------------------


def as_options(message: str) -> str:
    """A library message about SAM's parameters with each parameter named as this command's option."""
    from ..automatic import GENERATOR_PARAMETERS

    names = [*GENERATOR_PARAMETERS, *(name for name, _ in FILTER_OPTIONS)]
    for name in sorted(names, key=len, reverse=True):
        message = re.sub(rf"\b{name}\b", option(name), message)
    return message


def generator_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generator parameters the user gave (the others keep SAM's defaults), checked by the
    generator itself (no model needed); the point grids read from ``--point-grids``."""
    from ..automatic import AutomaticMaskGenerator

    settings = {name: getattr(args, name) for name, *_ in GENERATOR_OPTIONS if getattr(args, name) is not None}
    if args.point_grids is not None:
        if "points_per_side" in settings:
            raise UserError("give --points-per-side or --point-grids, not both")
        settings["points_per_side"] = None
        settings["point_grids"] = read_point_grids(args.point_grids)
    try:
        AutomaticMaskGenerator(None, **settings)  # type: ignore[arg-type]
    except ValueError as err:
        raise UserError(as_options(str(err))) from None
    return settings


def read_point_grids(path: str) -> list:
    """The grids of a ``--point-grids`` JSON file: a list of (N, 2) arrays (one list of pairs is one grid)."""
    import json

    import numpy as np

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"--point-grids {path}: cannot read it ({err.strerror or err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--point-grids {path}: not a JSON file ({err})") from None
    try:
        grids = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        grids = None
    if grids is not None and grids.ndim == 2:
        grids = grids[None]  # one grid for the one layer
    if grids is None or grids.ndim != 3 or grids.shape[-1] != 2 or grids.shape[1] == 0:
        raise UserError(f"--point-grids {path}: expected a list of [x, y] pairs, or one such list per crop layer")
    return list(grids)


def check_filters(args: argparse.Namespace) -> None:
    from ..automatic import check_size_filters

    try:
        check_size_filters(args.min_area_mm2, args.max_area_fraction)
    except ValueError as err:
        raise UserError(as_options(str(err))) from None


def output_kind(path: str) -> str:
    """What ``--out`` asks for, by its suffix: JSON records, a label image or a label volume."""
    from ..images import LABEL_IMAGE_SUFFIXES
    from ..io import check_output_type

    name = Path(path).name.lower()
    if name.endswith(JSON_SUFFIX):
        return KIND_JSON
    if name.endswith((*LABEL_IMAGE_SUFFIXES, ".jpg", ".jpeg")):  # JPEG: check_label_image_path says why not
        return KIND_LABEL_IMAGE
    try:
        check_output_type(path)
    except ValueError as err:
        if name.endswith(".mhd"):  # the writer's own reason: .mha, one file replaced atomically
            raise UserError(str(err)) from None
        raise UserError(
            f"{path}: unsupported output type; use {JSON_SUFFIX} (records), a label image "
            f"({', '.join(LABEL_IMAGE_SUFFIXES)}) or a label volume ({VOLUME_OUTPUTS})"
        ) from None
    return KIND_LABEL_VOLUME


def record_mode(args: argparse.Namespace, kind: str) -> str:
    """The generator's ``output_mode``: ``--output-mode`` for JSON records (default coco_rle); a label
    map is painted from run-length encodings (what takes least memory)."""
    if kind == KIND_JSON:
        if args.output_mode == "binary_mask":
            raise UserError(
                "--output-mode binary_mask gives arrays, which JSON does not hold; use coco_rle (the default) or "
                "uncompressed_rle, or write a label map (.png, .nii.gz, ...)"
            )
        return args.output_mode or "coco_rle"
    if args.output_mode not in (None, "binary_mask"):
        raise UserError(
            f"--output-mode {args.output_mode} is a form of {JSON_SUFFIX} records; a {kind} ({args.out}) holds binary "
            "masks: leave --output-mode out, or write records (--out masks.json)"
        )
    return "uncompressed_rle"


def check_options(args: argparse.Namespace) -> tuple[dict[str, Any], str, str]:
    """Everything that can be refused before a file is read: (generator settings, output kind, output mode)."""
    settings = generator_settings(args)
    check_filters(args)
    kind = output_kind(args.out)
    mode = record_mode(args, kind)
    if args.propagate and kind != KIND_LABEL_VOLUME:
        raise UserError(f"--propagate writes a label volume; give --out as one of {VOLUME_OUTPUTS}, not {args.out}")
    if args.window is not None:
        from ..transforms import parse_window

        if args.modality == "mr":
            raise UserError("--window applies to CT only; MR is normalised by percentiles")
        parse_window(args.window)
    return settings, kind, mode


def check_output(path: str, kind: str, protect: list[str]) -> Path:
    """The output path checked (type, not a protected input, not a folder, writable) before any work."""
    from ..images import check_label_image_path
    from ..io import check_output_path, check_writable_folder, is_same_file

    if kind == KIND_LABEL_IMAGE:
        return check_label_image_path(path, protect=protect)
    if kind == KIND_LABEL_VOLUME:
        return check_output_path(path, protect=protect)
    out = Path(path)
    if any(is_same_file(out, other) for other in protect):
        raise UserError(f"{out}: refusing to overwrite a protected input file")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file name such as masks.json")
    check_writable_folder(out)
    return out


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Options, output path and input are all checked before the model loads."""
    from ..images import KIND_FRAMES, KIND_IMAGE_2D, input_kind

    settings, kind, mode = check_options(args)
    source = input_kind(args.image)
    if source == KIND_FRAMES:
        raise UserError(
            f"{args.image}: a multi-frame colour DICOM (a cine) holds no volume and more than one 2D image; "
            "save the frame to use as a 2D image"
        )
    resolve_device_option(args)
    out = check_output(args.out, kind, protect=[args.image])
    if source == KIND_IMAGE_2D:
        return run_image(args, settings, kind, mode, out)
    return run_volume(args, settings, kind, mode, out)


def make_generator(predictor, settings: dict[str, Any], mode: str):
    from ..automatic import AutomaticMaskGenerator

    return AutomaticMaskGenerator(predictor, **settings, output_mode=mode)


def find_masks(args: argparse.Namespace, generator, image, spacing):
    """The filtered masks of one plane, with progress in point batches."""
    from ..automatic import automatic_masks

    try:
        return automatic_masks(
            generator,
            image,
            spacing,
            args.min_area_mm2,
            args.max_area_fraction,
            progress=progress_reporter("everything", unit="point batches"),
        )
    except ValueError as err:
        raise UserError(as_options(str(err))) from None


def write_records(out: Path, records: list[dict[str, Any]]) -> None:
    """The records as a JSON list, written atomically."""
    import json

    from ..automatic import json_records
    from ..io import write_file_atomically

    text = json.dumps(json_records(records)) + "\n"
    write_file_atomically(out, out.name[-len(JSON_SUFFIX) :], lambda temporary: temporary.write_text(text, encoding="utf-8"))


def report(out: Path, masks, where: str, args: argparse.Namespace, extra: str = "") -> None:
    """The one summary line, and a warning when no mask was kept."""
    dropped = f" ({masks.generated} found, {masks.dropped} dropped by the size filters)" if masks.dropped else ""
    print(f"medsam: {len(masks.records)} masks{where}{dropped}{extra}; wrote {out}")
    if not masks.records:
        hint = (
            "the tiny demo model's predicted IoUs are untrained: try --pred-iou-thresh 0 --stability-score-thresh 0"
            if args.variant == "tiny"
            else "lower --pred-iou-thresh or --stability-score-thresh"
        )
        if masks.generated:
            hint = "the size filters dropped them all: loosen --min-area-mm2 or --max-area-fraction"
        print(f"medsam: warning: no masks; {hint}", file=sys.stderr)


def refuse_volume_options(args: argparse.Namespace) -> None:
    """The options of volumes that mean nothing for one 2D image: each a clear error, not a silent no-op."""
    for name, given in (
        ("--slice", args.slice is not None),
        ("--axis", args.axis is not None),
        ("--propagate", args.propagate),
        ("--series-uid", args.series_uid is not None),
    ):
        if given:
            raise UserError(f"{name} applies to volumes; {args.image} is a 2D image (one plane): leave it out")


def run_image(args: argparse.Namespace, settings: dict[str, Any], kind: str, mode: str, out: Path) -> int:
    """A 2D image: MedSAM's 2D intensity rule (or a CT/MR rule), masks in the image's pixels."""
    from ..images import read_image_2d, write_label_image
    from ..io import write_label_volume
    from ..segment import image_intensities, label_image_as_volume

    refuse_volume_options(args)
    image = read_image_2d(args.image)
    if args.min_area_mm2 is not None and image.spacing is None:
        raise UserError(f"--min-area-mm2 needs the pixel spacing, which {args.image} does not record; use --max-area-fraction")
    intensities = image_intensities(image, args.modality, args.window)
    predictor = load_predictor(args, uint8_after_resize=True)  # MedSAM_Inference.py's uint8 cast after the resize
    masks = find_masks(args, make_generator(predictor, settings, mode), intensities, image.spacing)
    if kind == KIND_JSON:
        write_records(out, masks.records)
    elif kind == KIND_LABEL_IMAGE:
        write_label_image(out, masks.label_map, protect=[args.image])
    else:
        array, affine = label_image_as_volume(masks.label_map, image.spacing)
        write_label_volume(out, array, affine, protect=[args.image])
    report(out, masks, f" in the {image.shape[1]} x {image.shape[0]} px image", args)
    return 0


def run_volume(args: argparse.Namespace, settings: dict[str, Any], kind: str, mode: str, out: Path) -> int:
    """One slice of a volume in display orientation; with --propagate, its masks through the volume."""
    import numpy as np

    from ..automatic import display_pixel_spacing, display_slice, propagate_masks, record_masks, voxel_slice
    from ..images import write_label_image
    from ..io import read_volume, write_label_volume
    from ..orientation import display_layout, from_display, to_display
    from ..segment import normalized_volume
    from ..transforms import check_finite

    axis = args.axis or "axial"
    volume = read_volume(args.image, series_uid=args.series_uid)
    try:
        check_finite(volume.array)
    except ValueError as err:
        raise UserError(f"{args.image}: {err}") from None
    layout = display_layout(volume.affine, axis)
    voxel_axis = layout.permutation[0]
    index = volume.shape[voxel_axis] // 2 if args.slice is None else args.slice
    try:
        key = display_slice(index, volume.shape, layout)
    except ValueError as err:  # "slice K is outside ...": the option's own name in front
        raise UserError(f"--{err}") from None
    display = np.ascontiguousarray(to_display(normalized_volume(volume, args.modality or "ct", args.window), layout))
    predictor = load_predictor(args)
    spacing = display_pixel_spacing(volume.affine, layout)
    masks = find_masks(args, make_generator(predictor, settings, mode), display[key], spacing)
    where = f" on the {axis} slice {'ijk'[voxel_axis]} = {index}"
    extra = ""
    if kind == KIND_JSON:
        write_records(out, masks.records)
    elif kind == KIND_LABEL_IMAGE:
        write_label_image(out, masks.label_map, protect=[args.image])  # the display slice as the network saw it
    else:
        if args.propagate:
            labels = propagate_masks(
                predictor, display, key, record_masks(masks.records), progress=progress_reporter("propagating")
            )
            reached = [voxel_slice(z, volume.shape, layout) for z in np.flatnonzero(labels.any(axis=(1, 2)))]
            if reached:
                extra = f", propagated over slices {'ijk'[voxel_axis]} = {min(reached)}..{max(reached)}"
        else:
            labels = np.zeros(display.shape[:3], dtype=np.uint8 if len(masks.records) < 256 else np.uint16)
            labels[key] = masks.label_map
        ijk = np.ascontiguousarray(from_display(labels, layout))
        write_label_volume(out, ijk, volume.affine, protect=[args.image], nifti=volume.nifti)
    report(out, masks, where, args, extra)
    return 0
