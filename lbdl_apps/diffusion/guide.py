"""CLIP guidance (Nichol et al. 2022, GLIDE; book 7.2): a CLIP model (the encoders of
`lbdl clip`) trained on noised images x_t with the time step as an input, so that its
image-text similarity means something all along the denoising path; at sampling time the
gradient of that similarity with respect to x_t is added to the mean of every step. It works
on any diffusion model, unconditional ones included, as long as the noise schedules agree.
`lbdl diffusion train-guide` trains it (task.GuideTask)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.clip.api import ClipConfig, TextTokenizer
from lbdl_apps.clip.api import build_model as build_clip
from lbdl_apps.core.checkpoint import checkpoint_file, load_model, read_meta
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import sinusoidal_embedding

TASK = "diffusion"
GUIDE_KIND = "noised-clip"


@dataclass
class GuideConfig:
    """A noised CLIP: the CLIP model's config (a dict, as read from JSON, becomes the typed
    one) and the noise schedule it is trained under."""

    clip: ClipConfig
    schedule: str = "cosine"
    timesteps: int = 1000


class TimedPatches(nn.Module):
    """The ViT's patch embedding plus a time embedding added to every patch token; the time
    embedding of the current batch is set by `NoisedClip.encode_image` before the call."""

    def __init__(self, patch_embed: nn.Module) -> None:
        super().__init__()
        self.conv = patch_embed
        self.time: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)  # (B, width, grid, grid)
        return out if self.time is None else out + self.time[:, :, None, None]


class NoisedClip(nn.Module):
    """CLIP whose image encoder reads (x_t, t): the time step enters through a sinusoidal
    embedding and an MLP (zero-initialised, so training starts from the plain CLIP)."""

    def __init__(self, config: GuideConfig) -> None:
        super().__init__()
        self.clip = build_clip(config.clip)
        width = config.clip.vision_width
        self.time_dim = width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)
        self.clip.visual.patch_embed = TimedPatches(self.clip.visual.patch_embed)
        self.image_size: int = config.clip.image_size

    @property
    def patches(self) -> TimedPatches:
        return self.clip.visual.patch_embed  # type: ignore[return-value]

    def load_clip(self, weights: dict[str, Tensor]) -> None:
        """Start from the weights of a plain CLIP model (its patch embedding moved)."""
        moved = "visual.patch_embed.", "visual.patch_embed.conv."
        self.clip.load_state_dict({k.replace(*moved): v for k, v in weights.items()})

    def encode_image(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Noised images (B, C, H, W) in the diffusion's scale and time indices (B,) ->
        unit-norm embeddings; gray images are repeated to 3 channels, sizes resampled."""
        if x_t.shape[1] == 1:
            x_t = x_t.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W)
        if x_t.shape[-1] != self.image_size or x_t.shape[-2] != self.image_size:
            x_t = F.interpolate(
                x_t, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        self.patches.time = self.time_mlp(sinusoidal_embedding(t.float(), self.time_dim))
        try:
            return self.clip.encode_image(x_t)
        finally:
            self.patches.time = None

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.clip.encode_text(tokens)


@dataclass
class ClipGuide:
    """A loaded noised CLIP: embeds prompts and gives the guidance gradient."""

    model: NoisedClip
    tokenizer: TextTokenizer
    schedule: tuple[str, int]  # (kind, T) it was trained with
    device: torch.device

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))

    def gradient_fn(self, texts: Tensor, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
        """(x_t, t) -> scale * grad_x (image embedding . text embedding)."""

        def gradient(x: Tensor, t: Tensor) -> Tensor:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                similarity = (self.model.encode_image(x, t) * texts).sum()
                return scale * torch.autograd.grad(similarity, x)[0]

        return gradient


def load_guide(checkpoint: str | Path, device: str | torch.device = "cpu") -> ClipGuide:
    """Load a noised CLIP made by `lbdl diffusion train-guide`."""
    path = checkpoint_file(checkpoint, TASK)
    meta = read_meta(path)
    if meta.get("task") != TASK or meta.get("kind") != GUIDE_KIND:
        what = meta.get("kind") or meta.get("task")
        raise LbdlError(
            f"--clip-guide {path}: is a {what!r} checkpoint, not a noised CLIP "
            "(make one with lbdl diffusion train-guide)"
        )
    model, meta = load_model(path, TASK, NoisedClip, GuideConfig)
    resolved = resolve_device(device)
    model = model.to(resolved).eval().requires_grad_(False)
    config: GuideConfig = meta["config"]
    tokenizer = TextTokenizer.from_meta(meta["tokenizer"])
    return ClipGuide(model, tokenizer, (config.schedule, config.timesteps), resolved)  # type: ignore[arg-type]
