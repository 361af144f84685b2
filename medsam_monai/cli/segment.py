"""``medsam segment``: one structure per box (or points) in a CT/MR volume, propagated slice by slice in
3D, or in a 2D image (PNG, JPEG, TIFF, BMP, a one-frame DICOM) as ``MedSAM_Inference.py`` segments it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError
from .model import load_predictor, resolve_device_option
from .outputs import check_preview, shown_prompts, staged_prompt_preview, warn_empty_segments
from .parsing import add_model_options, add_preprocessing_option, comma_numbers, positive_int
from .progress import progress_reporter

BOX_3D_FORM = "I0,J0,K0,I1,J1,K1 (voxel indices; X0,Y0,X1,Y1 is a box on a 2D image)"
BOX_2D_FORM = "X0,Y0,X1,Y1 (pixel columns and rows; 6 numbers are a box in a volume)"
POINT_3D_FORM = "I,J,K (voxel indices; X,Y is a point on a 2D image)"
POINT_2D_FORM = "X,Y (pixel column and row; 3 numbers are a point in a volume)"
RAS_FORM = "X,Y,Z (RAS millimetres)"
# The volume types io.write_label_volume writes, named in the 2D error (its list is private to it).
VOLUME_OUTPUTS = ".nii.gz, .nii, .nrrd, .mha, .seg.nrrd"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``medsam`` command's subparsers."""
    segment = subparsers.add_parser(
        "segment",
        help="segment structures in a CT/MR volume (3D propagation) or a 2D image from boxes and points",
        description="Segment one structure per box with MedSAM. In a CT/MR volume (NIfTI, NRRD, MHA/MHD or a "
        "DICOM series folder) the box's extent along --axis is the slice range, its middle slice gets the box, and "
        "the masks propagate slice by slice; the labels are written on the input's own voxel grid (.nii.gz, .nii, "
        ".nrrd, .mha or 3D Slicer .seg.nrrd). A 2D image (PNG, JPEG, TIFF, BMP, grey or RGB, or a one-frame DICOM) "
        "is segmented as MedSAM_Inference.py does and written as a label image (.png, .tif, .bmp: 0 background, "
        "1..N) or a one-slice volume. Points (--point, --negative-point) join the box on their slice; without a "
        "box they segment their own slice only. Outputs are written atomically.",
    )
    segment.add_argument("image", help="image file (volume or 2D image) or DICOM series folder")
    segment.add_argument(
        "--series-uid",
        default=None,
        metavar="UID",
        help="the DICOM series to read when the folder (searched with its subfolders) holds several; "
        "without it, such a folder is refused with a list of its series",
    )
    segment.add_argument(
        "--box",
        action="append",
        metavar="I0,J0,K0,I1,J1,K1|X0,Y0,X1,Y1",
        help="volume: inclusive voxel box in the file's own index order (as ITK-SNAP and 3D Slicer IJK); 2D image: "
        "pixel columns X and rows Y as stored; repeat for several objects (labels 1, 2, ...)",
    )
    segment.add_argument(
        "--box-ras",
        action="append",
        metavar="X0,Y0,Z0,X1,Y1,Z1",
        help="volume: box in RAS millimetres (3D Slicer's world coordinates); repeatable",
    )
    segment.add_argument(
        "--point",
        action="append",
        metavar="I,J,K|X,Y",
        help="foreground point: voxel indices in a volume, pixel column and row on a 2D image; repeatable. It joins "
        "the box on its slice (the one it lies inside where several boxes share the slice); without any box the "
        "points make one object on their own slice, not propagated",
    )
    segment.add_argument("--negative-point", action="append", metavar="I,J,K|X,Y", help="background point, as --point")
    segment.add_argument(
        "--point-ras", action="append", metavar="X,Y,Z", help="volume: --point in RAS millimetres (nearest voxel)"
    )
    segment.add_argument(
        "--negative-point-ras", action="append", metavar="X,Y,Z", help="volume: --negative-point in RAS millimetres"
    )
    segment.add_argument(
        "--mask-prompt",
        metavar="LABELS",
        help="an earlier label file on the same grid (a label image for a 2D image): each object's mask in it "
        "becomes that object's dense prompt (SAM's low-res mask input) on every slice where it has pixels, to "
        "refine that result",
    )
    segment.add_argument(
        "--label-value",
        action="append",
        type=positive_int,
        metavar="N",
        help="the label of --mask-prompt each object refines, one per object in order (default: the object's own "
        "label 1, 2, ...)",
    )
    segment.add_argument(
        "--multimask",
        action="store_true",
        help="SAM's three candidate masks per prediction: the one of highest predicted IoU is kept and the three "
        "IoUs are printed per object",
    )
    segment.add_argument("--out", required=True, help="output label file")
    segment.add_argument(
        "--axis", default=None, choices=["axial", "coronal", "sagittal"], help="volume: slicing axis (default axial)"
    )
    segment.add_argument(
        "--modality",
        default=None,
        choices=["ct", "mr"],
        help="intensity normalisation: ct (window) or mr (0.5-99.5 percentiles); default ct for a volume, and "
        "MedSAM's 2D rule for a 2D image (grey repeated to RGB, above 8 bits min-maxed), where --modality ct "
        "windows a CT slice instead",
    )
    segment.add_argument(
        "--window",
        default=None,
        metavar="PRESET|L,W",
        help="CT window: abdomen (default), lung, brain, mediastinum, bone, or LEVEL,WIDTH "
        "(on a 2D image it implies --modality ct)",
    )
    segment.add_argument(
        "--percentile-clip",
        action="store_true",
        help="2D image: MedSAM's optional 0.5-99.5 percentile cut-off of its 2D rule (pixels > 0)",
    )
    add_model_options(segment)
    add_preprocessing_option(segment)
    segment.add_argument("--label", action="append", metavar="NAME", help="segment name, one per object in order")
    segment.add_argument(
        "--preview",
        metavar="PICTURE",
        help="also write a picture of each object's key slice (a 2D image: the image) with its mask, box, points, "
        "name and orientation (.png, .jpg/.jpeg, .tif/.tiff or .bmp, as the suffix says)",
    )
    segment.set_defaults(func=run)
    return segment


def run(args: argparse.Namespace) -> int:
    """Every input is checked (options, output paths, the image, the prompts) before the model loads."""
    from ..images import KIND_FRAMES, KIND_IMAGE_2D, input_kind

    _check_options(args)
    kind = input_kind(args.image)
    if kind == KIND_FRAMES:
        raise UserError(
            f"{args.image}: a multi-frame colour DICOM (a cine) holds no volume and more than one 2D image; "
            "save the frame to segment as a 2D image"
        )
    if kind == KIND_IMAGE_2D:
        return run_image(args)
    return run_volume(args)


def _check_options(args: argparse.Namespace) -> None:
    """What can be refused before anything is read."""
    if not (args.box or args.box_ras or args.point or args.point_ras or args.negative_point or args.negative_point_ras):
        raise UserError(
            "give at least one --box I0,J0,K0,I1,J1,K1 (X0,Y0,X1,Y1 on a 2D image), --box-ras X0,Y0,Z0,X1,Y1,Z1 or --point"
        )
    if args.window is not None:
        from ..transforms import parse_window

        if args.modality == "mr":
            raise UserError("--window applies to CT only; MR is normalised by percentiles")
        parse_window(args.window)
    if args.label_value and not args.mask_prompt:
        raise UserError("--label-value chooses the label of --mask-prompt that an object refines; give --mask-prompt too")


def _object_names(args: argparse.Namespace, count: int) -> dict[int, str]:
    names = list(args.label or [])
    if len(names) > count:
        raise UserError(f"{len(names)} --label names for {count} objects")
    names += [f"Segment_{n}" for n in range(len(names) + 1, count + 1)]
    return dict(enumerate(names, start=1))


def _mask_values(args: argparse.Namespace, count: int) -> list[int] | None:
    values = args.label_value
    if values and len(values) != count:
        raise UserError(f"{len(values)} --label-value values for {count} objects: give one per object, in order")
    return values or None


def _points(args: argparse.Namespace, count: int, form: str) -> tuple[list[tuple[float, ...]], list[int], list[str]]:
    """The --point and --negative-point values (``count`` numbers each), their labels 1/0 and how they were given."""
    points, flags, names = [], [], []
    for option, given, flag in (("--point", args.point, 1), ("--negative-point", args.negative_point, 0)):
        for text in given or []:
            points.append(comma_numbers(text, option, count, form))
            flags.append(flag)
            names.append(f"{option} {text}")
    return points, flags, names


def _report_scores(scores: dict, keys: list[tuple[int, int, str]]) -> None:
    """One line per object (and slice of a points-only object): its candidates' predicted IoUs."""
    for label, z, where in keys:
        iou = scores.get(label, {}).get(z)
        if iou is None:
            continue
        kept = int(max(range(len(iou)), key=lambda m: iou[m])) + 1
        print(f"medsam: object {label}: IoU {' '.join(f'{float(v):.2f}' for v in iou)} (kept mask {kept}){where}")


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


def run_volume(args: argparse.Namespace) -> int:
    """A CT/MR volume: voxel (or RAS) boxes and points, MedSAM's 3D propagation."""
    from ..io import check_output_path, read_volume, write_label_volume
    from ..segment import (
        VoxelBox,
        check_voxel_box,
        normalized_volume,
        ras_box_to_voxel_box,
        ras_point_to_voxel,
        segment_volume_prompts,
        slice_name,
        volume_prompts,
    )
    from ..transforms import check_finite

    if args.percentile_clip:
        raise UserError("--percentile-clip is MedSAM's rule for 2D images; a volume is normalised by --modality")
    axis = args.axis or "axial"
    modality = args.modality or "ct"
    resolve_device_option(args)
    out = check_output_path(args.out, protect=[args.image])
    preview = check_preview(args.preview, protect=[args.image, out])
    volume = read_volume(args.image, series_uid=args.series_uid)
    try:
        check_finite(volume.array)
    except ValueError as err:
        raise UserError(f"{args.image}: {err}") from None
    boxes = [check_voxel_box(comma_numbers(b, "--box", 6, BOX_3D_FORM), volume.shape) for b in args.box or []]
    boxes += [
        ras_box_to_voxel_box(comma_numbers(b, "--box-ras", 6, "X0,Y0,Z0,X1,Y1,Z1 (RAS mm)"), volume) for b in args.box_ras or []
    ]
    points, flags, point_names = _points(args, 3, POINT_3D_FORM)
    for option, given, flag in (("--point-ras", args.point_ras, 1), ("--negative-point-ras", args.negative_point_ras, 0)):
        for text in given or []:
            points.append(ras_point_to_voxel(comma_numbers(text, option, 3, RAS_FORM), volume))
            flags.append(flag)
            point_names.append(f"{option} {text}")
    count = len(boxes) or 1
    segment_names = _object_names(args, count)
    mask = None
    if args.mask_prompt:
        mask = read_volume(args.mask_prompt)
    objects = [VoxelBox(box, label=n) for n, box in enumerate(boxes, start=1)]
    prompts = volume_prompts(
        volume,
        objects,
        axis,
        points,
        flags,
        mask_prompt=mask,
        mask_values=_mask_values(args, count),
        point_names=point_names,
        mask_name=f"--mask-prompt {args.mask_prompt}",
    )
    predictor = load_predictor(args)
    intensities = normalized_volume(volume, modality, args.window)
    scores: dict | None = {} if args.multimask else None
    labels = segment_volume_prompts(
        predictor,
        volume,
        prompts,
        axis,
        intensities=intensities,
        progress=progress_reporter("segmenting"),
        multimask=args.multimask,
        scores=scores,
    )
    picture = None
    if preview is not None:
        from ..preview import prompts_preview

        picture = prompts_preview(intensities, labels, volume.affine, axis, shown_prompts(prompts), segment_names)
    # The preview goes to a temporary file first, so that one which cannot be written leaves --out as it was.
    with staged_prompt_preview(preview, picture):
        write_label_volume(out, labels, volume.affine, segment_names=segment_names, protect=[args.image], nifti=volume.nifti)
    if scores is not None:
        keys = [
            # a box's key slice gets the user's box; an object of points alone has its own slices only
            (
                shown.label,
                shown.slice,
                f" on its {'' if shown.box is None else 'key '}slice {slice_name(volume, axis, shown.slice)}",
            )
            for shown in shown_prompts(prompts)
        ]
        _report_scores(scores, keys)
    counts = {name: int((labels == n).sum()) for n, name in segment_names.items()}
    print(f"wrote {out}: " + ", ".join(f"{name} {count} voxels" for name, count in counts.items()))
    warn_empty_segments(counts)
    return 0


# --------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------


def _refuse_volume_options(args: argparse.Namespace) -> None:
    """The options of volumes that mean nothing for one 2D image: each a clear error, not a silent no-op."""
    if args.axis is not None:
        raise UserError(f"--axis does not apply to a 2D image ({args.image} has one plane); leave it out")
    for option, given in (
        ("--box-ras", args.box_ras),
        ("--point-ras", args.point_ras),
        ("--negative-point-ras", args.negative_point_ras),
    ):
        if given:
            raise UserError(
                f"{option} (RAS millimetres) does not apply to a 2D image: give pixel columns and rows "
                f"({'--box X0,Y0,X1,Y1' if option == '--box-ras' else option.replace('-ras', '') + ' X,Y'})"
            )
    if args.series_uid is not None:
        raise UserError(f"--series-uid chooses a DICOM series of a folder; {args.image} is one 2D image")


def check_image_output(path: str, protect: list[str]) -> Path:
    """A 2D result's output path: a label image (.png, .tif, .tiff, .bmp) or a volume type, checked before any work."""
    from ..images import LABEL_IMAGE_SUFFIXES, check_label_image_path
    from ..io import check_output_path, check_output_type

    try:
        check_output_type(path)
    except ValueError:
        name = Path(path).name.lower()
        if not name.endswith((*LABEL_IMAGE_SUFFIXES, ".jpg", ".jpeg")):  # JPEG: check_label_image_path says why not
            raise UserError(
                f"{path}: unsupported output type for a 2D image; use a label image ({', '.join(LABEL_IMAGE_SUFFIXES)}) "
                f"or a volume ({VOLUME_OUTPUTS})"
            ) from None
        return check_label_image_path(path, protect=protect)
    return check_output_path(path, protect=protect)


def _read_mask_image(path: str):
    """A 2D mask prompt: a label image (H, W), or a one-slice volume (W, H, 1) as ``segment`` writes 2D results."""
    from ..images import is_2d_image, read_image_2d
    from ..io import read_volume
    from ..segment import volume_as_label_image

    if is_2d_image(path):
        mask = read_image_2d(path)
        if mask.is_rgb:
            raise UserError(f"--mask-prompt {path}: a colour image; a label image is grey (0 background, 1..N)")
        return mask.array
    try:
        return volume_as_label_image(read_volume(path).array)
    except ValueError as err:
        raise UserError(f"--mask-prompt {path}: {err}") from None


def run_image(args: argparse.Namespace) -> int:
    """A 2D image: pixel boxes and points, MedSAM_Inference.py's steps (or SAM's with --preprocessing sam)."""
    from ..images import LABEL_IMAGE_SUFFIXES, read_image_2d, write_label_image
    from ..io import write_label_volume
    from ..segment import image_intensities, image_prompts, label_image_as_volume, segment_image

    _refuse_volume_options(args)
    resolve_device_option(args)
    out = check_image_output(args.out, protect=[args.image])
    preview = check_preview(args.preview, protect=[args.image, out])
    image = read_image_2d(args.image)
    boxes = [comma_numbers(b, "--box", 4, BOX_2D_FORM) for b in args.box or []]
    points, flags, point_names = _points(args, 2, POINT_2D_FORM)
    count = len(boxes) or 1
    segment_names = _object_names(args, count)
    mask = _read_mask_image(args.mask_prompt) if args.mask_prompt else None
    prompts = image_prompts(
        image.shape,
        boxes,
        points,
        flags,
        mask_prompt=mask,
        mask_values=_mask_values(args, count),
        point_names=point_names,
        mask_name=f"--mask-prompt {args.mask_prompt}",
    )
    intensities = image_intensities(image, args.modality, args.window, args.percentile_clip)
    predictor = load_predictor(args, uint8_after_resize=True)  # MedSAM_Inference.py's uint8 cast after the resize
    labels, scores = segment_image(predictor, image, multimask=args.multimask, intensities=intensities, prompts=prompts)
    picture = None
    if preview is not None:
        from ..preview import image_preview

        title = f"{Path(args.image).name}: {image.shape[1]} x {image.shape[0]} px"
        picture = image_preview(intensities, labels, shown_prompts(prompts), segment_names, image.spacing, title)
    with staged_prompt_preview(preview, picture):
        if out.name.lower().endswith(LABEL_IMAGE_SUFFIXES):
            write_label_image(out, labels, protect=[args.image])
        else:
            array, affine = label_image_as_volume(labels, image.spacing)
            write_label_volume(out, array, affine, segment_names=segment_names, protect=[args.image])
    if args.multimask:
        _report_scores({label: {0: iou} for label, iou in scores.items()}, [(n, 0, "") for n in segment_names])
    counts = {name: int((labels == n).sum()) for n, name in segment_names.items()}
    print(f"wrote {out}: " + ", ".join(f"{name} {count} pixels" for name, count in counts.items()))
    warn_empty_segments(counts, hint="check the box and points")
    return 0
