"""The optimisation the Trainer does (book 3.3-3.6, 5.2): AdamW with weight decay on the
weight matrices only, a linear warm-up then cosine decay of the learning rate, and an EMA of
the weights whose decay ramps up."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels, none on biases and norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1, then cosine decay towards 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adamw_with_schedule(
    model: nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW over `param_groups` and its warm-up + cosine schedule (stepped per update)."""
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    return optimizer, LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))


def ema_with_warmup(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """EMA update for AveragedModel whose decay ramps up as min(decay, (1 + n) / (10 + n))
    after n updates, so that early EMA weights follow the training instead of averaging in
    the random initialisation (a plain 0.999 EMA lags ~1000 steps behind)."""

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], n_averaged: Tensor) -> None:
        n = float(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, weight)
        else:  # integer buffers (BatchNorm's batch counter) follow the model
            for ema, current in zip(ema_params, params, strict=True):
                ema.copy_(current)

    return update
