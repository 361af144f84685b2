"""``medsam download``: official weights into the cache (resumable, hash-checked)."""

from __future__ import annotations

import argparse

from .progress import download_progress


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``download`` on the ``medsam`` command's subparsers."""
    download = subparsers.add_parser(
        "download",
        help="download official weights into the cache (resumable, hash-checked)",
        description="Download official weights once into the cache (MEDSAM_CACHE_DIR, default "
        "~/.cache/medsam_monai) and print the path. Resumes an interrupted download and checks its sha256.",
    )
    download.add_argument("name", nargs="?", default="medsam_vit_b", help="a known name (see --list) or a URL")
    download.add_argument("--list", action="store_true", help="list the known weights and exit")
    download.add_argument("--cache-dir", default=None, help="where to keep the weights")
    download.add_argument("--sha256", default=None, help="expected sha256 of a URL's file")
    download.add_argument(
        "--max-mb",
        type=float,
        default=None,
        help="refuse a download larger than this (default: the registered size, else 4096 MB)",
    )
    download.set_defaults(func=run)
    return download


def run(args: argparse.Namespace) -> int:
    from ..download import KNOWN_WEIGHTS, fetch_weights

    if args.list:
        for name, source in KNOWN_WEIGHTS.items():
            print(f"{name:14s} {source.description}  {source.url}")
        return 0
    max_bytes = None if args.max_mb is None else int(args.max_mb * 2**20)
    path = fetch_weights(
        args.name, cache_dir=args.cache_dir, sha256=args.sha256, progress=download_progress(), max_bytes=max_bytes
    )
    print(path)
    return 0
