"""Which device a run uses: `auto` takes cuda, then mps, then the CPU."""

from __future__ import annotations

import torch

from looplab.errors import DeviceError


def available_devices() -> list[str]:
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str) -> torch.device:
    """The torch device for `device=NAME`; DeviceError when this machine lacks it."""
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        raise DeviceError(
            f"device={name} is not available on this machine; available: {', '.join(available)}"
        )
    return torch.device(name)
