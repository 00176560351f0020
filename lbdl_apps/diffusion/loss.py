"""The training losses of `lbdl diffusion` (book 7.2): the denoiser's regression of the noise
(or v) at a random step, with the condition dropped at random for classifier-free guidance,
and the noised CLIP's contrastive loss on images noised to a random step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.clip.api import TextTokenizer, clip_loss
from lbdl_apps.diffusion.schedule import NoiseSchedule


def diffusion_loss(
    model: nn.Module,
    batch: tuple[Tensor, Any],
    schedule: NoiseSchedule,
    prediction: str,
    conditional: bool,
    cond_drop: float,
) -> tuple[Tensor, dict[str, Any]]:
    """MSE between the network's output on x_t and the noise (or v), t uniform in [0, T):
    draw t and the noise, make x_t in closed form; the condition of a row is replaced by
    the null one with probability `cond_drop`, so that the model also learns the
    unconditional estimate that classifier-free guidance needs."""
    x0, cond = batch
    t = torch.randint(0, schedule.steps, (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    if conditional:
        drop = torch.rand(len(x0), device=x0.device) < cond_drop
        output = model(x_t, t, cond, drop)
    else:
        output = model(x_t, t)
    loss = F.mse_loss(output.float(), schedule.target(prediction, x0, t, noise))
    return loss, {}


def noised_clip_loss(
    model: nn.Module, batch: tuple[Tensor, Any], schedule: NoiseSchedule, tokenizer: TextTokenizer
) -> tuple[Tensor, dict[str, Any]]:
    """The contrastive loss of CLIP between captions and their images noised to a random t
    (`model` is a guide.NoisedClip)."""
    x0, captions = batch
    t = torch.randint(0, schedule.steps, (len(x0),), device=x0.device)
    x_t = schedule.q_sample(x0, t, torch.randn_like(x0))
    images = model.encode_image(x_t, t)
    texts = model.encode_text(tokenizer(captions).to(x0.device))
    return clip_loss(images, texts, model.clip.scale()), {}
