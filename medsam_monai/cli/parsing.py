"""What every ``medsam`` subcommand parses alike: negative numbers as values, one-line usage errors,
device names, number lists and the model options (--checkpoint, --variant, --device, --precision)."""

from __future__ import annotations

import argparse
import re

from ..devices import DEVICE_HELP, check_device_name
from ..models import MODEL_VARIANTS
from .errors import EXIT_USAGE, UserError

# A number or comma-separated list of numbers that starts with a minus sign: RAS millimetres
# (-40,10,-30,...), the lung window (-600,1500), a box's first index. argparse's own rule knows
# only single plain numbers, so it took these for unknown options ("expected one argument").
NEGATIVE_NUMBERS = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(,\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)*")


class MedSAMArgumentParser(argparse.ArgumentParser):
    """argparse with two changes every ``medsam`` subcommand shares (subparsers inherit the class):

    - a value that is a negative number or a list of numbers starting with one (``-40,10,-30,20,60,15``)
      is a value, not an unknown option, after ``--opt`` as after ``--opt=``;
    - a usage error is one line ``medsam: error: ...`` (exit status 2), as every other bad input.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse consults this pattern to tell a negative number from an option (no option of ours
        # looks like a number, so it never has to decide the other way).
        self._negative_number_matcher = re.compile(f"^(?:{NEGATIVE_NUMBERS.pattern})$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"medsam: error: {message} (see: {self.prog} --help)\n")


def device_name(text: str) -> str:
    """argparse type of --device: a spelling check only, so that a typo fails before torch loads."""
    try:
        return check_device_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def six_numbers(text: str, what: str) -> tuple[float, ...]:
    """``"I0,J0,K0,I1,J1,K1"`` (or millimetres) as 6 floats, or a UserError naming the option ``what``."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} {text!r} must be 6 comma-separated numbers") from None
    if len(values) != 6:
        raise UserError(f"{what} {text!r} must be 6 comma-separated numbers, got {len(values)}")
    return values


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --precision, which every command that runs a model takes."""
    parser.add_argument("--device", default="auto", type=device_name, help=DEVICE_HELP)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 (exact) or bf16 (faster)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --variant, --device and --precision, as ``segment`` and ``serve`` take them."""
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="weights in any supported format (default: the official weights of --variant, downloaded once into "
        "the cache, hash checked; for tiny, the packaged demo model trained on phantoms)",
    )
    parser.add_argument("--variant", default="vit_b", choices=list(MODEL_VARIANTS), help="network (default vit_b = MedSAM)")
    add_device_options(parser)
