"""Plain helpers that several test modules share (fixtures shared the same way live in conftest.py).

pytest puts this folder on ``sys.path`` (the tests are not a package), so a test module imports them
with ``from helpers import relayout``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medsam_monai.io import ImageReadError, Volume, read_volume

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"
if str(EXTENSION) not in sys.path:
    sys.path.insert(0, str(EXTENSION))

# The one rule for storing an image in another voxel order, shared with the Slicer tests (numpy only).
from MedSAMLib.testing import relayout as relayout_array  # noqa: E402


def relayout(volume: Volume, permutation, flips) -> Volume:
    """The same physical image stored in another voxel order: axes permuted (new axis ``d`` is old axis
    ``permutation[d]``), then the new axes with ``flips`` reversed; the affine keeps every voxel in place."""
    array, affine = relayout_array(volume.array, volume.affine, (permutation, flips))
    return Volume(array, affine)


def read_error_line(path, match: str, longest: int | None = 400, **kwargs) -> str:
    """The ImageReadError ``read_volume(path, **kwargs)`` raises, checked to match ``match`` and to be one
    line (no traceback, no multi-line message from ITK or pydicom) shorter than ``longest`` characters
    (None: a message that lists choices, as many as there are)."""
    with pytest.raises(ImageReadError, match=match) as error:
        read_volume(path, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    assert longest is None or len(message) < longest
    return message


def assert_partial(labels: np.ndarray) -> None:
    """An empty or a full mask would make a comparison of masks meaningless."""
    assert 0 < np.count_nonzero(labels) < labels.size
