"""``medsam segment``: one structure per box in a CT/MR volume, propagated slice by slice in 3D."""

from __future__ import annotations

import argparse

from .errors import UserError
from .model import load_predictor, resolve_device_option
from .outputs import check_preview, staged_preview, warn_empty_segments
from .parsing import add_model_options, six_numbers
from .progress import progress_reporter


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``medsam`` command's subparsers."""
    segment = subparsers.add_parser(
        "segment",
        help="segment structures in a CT/MR volume from boxes (3D propagation)",
        description="Segment one structure per box in a CT/MR volume (NIfTI, NRRD, MHA/MHD or a DICOM "
        "series folder) with MedSAM: the box's extent along --axis is the slice range, its middle "
        "slice gets the box, and the masks propagate slice by slice. The labels are written on the "
        "input's own voxel grid (.nii.gz, .nii, .nrrd, .mha or 3D Slicer .seg.nrrd), atomically.",
    )
    segment.add_argument("image", help="image file or DICOM series folder")
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
        metavar="I0,J0,K0,I1,J1,K1",
        help="inclusive voxel box in the file's own index order (as ITK-SNAP and 3D Slicer IJK); repeat for several objects",
    )
    segment.add_argument(
        "--box-ras",
        action="append",
        metavar="X0,Y0,Z0,X1,Y1,Z1",
        help="box in RAS millimetres (3D Slicer's world coordinates); repeatable",
    )
    segment.add_argument("--out", required=True, help="output label file")
    segment.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"], help="slicing axis (default axial)")
    segment.add_argument("--modality", default="ct", choices=["ct", "mr"], help="intensity normalisation (default ct)")
    segment.add_argument(
        "--window",
        default=None,
        metavar="PRESET|L,W",
        help="CT window: abdomen (default), lung, brain, mediastinum, bone, or LEVEL,WIDTH",
    )
    add_model_options(segment)
    segment.add_argument("--label", action="append", metavar="NAME", help="segment name, one per box in order")
    segment.add_argument(
        "--preview",
        metavar="PICTURE",
        help="also write a picture of each box's key slice with its mask, box, name and orientation "
        "(.png, .jpg/.jpeg, .tif/.tiff or .bmp, as the suffix says)",
    )
    segment.set_defaults(func=run)
    return segment


def run(args: argparse.Namespace) -> int:
    """Every input is checked (options, output paths, the volume, the boxes) before the model loads."""
    from ..io import check_output_path, read_volume, write_label_volume
    from ..segment import VoxelBox, check_voxel_box, normalized_volume, ras_box_to_voxel_box, segment_volume
    from ..transforms import check_finite, parse_window

    if not args.box and not args.box_ras:
        raise UserError("give at least one --box I0,J0,K0,I1,J1,K1 or --box-ras X0,Y0,Z0,X1,Y1,Z1")
    if args.window is not None:
        if args.modality != "ct":
            raise UserError("--window applies to CT only; MR is normalised by percentiles")
        parse_window(args.window)
    resolve_device_option(args)
    out = check_output_path(args.out, protect=[args.image])
    preview = check_preview(args.preview, protect=[args.image, out])
    volume = read_volume(args.image, series_uid=args.series_uid)
    try:
        check_finite(volume.array)
    except ValueError as err:
        raise UserError(f"{args.image}: {err}") from None
    boxes = [check_voxel_box(six_numbers(b, "--box"), volume.shape) for b in args.box or []]
    boxes += [ras_box_to_voxel_box(six_numbers(b, "--box-ras"), volume) for b in args.box_ras or []]
    names = list(args.label or [])
    if len(names) > len(boxes):
        raise UserError(f"{len(names)} --label names for {len(boxes)} boxes")
    names += [f"Segment_{n}" for n in range(len(names) + 1, len(boxes) + 1)]
    objects = [VoxelBox(box, label=n) for n, box in enumerate(boxes, start=1)]
    predictor = load_predictor(args)
    intensities = normalized_volume(volume, args.modality, args.window)
    labels = segment_volume(
        predictor, volume, objects, axis=args.axis, intensities=intensities, progress=progress_reporter("segmenting")
    )
    segment_names = dict(enumerate(names, start=1))
    # The preview goes to a temporary file first, so that one which cannot be written leaves --out as it was.
    with staged_preview(preview, volume, intensities, labels, objects, args.axis, segment_names):
        write_label_volume(out, labels, volume.affine, segment_names=segment_names, protect=[args.image], nifti=volume.nifti)
    counts = {name: int((labels == n).sum()) for n, name in enumerate(names, start=1)}
    print(f"wrote {out}: " + ", ".join(f"{name} {count} voxels" for name, count in counts.items()))
    warn_empty_segments(counts)
    return 0
