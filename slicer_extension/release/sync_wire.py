"""Write the library's copy of the wire format from the 3D Slicer extension's, or check that it is current.

``slicer_extension/MedSAM/MedSAMLib/wire.py`` is the one source of the protocol's array codec and
voxel geometry; ``medsam_monai/wire.py`` is that file byte for byte below one generated header line::

    python slicer_extension/release/sync_wire.py           # after editing MedSAMLib/wire.py
    python slicer_extension/release/sync_wire.py --check   # exit 1 when the copy is stale

The source stays in the extension because the extension must work when its folder alone is dropped
into Slicer (or exported by export_extension.py), while the library is installed by pip from this
repository and can carry a generated file. Problems end with one ``sync_wire: error: ...`` line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

REPOSITORY = Path(__file__).resolve().parents[2]
SOURCE = REPOSITORY / "slicer_extension" / "MedSAM" / "MedSAMLib" / "wire.py"
TARGET = REPOSITORY / "medsam_monai" / "wire.py"
HEADER = (
    "# Generated from slicer_extension/MedSAM/MedSAMLib/wire.py by slicer_extension/release/sync_wire.py:"
    " edit that file, not this one.\n"
)


class SyncError(RuntimeError):
    """Something the person running the script can fix; the message is one line."""


def generated_text(source_text: str) -> str:
    """The copy's text: the header line, then the source unchanged."""
    return HEADER + source_text


def source_of_copy(copy_text: str) -> Optional[str]:
    """The source text a copy was generated from, or None when it does not start with the header."""
    return copy_text[len(HEADER) :] if copy_text.startswith(HEADER) else None


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SyncError(f"cannot read {path}: {error}") from None


def is_current(source: Path = SOURCE, target: Path = TARGET) -> bool:
    """True when ``target`` is exactly the generated copy of ``source``."""
    if not target.is_file():
        return False
    return read_text(target) == generated_text(read_text(source))


def write_copy(source: Path = SOURCE, target: Path = TARGET) -> bool:
    """Write ``target`` from ``source`` (atomically: a reader never sees half a file); False when it
    was current already and nothing was written."""
    if is_current(source, target):
        return False
    text = generated_text(read_text(source))
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(text.encode("utf-8"))
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise SyncError(f"cannot write {target}: {error}") from None
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sync_wire", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the copy differs from the source")
    parser.add_argument("--source", type=Path, default=SOURCE, help=argparse.SUPPRESS)  # for the tests
    parser.add_argument("--target", type=Path, default=TARGET, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.check:
            if is_current(args.source, args.target):
                return 0
            print(
                f"sync_wire: error: {args.target} is not the generated copy of {args.source}; "
                f"run python slicer_extension/release/sync_wire.py",
                file=sys.stderr,
            )
            return 1
        written = write_copy(args.source, args.target)
    except SyncError as error:
        print(f"sync_wire: error: {error}", file=sys.stderr)
        return 2
    print(f"{'wrote' if written else 'already current:'} {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
