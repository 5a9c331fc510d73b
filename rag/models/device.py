"""Device and dtype from Settings. Probes the hardware only when called, never at import."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rag.config import Settings
from rag.models.loading import ModelLoadError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available."""
    available: dict[str, Callable[[], bool]] = {
        "cuda": torch.cuda.is_available,
        "mps": torch.backends.mps.is_available,
        "cpu": lambda: True,
    }
    if name == "auto":
        return torch.device(next(n for n, probe in available.items() if probe()))
    if not available[name]():
        raise ModelLoadError(
            f"PAGERAG_DEVICE={name} but no {name.upper()} device is available here; "
            "set PAGERAG_DEVICE to auto or cpu."
        )
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 elsewhere; an explicit dtype is always honoured.

    MPS gets float32 rather than float16: Qwen2's activations can exceed float16's range
    (65504) and come out inf/NaN, and bfloat16 support on MPS depends on the macOS version.
    Set PAGERAG_DTYPE=float16 or bfloat16 to trade that risk for half the memory.
    """
    if name != "auto":
        return _DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_device_dtype(settings: Settings) -> tuple[torch.device, torch.dtype]:
    device = resolve_device(settings.device)
    return device, resolve_dtype(settings.dtype, device)
