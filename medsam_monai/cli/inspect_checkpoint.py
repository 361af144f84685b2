"""``medsam inspect-checkpoint``: a checkpoint's format and the variant it fits."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``inspect-checkpoint`` on the ``medsam`` command's subparsers."""
    inspect = subparsers.add_parser(
        "inspect-checkpoint",
        help="tell a checkpoint's format and variant",
        description="Read a checkpoint in any supported format (SAM/MedSAM .pth, training checkpoints, "
        "Hugging Face .bin/.safetensors) without unpickling code, and print the variant it fits.",
    )
    inspect.add_argument("checkpoint", help="checkpoint file or Hugging Face folder")
    inspect.add_argument("--sha256", default=None, help="verify the file's sha256 first")
    inspect.set_defaults(func=run)
    return inspect


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when the checkpoint fits a known variant, 1 when it fits none."""
    from ..checkpoints import detect_variant, load_state_dict

    state = load_state_dict(args.checkpoint, sha256=args.sha256)
    variant = detect_variant(state)
    count = sum(v.numel() for v in state.values())
    print(f"{args.checkpoint}: {len(state)} tensors, {count:,} values, variant: {variant or 'none of the known ones'}")
    return 0 if variant else 1
