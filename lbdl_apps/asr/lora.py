"""Low-rank adaptation (LoRA, Hu et al. 2021; book 8.3): each adapted linear layer keeps its
pretrained weight W frozen and learns a low-rank update, y = x W^T + b + (alpha / r) x A^T B^T
with A (r, in) and B (out, r), B starting at zero so that training starts from the
pretrained model. `merge` folds the update into W, giving plain linear layers again.

The adapted layers keep their names and their `weight` and `bias`: a LoRA model's state dict
is the base model's plus `lora_a` / `lora_b` beside each adapted weight, so the base weights
load into it as they are, and the checkpoint stores base + adapters."""

# TODO(core): LoRALinear, add_lora and merge_lora are generic (any nn.Linear of any app);
# they belong in lbdl_apps/core/layers.py as
#   class LoRALinear(nn.Linear): (in_features, out_features, bias, rank, alpha)
#   add_lora(model: nn.Module, rank: int, alpha: float, names: tuple[str, ...]) -> list[str]
#   merge_lora(state: dict[str, Tensor], rank: int, alpha: float) -> dict[str, Tensor]

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.errors import LbdlError

# The projections adapted: attention's query, key, value and output, the MLP's two layers.
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
SUFFIXES = (".lora_a", ".lora_b")


class LoRALinear(nn.Linear):
    """A linear layer with a trainable low-rank update of rank `rank` beside its weight
    (book 8.3): (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int,
                 alpha: float) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias=bias)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear's weight

    def forward(self, x: Tensor) -> Tensor:
        # (..., in) -> (..., rank) -> (..., out), added to the frozen projection
        update = F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale
        return super().forward(x) + update

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def check_lora(rank: int | None, alpha: float | None) -> None:
    """LbdlErrors for a rank or alpha LoRA cannot have."""
    if rank is not None and rank < 1:
        raise LbdlError(f"--lora {rank}: the adapters' rank must be at least 1")
    if alpha is not None and (not math.isfinite(alpha) or alpha <= 0):
        raise LbdlError(f"--lora-alpha {alpha}: must be a positive number")
    if alpha is not None and rank is None:
        raise LbdlError("--lora-alpha: scales the adapters of --lora R; give --lora too")


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> int:
    """Replace, in place, every nn.Linear whose name ends with one of `targets` by a
    LoRALinear of the same weights; returns how many were adapted."""
    if rank < 1:
        raise LbdlError(f"--lora {rank}: the adapters' rank must be at least 1")
    chosen = [(name, module) for name, module in model.named_modules()
              if type(module) is nn.Linear and name.rsplit(".", 1)[-1] in targets]  # fmt: skip
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if rank > min(linear.in_features, linear.out_features):
            raise LbdlError(f"--lora {rank}: above the width of {name} "
                            f"({linear.in_features} -> {linear.out_features})")  # fmt: skip
        adapted = LoRALinear(linear.in_features, linear.out_features, linear.bias is not None,
                             rank, alpha).to(linear.weight.device)  # fmt: skip
        adapted.weight, adapted.bias = linear.weight, linear.bias
        setattr(parent, child, adapted)
    return len(chosen)


def train_only_adapters(model: nn.Module) -> int:
    """Freeze every parameter but the adapters'; returns the count of trainable values."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith(SUFFIXES))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(state: dict[str, Tensor], rank: int, alpha: float) -> dict[str, Tensor]:
    """A LoRA model's weights with each update folded into its weight, W + (alpha / r) B A
    (in float64, then the weight's dtype), and the adapters dropped: a plain model's."""
    merged = {k: v for k, v in state.items() if not k.endswith(SUFFIXES)}
    for key in state:
        if not key.endswith(".lora_a"):
            continue
        stem = key[: -len(".lora_a")]
        a, b, weight = state[key], state[f"{stem}.lora_b"], state[f"{stem}.weight"]
        if a.shape[0] != rank:
            raise LbdlError(f"{stem}: adapters of rank {a.shape[0]}, the config says {rank}")
        update = (b.double() @ a.double()) * (alpha / rank)  # (out, r) @ (r, in) -> (out, in)
        merged[f"{stem}.weight"] = (weight.double() + update).to(weight.dtype)
    return merged
