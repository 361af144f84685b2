"""The ``medsam`` command line: a thin face over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


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
    return parser


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

    return isinstance(err, (UserError, CheckpointError, DownloadError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
