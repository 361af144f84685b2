"""``medsam demo``: the packaged tiny model on an embedded synthetic CT phantom, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from .model import load_predictor, resolve_device_option
from .outputs import check_preview, staged_preview, warn_empty_segments
from .parsing import add_device_options
from .progress import progress_reporter


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``medsam`` command's subparsers."""
    demo = subparsers.add_parser(
        "demo",
        help="segment an embedded synthetic CT phantom (offline)",
        description="Generate a synthetic CT-like phantom, segment each of its organs in 3D from a box with the "
        "packaged tiny model, and write the image, the mask and a preview PNG, with the Dice of each organ.",
    )
    demo.add_argument("--out-dir", default="medsam_demo", help="where to write (default ./medsam_demo)")
    demo.add_argument("--checkpoint", default=None, help="tiny weights (default: the packaged demo model, trained on phantoms)")
    add_device_options(demo)
    demo.set_defaults(func=run)
    return demo


def run(args: argparse.Namespace) -> int:
    from ..io import write_label_volume, write_volume
    from ..phantom import demo_phantom, label_box
    from ..segment import VoxelBox, dice, normalized_volume, segment_volume

    resolve_device_option(args)
    out_dir = Path(args.out_dir)
    preview = check_preview(str(out_dir / "demo_preview.png"), protect=[])
    phantom = demo_phantom()
    args.variant = "tiny"
    predictor = load_predictor(args)
    objects = [VoxelBox(label_box(phantom.labels, value), label=value) for value in sorted(phantom.organ_names)]
    intensities = normalized_volume(phantom.volume, "ct")
    labels = segment_volume(
        predictor, phantom.volume, objects, axis="axial", intensities=intensities, progress=progress_reporter("demo")
    )
    with staged_preview(preview, phantom.volume, intensities, labels, objects, "axial", phantom.organ_names):
        write_volume(out_dir / "demo_image.nii.gz", phantom.volume.array, phantom.volume.affine)
        write_label_volume(out_dir / "demo_mask.nii.gz", labels, phantom.volume.affine, segment_names=phantom.organ_names)
    scores = ", ".join(
        f"{name} {dice(phantom.labels == value, labels == value):.3f}" for value, name in sorted(phantom.organ_names.items())
    )
    print(
        f"demo: CT phantom {phantom.volume.shape}, one box per organ from its label; wrote {out_dir}/demo_mask.nii.gz, "
        f"demo_image.nii.gz, demo_preview.png; Dice against the phantom's organs: {scores}"
    )
    warn_empty_segments(
        {name: int((labels == value).sum()) for value, name in sorted(phantom.organ_names.items())},
        hint="the demo model missed it",
    )
    return 0
