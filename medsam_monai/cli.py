"""The ``medsam`` command line: a thin face over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__

EXIT_USAGE = 2


class UserError(ValueError):
    """A problem with the user's input: printed as one line, exit status 2, no traceback. A ValueError, so
    it is recognised also when this module runs as ``__main__`` (``python -m medsam_monai.cli``)."""


def _cmd_download(args: argparse.Namespace) -> int:
    from .download import KNOWN_WEIGHTS, fetch_weights, terminal_progress

    if args.list:
        for name, source in KNOWN_WEIGHTS.items():
            print(f"{name:14s} {source.description}  {source.url}")
        return 0
    path = fetch_weights(args.name, cache_dir=args.cache_dir, sha256=args.sha256, progress=terminal_progress())
    print(path)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoints import detect_variant, load_state_dict

    state = load_state_dict(args.checkpoint, sha256=args.sha256)
    variant = detect_variant(state)
    count = sum(v.numel() for v in state.values())
    print(f"{args.checkpoint}: {len(state)} tensors, {count:,} values, variant: {variant or 'none of the known ones'}")
    return 0 if variant else 1


DEFAULT_WEIGHTS = {"vit_b": "medsam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h"}


def _numbers(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} {text!r} must be 6 comma-separated numbers") from None
    if len(values) != 6:
        raise UserError(f"{what} {text!r} must be 6 comma-separated numbers, got {len(values)}")
    return values


def _terminal_progress(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} slices", end=end, file=sys.stderr, flush=True)

    return report


def _load_predictor(args: argparse.Namespace):
    import torch

    from .checkpoints import TINY_DEMO_CHECKPOINT, build_sam
    from .download import fetch_weights, terminal_progress
    from .predictor import MedSAMPredictor

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {args.device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    checkpoint = args.checkpoint
    if checkpoint is None and args.variant == "tiny":
        checkpoint = TINY_DEMO_CHECKPOINT
        print("medsam: note: the tiny demo model, trained on synthetic CT phantoms only: not for real images",
              file=sys.stderr)
    elif checkpoint is None:
        checkpoint = fetch_weights(DEFAULT_WEIGHTS[args.variant], progress=terminal_progress())
    model = build_sam(args.variant, checkpoint, device=args.device)
    return MedSAMPredictor(model, device=args.device, precision=args.precision)


def _cmd_segment(args: argparse.Namespace) -> int:
    from .io import check_output_path, read_volume, write_label_volume
    from .segment import VoxelBox, check_voxel_box, normalized_volume, ras_box_to_voxel_box, segment_volume
    from .transforms import check_finite, parse_window

    if not args.box and not args.box_ras:
        raise UserError("give at least one --box I0,J0,K0,I1,J1,K1 or --box-ras X0,Y0,Z0,X1,Y1,Z1")
    if args.window is not None:
        if args.modality != "ct":
            raise UserError("--window applies to CT only; MR is normalised by percentiles")
        parse_window(args.window)
    out = check_output_path(args.out, protect=[args.image])
    volume = read_volume(args.image)
    try:
        check_finite(volume.array)
    except ValueError as err:
        raise UserError(f"{args.image}: {err}") from None
    boxes = [check_voxel_box(_numbers(b, "--box"), volume.shape) for b in args.box or []]
    boxes += [ras_box_to_voxel_box(_numbers(b, "--box-ras"), volume) for b in args.box_ras or []]
    names = list(args.label or [])
    if len(names) > len(boxes):
        raise UserError(f"{len(names)} --label names for {len(boxes)} boxes")
    names += [f"Segment_{n}" for n in range(len(names) + 1, len(boxes) + 1)]
    objects = [VoxelBox(box, label=n) for n, box in enumerate(boxes, start=1)]
    predictor = _load_predictor(args)
    intensities = normalized_volume(volume, args.modality, args.window)
    labels = segment_volume(predictor, volume, objects, axis=args.axis, intensities=intensities,
                            progress=_terminal_progress("segmenting"))
    write_label_volume(out, labels, volume.affine, segment_names=dict(enumerate(names, start=1)), protect=[args.image])
    if args.preview:
        _write_preview(args.preview, volume, intensities, labels, objects, args.axis)
    counts = {name: int((labels == n).sum()) for n, name in enumerate(names, start=1)}
    print(f"wrote {out}: " + ", ".join(f"{name} {count} voxels" for name, count in counts.items()))
    return 0


def _write_preview(path, volume, intensities, labels, objects, axis) -> None:
    from .orientation import display_layout, parse_axis, to_display
    from .preview import save_preview
    from .segment import key_slices_ijk

    layout = display_layout(volume.affine, parse_axis(axis))
    image = to_display(intensities, layout)
    shown = to_display(labels, layout)
    keys = list(dict.fromkeys(key_slices_ijk(objects, volume, axis)))
    save_preview(path, [image[z] for z in keys], [shown[z] for z in keys])


def _cmd_demo(args: argparse.Namespace) -> int:
    from .io import write_label_volume, write_volume
    from .phantom import demo_phantom, label_box
    from .segment import VoxelBox, dice, normalized_volume, segment_volume

    out_dir = Path(args.out_dir)
    phantom = demo_phantom()
    args.variant = "tiny"
    predictor = _load_predictor(args)
    objects = [VoxelBox(label_box(phantom.labels, value), label=value) for value in sorted(phantom.organ_names)]
    intensities = normalized_volume(phantom.volume, "ct")
    labels = segment_volume(predictor, phantom.volume, objects, axis="axial", intensities=intensities,
                            progress=_terminal_progress("demo"))
    write_volume(out_dir / "demo_image.nii.gz", phantom.volume.array, phantom.volume.affine)
    write_label_volume(out_dir / "demo_mask.nii.gz", labels, phantom.volume.affine, segment_names=phantom.organ_names)
    _write_preview(out_dir / "demo_preview.png", phantom.volume, intensities, labels, objects, "axial")
    scores = ", ".join(f"{name} {dice(phantom.labels == value, labels == value):.3f}"
                       for value, name in sorted(phantom.organ_names.items()))
    print(f"demo: CT phantom {phantom.volume.shape}, one box per organ from its label; wrote {out_dir}/demo_mask.nii.gz, "
          f"demo_image.nii.gz, demo_preview.png; Dice against the phantom's organs: {scores}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsam",
        description="MedSAM for CT/MR volumes: segment structures from a box, serve the model, fine-tune it.",
    )
    parser.add_argument("--version", action="version", version=f"medsam-monai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    download = sub.add_parser(
        "download",
        help="download official weights into the cache (resumable, hash-checked)",
        description="Download official weights once into the cache (MEDSAM_CACHE_DIR, default "
        "~/.cache/medsam_monai) and print the path. Resumes an interrupted download and checks its sha256.",
    )
    download.add_argument("name", nargs="?", default="medsam_vit_b", help="a known name (see --list) or a URL")
    download.add_argument("--list", action="store_true", help="list the known weights and exit")
    download.add_argument("--cache-dir", default=None, help="where to keep the weights")
    download.add_argument("--sha256", default=None, help="expected sha256 of a URL's file")
    download.set_defaults(func=_cmd_download)

    inspect = sub.add_parser(
        "inspect-checkpoint",
        help="tell a checkpoint's format and variant",
        description="Read a checkpoint in any supported format (SAM/MedSAM .pth, training checkpoints, "
        "Hugging Face .bin/.safetensors) without unpickling code, and print the variant it fits.",
    )
    inspect.add_argument("checkpoint", help="checkpoint file or Hugging Face folder")
    inspect.add_argument("--sha256", default=None, help="verify the file's sha256 first")
    inspect.set_defaults(func=_cmd_inspect)

    segment = sub.add_parser(
        "segment",
        help="segment structures in a CT/MR volume from boxes (3D propagation)",
        description="Segment one structure per box in a CT/MR volume (NIfTI, NRRD, MHA/MHD or a DICOM "
        "series folder) with MedSAM: the box's extent along --axis is the slice range, its middle "
        "slice gets the box, and the masks propagate slice by slice. The labels are written on the "
        "input's own voxel grid (.nii.gz, .nii, .nrrd, .mha or 3D Slicer .seg.nrrd), atomically.",
    )
    segment.add_argument("image", help="image file or DICOM series folder")
    segment.add_argument("--box", action="append", metavar="I0,J0,K0,I1,J1,K1",
                         help="inclusive voxel box in the file's own index order (as ITK-SNAP and 3D Slicer IJK); repeat for several objects")
    segment.add_argument("--box-ras", action="append", metavar="X0,Y0,Z0,X1,Y1,Z1",
                         help="box in RAS millimetres (3D Slicer's world coordinates); repeatable")
    segment.add_argument("--out", required=True, help="output label file")
    segment.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"], help="slicing axis (default axial)")
    segment.add_argument("--modality", default="ct", choices=["ct", "mr"], help="intensity normalisation (default ct)")
    segment.add_argument("--window", default=None, metavar="PRESET|L,W",
                         help="CT window: abdomen (default), lung, brain, mediastinum, bone, or LEVEL,WIDTH")
    _model_options(segment)
    segment.add_argument("--label", action="append", metavar="NAME", help="segment name, one per box in order")
    segment.add_argument("--preview", metavar="PNG", help="also write a PNG of the key slices with the mask")
    segment.set_defaults(func=_cmd_segment)

    demo = sub.add_parser(
        "demo",
        help="segment an embedded synthetic CT phantom (offline)",
        description="Generate a synthetic CT-like phantom, segment each of its organs in 3D from a box with the "
        "packaged tiny model, and write the image, the mask and a preview PNG, with the Dice of each organ.",
    )
    demo.add_argument("--out-dir", default="medsam_demo", help="where to write (default ./medsam_demo)")
    demo.add_argument("--checkpoint", default=None, help="tiny weights (default: the packaged demo model, trained on phantoms)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    demo.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 (exact) or bf16 (faster)")
    demo.set_defaults(func=_cmd_demo)
    from .server.command import add_serve_command  # `medsam serve`; FastAPI is imported only when it runs

    add_serve_command(sub)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="weights in any supported format (default: the official weights of --variant, downloaded once into "
                        "the cache, hash checked; for tiny, the packaged demo model trained on phantoms)")
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"], help="network (default vit_b = MedSAM)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 (exact) or bf16 (faster)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except KeyboardInterrupt:
        print("medsam: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every user-facing failure ends as one line
        if not _is_user_error(err):
            raise
        print(f"medsam: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(err: Exception) -> bool:
    from .checkpoints import CheckpointError
    from .download import DownloadError
    from .predictor import Cancelled

    return isinstance(err, (UserError, CheckpointError, DownloadError, ValueError, OSError, Cancelled))


if __name__ == "__main__":
    sys.exit(main())
