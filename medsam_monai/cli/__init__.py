"""The ``medsam`` command line: a thin face over the library, one module per command.

``main(argv)`` runs one command and returns its exit status; ``build_parser()`` is its argparse
parser. Only argparse and the command modules' option tables are imported here: ``medsam --help``
and usage errors never pay for torch, MONAI or FastAPI, which each handler imports when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .. import __version__
from ..errors import one_line
from . import demo, download, everything, inspect_checkpoint, segment, serve
from .errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, Terminated, UserError
from .parsing import MedSAMArgumentParser

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "EXIT_USAGE", "UserError", "build_parser", "main"]

FINE_TUNING_EPILOG = """\
fine-tuning is not a medsam command: it is the MONAI bundle's train config. From bundles/medsam_vit_b:
  python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/my_task
(several GPUs: torchrun with configs/multi_gpu_train.json on top; see bundles/medsam_vit_b/docs/README.md)"""

# The subcommands in the order ``medsam --help`` lists them; each module registers itself.
COMMANDS = (download, inspect_checkpoint, segment, everything, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = MedSAMArgumentParser(
        prog="medsam",
        description="MedSAM for CT/MR volumes: segment structures from a box (medsam segment), find\n"
        "everything automatically (medsam everything), try it offline (medsam demo), serve the model\n"
        "to the 3D Slicer extension (medsam serve).",
        epilog=FINE_TUNING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medsam-monai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``medsam`` command; the exit status: 0 done, 2 bad input, 130 Ctrl-C, 143 SIGTERM.

    Everything, the heavy imports (torch, MONAI) and the model load included, happens inside the
    handlers, so an interruption at any point ends with one line, and temporary files are removed
    by the ``finally`` blocks the signal passes through.
    """
    with _sigterm_raises_terminated():
        try:
            return _run(argv)
        except KeyboardInterrupt:
            print("medsam: interrupted", file=sys.stderr)
            return EXIT_SIGINT
        except Terminated:
            print("medsam: terminated", file=sys.stderr)
            return EXIT_SIGTERM
        except Exception as err:  # noqa: BLE001 - every user-facing failure ends as one line
            if not _is_user_error(err):
                raise
            print(f"medsam: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings from the libraries as one ``medsam: warning:`` line, not two with source."""
    print(f"medsam: warning: {one_line(message)}", file=sys.stderr if file is None else file)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return func(args)
    finally:
        warnings.showwarning = shown


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread instead of killing the process
    on the spot (which would leave an output's hidden temporary file behind). Python lets only the main
    thread install handlers; elsewhere (main() called from a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_user_error(err: Exception) -> bool:
    # Only modules already imported can have raised their errors: looking them up in sys.modules
    # keeps this check from importing torch (and from being slow or interrupted) on the error path.
    kinds: list[type] = [UserError, ValueError, OSError]
    for module, name in [
        ("medsam_monai.checkpoints", "CheckpointError"),
        ("medsam_monai.download", "DownloadError"),
        ("medsam_monai.predictor", "Cancelled"),
    ]:
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds.append(getattr(loaded, name))
    return isinstance(err, tuple(kinds))
