"""The user's intensity choices, checked and turned into what the server expects.

CT is windowed as MedSAM was trained (level/width in HU, abdomen by default); MR is normalised by
the server from percentiles, so it takes no window. The preset values are the server's own.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

MODALITIES = ("ct", "mr")

# (level, width) in HU.
CT_WINDOW_PRESETS = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}
CUSTOM_WINDOW = "custom"
WINDOW_CHOICES = tuple(CT_WINDOW_PRESETS) + (CUSTOM_WINDOW,)

WindowArgument = Optional[Union[str, Tuple[float, float]]]


def window_argument(
    modality: str, preset: str = "abdomen", level: Optional[float] = None, width: Optional[float] = None
) -> WindowArgument:
    """The ``window`` to send: a preset name or (level, width) for CT, None for MR.

    Raises ValueError with one sentence for an unknown modality or preset, or a custom window
    without a positive width.
    """
    name = str(modality).strip().lower()
    if name not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    if name == "mr":
        return None
    choice = str(preset).strip().lower()
    if choice in CT_WINDOW_PRESETS:
        return choice
    if choice != CUSTOM_WINDOW:
        raise ValueError(f"CT window {preset!r} is not one of {', '.join(WINDOW_CHOICES)}")
    if level is None or width is None or not float(width) > 0:
        raise ValueError("a custom CT window needs a level and a positive width (HU)")
    return (float(level), float(width))


def normalize_window(modality: str, window: WindowArgument = None) -> WindowArgument:
    """``window`` as the server takes it: None for MR; for CT a preset name (default abdomen) or
    a (level, width) pair with a positive width. Raises ValueError with one sentence otherwise."""
    name = str(modality).strip().lower()
    if name not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    if name == "mr":
        return None
    if window is None:
        return "abdomen"
    if isinstance(window, str):
        return window_argument(name, window)
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"a CT window is a preset name or (level, width), got {window!r}") from None
    return window_argument(name, CUSTOM_WINDOW, level, width)


# Air is about -1000 HU in CT; MR intensities are arbitrary but almost never that negative.
_CT_AIR_THRESHOLD = -500.0


def guess_modality(minimum_value: float) -> str:
    """``ct`` when a volume's smallest value looks like air in Hounsfield units, else ``mr``."""
    return "ct" if float(minimum_value) <= _CT_AIR_THRESHOLD else "mr"
