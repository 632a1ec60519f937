"""Which torch device and dtype the worker runs on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdserve.settings import Settings

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceConfig:
    """The resolved device and dtype."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def from_settings(cls, settings: Settings) -> DeviceConfig:
        """Resolve ``auto``: cuda, then mps, then cpu; float16 on accelerators, float32 on cpu."""
        name = settings.device
        if name == "auto":
            if torch.cuda.is_available():
                name = "cuda"
            elif torch.backends.mps.is_available():
                name = "mps"
            else:
                name = "cpu"
        device = torch.device(name)
        if settings.dtype == "auto":
            dtype = torch.float32 if device.type == "cpu" else torch.float16
        else:
            dtype = _DTYPES[settings.dtype]
        return cls(device=device, dtype=dtype)

    def describe(self) -> str:
        """E.g. ``cuda:0 float16 (NVIDIA H100 80GB HBM3)``."""
        label = f"{self.device} {str(self.dtype).removeprefix('torch.')}"
        if self.device.type == "cuda":
            label += f" ({torch.cuda.get_device_name(self.device)})"
        return label
