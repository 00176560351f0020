"""The denoising network of `lbdl diffusion` (book 7.2): the core U-Net with a sinusoidal time
embedding, residual blocks and self-attention at low resolution, and an optional condition
(a class label or a CLIP text embedding) added to the time embedding. A learned "null"
condition stands for "no condition": training drops it in at random so that one network
gives both the conditional and the unconditional estimate (classifier-free guidance)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lbdl_apps.clip.api import TextEncoder, TextEncoderSpec
from lbdl_apps.core.backbones.unet import UNet
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.diffusion.schedule import PREDICTIONS, SCHEDULES

CONDITIONS = ("none", "class", "text")


@dataclass
class DiffusionConfig:
    """Everything `build_model` needs, stored in the checkpoint (the field names are the
    keys of the checkpoints written before the config was typed), with the noise schedule
    the network was trained under. `clip` describes the frozen CLIP text encoder of a
    text-conditional model (a dict, as read from JSON, becomes the typed one)."""

    image_size: int
    channels: int
    condition: str = "none"
    num_classes: int = 0
    cond_dim: int = 128
    base: int = 32
    multipliers: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    blocks: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [3])
    dropout: float = 0.0
    norm_groups: int = 8
    heads: int = 4
    schedule: str = "cosine"
    timesteps: int = 1000
    prediction: str = "eps"
    clip: TextEncoderSpec | None = None


class DiffusionUNet(nn.Module):
    """f(x_t, t, c; w): a U-Net whose output is the noise (or v) estimate.

    `cond` is None (unconditional, or the null condition for every row), int labels (B,) for
    a class-conditional model, or float embeddings (B, text_dim) for a text-conditional one;
    `drop` (B,) bool replaces the condition of the rows where it is True by the null one."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        c = config
        self.condition = c.condition
        cond_dim = c.cond_dim if self.condition != "none" else None
        self.unet = UNet(
            in_channels=c.channels,
            out_channels=c.channels,
            base=c.base,
            multipliers=c.multipliers,
            blocks_per_level=c.blocks,
            attention_levels=c.attention_levels,
            time_dim=c.base,
            cond_dim=cond_dim,
            dropout=c.dropout,
            norm_groups=c.norm_groups,
            heads=c.heads,
        )
        self.factor = self.unet.factor
        if self.condition == "class":
            self.num_classes = c.num_classes
            self.label_embedding = nn.Embedding(self.num_classes + 1, cond_dim)  # last: null
        elif self.condition == "text":
            if c.clip is None:
                raise LbdlError("model config: a text-conditional model without its CLIP")
            self.null_text = nn.Parameter(torch.zeros(cond_dim))
            self.clip = TextEncoder(c.clip).eval()  # frozen: encodes the prompts
            self.clip.requires_grad_(False)

    def condition_vector(self, x: Tensor, cond: Tensor | None, drop: Tensor | None) -> Tensor:
        """The per-row condition vector (B, cond_dim), with the null condition where `drop`
        is True."""
        batch = x.shape[0]
        if drop is None:
            drop = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if cond is None:
            drop = torch.ones(batch, dtype=torch.bool, device=x.device)
        if self.condition == "class":
            labels = cond if cond is not None else torch.zeros(batch, dtype=torch.long)
            labels = torch.where(drop, self.num_classes, labels.to(x.device).long())
            return self.label_embedding(labels)
        null = self.null_text.expand(batch, -1)  # (cond_dim,) -> (B, cond_dim)
        if cond is None:
            return null
        return torch.where(drop[:, None], null, cond.to(x.device, null.dtype))

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, drop: Tensor | None = None
    ) -> Tensor:
        if self.condition == "none":
            return self.unet(x, t.float())
        return self.unet(x, t.float(), self.condition_vector(x, cond, drop))


def check_settings(schedule: str, timesteps: int, prediction: str) -> None:
    """The noise schedule, its step count and the prediction target are known ones."""
    if schedule not in SCHEDULES:
        raise LbdlError(f"--schedule {schedule}: choose one of {', '.join(SCHEDULES)}")
    if prediction not in PREDICTIONS:
        raise LbdlError(f"--prediction {prediction}: choose one of {', '.join(PREDICTIONS)}")
    if timesteps < 2:
        raise LbdlError(f"--timesteps {timesteps}: must be at least 2")


def default_config(
    image_size: int,
    channels: int,
    condition: str = "none",
    num_classes: int = 0,
    text_dim: int = 0,
    base: int = 32,
    multipliers: tuple[int, ...] | None = None,
    blocks: int = 2,
    schedule: str = "cosine",
    timesteps: int = 1000,
    prediction: str = "eps",
    clip: TextEncoderSpec | None = None,
) -> DiffusionConfig:
    """A full model config; the levels are chosen so the smallest map is 4 to 8 pixels."""
    if condition not in CONDITIONS:
        raise LbdlError(f"condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    check_settings(schedule, timesteps, prediction)
    if multipliers is None:
        levels = 1
        while image_size % 2**levels == 0 and image_size // 2**levels >= 4 and levels < 4:
            levels += 1
        multipliers = (1, 2, 2, 2)[:levels]
    return DiffusionConfig(
        image_size=image_size,
        channels=channels,
        condition=condition,
        num_classes=num_classes,
        cond_dim=text_dim if condition == "text" else 4 * base,
        base=base,
        multipliers=list(multipliers),
        blocks=blocks,
        attention_levels=[len(multipliers) - 1],
        dropout=0.0,
        norm_groups=8 if base % 8 == 0 else 1,
        heads=4 if base % 4 == 0 else 1,
        schedule=schedule,
        timesteps=timesteps,
        prediction=prediction,
        clip=clip,
    )


def build_model(config: DiffusionConfig) -> DiffusionUNet:
    """Instantiate the network from its config (as stored in a checkpoint)."""
    size, factor = config.image_size, 2 ** (len(config.multipliers) - 1)
    if size % factor:
        raise LbdlError(
            f"image size {size}: must be a multiple of {factor} for a U-Net of "
            f"{len(config.multipliers)} levels"
        )
    try:
        return DiffusionUNet(config)
    except ValueError as error:
        raise LbdlError(f"model config: {error}") from None
