"""Which torch device a run uses: ``auto`` (CUDA, else Apple MPS, else CPU) or a named one, validated.

One rule for every face (CLI, server, bundle): a device name is checked before any model loads,
and a name torch does not know, or a device this build or machine does not have, is refused with
one line that says what to use instead.
"""

from __future__ import annotations

import re

AUTO = "auto"
DEVICE_HELP = "auto (default: CUDA if present, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps"
_KINDS = ("cpu", "cuda", "mps")
# The spellings a model can run on, checked without importing torch (so a typo fails in milliseconds).
_DEVICE_NAME = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_device_name(name: str) -> str:
    """``name`` lower-cased if it spells a device a model can run on (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``, ``mps``), else a one-line ValueError. Imports nothing heavy: whether this machine
    has that device is :func:`resolve_device`'s job."""
    text = str(name).strip().lower()
    if not _DEVICE_NAME.fullmatch(text):
        raise ValueError(f"unknown device {name!r}; use {DEVICE_HELP}")
    return text


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device() -> str:
    """``"cuda"`` if torch sees a CUDA GPU, else ``"mps"`` if Apple's Metal backend is usable, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _mps_available(torch):
        return "mps"
    return "cpu"


def resolve_device(name: object = AUTO) -> str:
    """The device a run uses for ``name`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).

    Returns a string torch accepts (``"cuda:1"``, ``"cpu"``, ...). Raises a one-line ValueError
    for names torch does not know (``gpu``), kinds a model cannot run on (``meta``), and devices
    this build or machine lacks (``cuda`` without a GPU, ``cuda:3`` on a 2-GPU machine, ``mps``
    off Apple silicon).
    """
    text = str(name).strip().lower() if name is not None else AUTO
    if text in ("", AUTO):
        return auto_device()
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type not in _KINDS:
        raise ValueError(f"device {name!r} cannot run a model here; use {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} asked for, but torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not _mps_available(torch):
        raise ValueError(f"device {name!r} asked for, but this torch build has no usable Apple MPS; use --device auto or cpu")
    if device.type == "cpu":
        return "cpu"
    return str(device)


def describe_device(device: str) -> str:
    """A short human description of a resolved device (for the 'using ...' line)."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    if device == "mps":
        return "mps (Apple GPU)"
    return "cpu"
