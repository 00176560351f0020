"""Restoration metrics: PSNR and SSIM of patches for choosing the best epoch (torchmetrics,
data range 1), and of full images with the benchmark protocol (PSNR peak 255 in float64,
not clipped)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


@torch.no_grad()
def evaluate_restorer(model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Mean per-image PSNR and SSIM (data range 1) of the model's output and of its input."""
    local = {"data_range": 1.0, "sync_on_compute": False}  # under torchrun only rank 0 evaluates
    psnr = PeakSignalNoiseRatio(reduction="elementwise_mean", dim=(1, 2, 3), **local)
    psnr_in = PeakSignalNoiseRatio(reduction="elementwise_mean", dim=(1, 2, 3), **local)
    ssim = StructuralSimilarityIndexMeasure(**local)
    model.eval()
    for degraded, clean in loader:
        restored = model(degraded.to(device)).float().cpu().clamp(0, 1)
        psnr.update(restored, clean)
        psnr_in.update(degraded.clamp(0, 1), clean)
        ssim.update(restored, clean)
    return {
        "val_psnr": psnr.compute().item(),
        "val_ssim": ssim.compute().item(),
        "val_input_psnr": psnr_in.compute().item(),
    }


def psnr_255(clean: np.ndarray, other: np.ndarray) -> float:
    """PSNR with peak 255 in float64 (the benchmark protocol: not clipped)."""
    mse = np.mean((clean.astype(np.float64) * 255.0 - other.astype(np.float64) * 255.0) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim_01(clean: np.ndarray, other: np.ndarray) -> float:
    """SSIM (torchmetrics, data range 1) of two float (H, W, C) images, `other` clipped."""
    # (H, W, C) -> (1, C, H, W)
    a = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1), np.float32))[None]
    b = torch.from_numpy(np.ascontiguousarray(np.clip(other, 0, 1).transpose(2, 0, 1), np.float32))
    return float(ssim_fn(b[None], a, data_range=1.0))  # (C, H, W) -> (1, C, H, W)
