"""What every ``medsam`` subcommand parses alike: negative numbers as values, one-line usage errors,
device names, number lists and the model options (--checkpoint, --variant, --device, --precision,
--preprocessing)."""

from __future__ import annotations

import argparse
import math
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


def comma_numbers(text: str, what: str, count: int, form: str = "") -> tuple[float, ...]:
    """``"X,Y"``, ``"I,J,K"``, ... as ``count`` floats, or a UserError naming the option ``what`` and the
    ``form`` expected (``"X0,Y0,X1,Y1 (pixel columns and rows)"``, say)."""
    expected = f"{what} {text!r} must be {count} comma-separated numbers" + (f" {form}" if form else "")
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(expected) from None
    if len(values) != count:
        raise UserError(f"{expected}, got {len(values)}")
    return values


def positive_int(text: str) -> int:
    """argparse type of a label value: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a label value (1 or more)")
    return value


def whole_number(text: str) -> int:
    """argparse type of a count or index: a whole number (its range is the command's check)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def finite_number(text: str) -> float:
    """argparse type of a threshold or size: a finite number (its range is the command's check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


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


# medsam_monai.transforms.PREPROCESSING_MODES, spelt out: importing it would import torch (a test checks they agree).
PREPROCESSING_CHOICES = ("medsam", "sam")


def add_preprocessing_option(parser: argparse.ArgumentParser) -> None:
    """--preprocessing: the image pipeline the weights were trained with (default: follow the checkpoint)."""
    parser.add_argument(
        "--preprocessing",
        default=None,
        choices=list(PREPROCESSING_CHOICES),
        help="image pipeline: medsam (stretch to 1024, [0, 1]) or sam (longest side 1024, mean/std, padding); "
        "default: the checkpoint's (sam for SAM's weights and vit_l/vit_h, medsam for MedSAM and tiny)",
    )
