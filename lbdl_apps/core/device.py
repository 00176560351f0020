"""Where the computation runs: device choice, AMP dtype, seeding and thread count."""

from __future__ import annotations

import random
import re

import numpy as np
import torch

from lbdl_apps.core.errors import LbdlError

_SPEC = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a torch.device; LbdlError if bad or unavailable.
    A torch.device is returned as it is."""
    if isinstance(spec, torch.device):
        return spec
    match = _SPEC.match(spec.strip().lower())
    if match is None:
        raise LbdlError(f"--device {spec}: not a device; use auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if index is not None and kind != "cuda":
        raise LbdlError(f"--device {spec}: only cuda takes an index (cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise LbdlError(
                f"--device {spec}: CUDA is not available on this machine "
                "(no GPU or a CPU-only torch); use --device cpu"
            )
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise LbdlError(f"--device {spec}: this machine has {count} CUDA device(s)")
        return torch.device("cuda") if index is None else torch.device("cuda", int(index))
    if kind == "mps" and not _mps_available():
        raise LbdlError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    return torch.device(kind)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for `device`: bf16 on CUDA when supported, else fp16; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Use `n` CPU threads for torch ops (torch's default when None)."""
    if n is None:
        return
    if n < 1:
        raise LbdlError(f"--threads {n}: must be at least 1")
    torch.set_num_threads(n)
