"""The restoration loss (book 6.1): the distance between the restored and the clean patches,
MSE (what PSNR measures) or L1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("mse", "l1")


def restoration_loss(
    model: nn.Module, batch: tuple[Tensor, Tensor], kind: str = "mse"
) -> tuple[Tensor, dict[str, Any]]:
    """MSE (or L1) between the restored and the clean patches; PSNR of the batch as a metric."""
    degraded, clean = batch
    restored = model(degraded)
    mse = F.mse_loss(restored.float(), clean)
    loss = mse if kind == "mse" else F.l1_loss(restored.float(), clean)
    return loss, {"psnr": -10.0 * torch.log10(mse.detach().clamp(min=1e-10))}
