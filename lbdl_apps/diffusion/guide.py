"""CLIP guidance (Nichol et al. 2022, GLIDE; book 7.2): a CLIP model (the encoders of
`lbdl clip`) trained on noised images x_t with the time step as an input, so that its
image-text similarity means something all along the denoising path; at sampling time the
gradient of that similarity with respect to x_t is added to the mean of every step. It works
on any diffusion model, unconditional ones included, as long as the noise schedules agree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from lbdl_apps.clip.loss import clip_loss
from lbdl_apps.clip.model import CLIP
from lbdl_apps.clip.model import default_config as clip_default_config
from lbdl_apps.clip.tokenizer import TextTokenizer, train_bpe
from lbdl_apps.core.checkpoint import read_checkpoint
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import sinusoidal_embedding
from lbdl_apps.core.runs import make_run_dir, resume_arguments, save_run_config
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions
from lbdl_apps.diffusion.data import Captioned, collate_images, load_diffusion_data
from lbdl_apps.diffusion.schedule import NoiseSchedule

TASK = "diffusion"
GUIDE_KIND = "noised-clip"


class TimedPatches(nn.Module):
    """The ViT's patch embedding plus a time embedding added to every patch token; the time
    embedding of the current batch is set by `NoisedClip.encode_image` before the call."""

    def __init__(self, patch_embed: nn.Conv2d) -> None:
        super().__init__()
        self.conv = patch_embed
        self.time: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out if self.time is None else out + self.time[:, :, None, None]


class NoisedClip(nn.Module):
    """CLIP whose image encoder reads (x_t, t): the time step enters through a sinusoidal
    embedding and an MLP (zero-initialised, so training starts from the plain CLIP)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.clip = CLIP(config["clip"])
        width = config["clip"]["vision_width"]
        self.time_dim = width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)
        self.clip.visual.patch_embed = TimedPatches(self.clip.visual.patch_embed)
        self.image_size: int = config["clip"]["image_size"]

    @property
    def patches(self) -> TimedPatches:
        return self.clip.visual.patch_embed  # type: ignore[return-value]

    def encode_image(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Noised images (B, C, H, W) in the diffusion's scale and time indices (B,) ->
        unit-norm embeddings; gray images are repeated to 3 channels, sizes resampled."""
        if x_t.shape[1] == 1:
            x_t = x_t.expand(-1, 3, -1, -1)
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
    path = Path(checkpoint)
    path = path / "model.safetensors" if path.is_dir() else path
    state, meta = read_checkpoint(path)
    if meta.get("task") != TASK or meta.get("kind") != GUIDE_KIND:
        what = meta.get("kind") or meta.get("task")
        raise LbdlError(
            f"--clip-guide {path}: is a {what!r} checkpoint, not a noised CLIP "
            "(make one with lbdl diffusion train-guide)"
        )
    model = NoisedClip(meta["config"])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise LbdlError(
            f"{path}: weights do not match the noised CLIP config ({str(error).splitlines()[0]})"
        ) from None
    resolved = resolve_device(device)
    model = model.to(resolved).eval().requires_grad_(False)
    config = meta["config"]
    tokenizer = TextTokenizer.from_meta(meta["tokenizer"])
    return ClipGuide(model, tokenizer, (config["schedule"], config["timesteps"]), resolved)


# ----------------------------------------------------------------------------------------------
# train-guide


@dataclass
class GuideArgs(TrainOptions):
    """Everything `lbdl diffusion train-guide` was asked for; saved as config.json."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.5
    val_fraction: float = 0.0
    clip: str | None = None
    model_size: str = "tiny"
    image_size: int | None = None
    schedule: str = "cosine"
    timesteps: int = 1000
    builtin_count: int = 6000
    vocab_size: int = 1000


def noised_clip_loss(
    model: NoisedClip, batch: tuple[Tensor, Any], schedule: NoiseSchedule, tokenizer: TextTokenizer
) -> tuple[Tensor, dict[str, Any]]:
    """The contrastive loss of CLIP between captions and their images noised to a random t."""
    x0, captions = batch
    t = torch.randint(0, schedule.steps, (len(x0),), device=x0.device)
    x_t = schedule.q_sample(x0, t, torch.randn_like(x0))
    images = model.encode_image(x_t, t)
    texts = model.encode_text(tokenizer(captions).to(x0.device))
    return clip_loss(images, texts, model.clip.scale()), {}


def _initial_clip(args: GuideArgs, captions: list[str], image_size: int) -> tuple:
    """(CLIP config, tokenizer, weights or None): from --clip, or a fresh model whose BPE
    tokenizer is trained on the captions."""
    if args.clip is not None:
        from lbdl_apps.clip.api import load

        clip = load(args.clip)
        return clip.meta["config"], clip.tokenizer, clip.model.state_dict()
    tokenizer = train_bpe(captions, args.vocab_size)
    try:
        config = clip_default_config(
            args.model_size,
            image_size,
            tokenizer.vocab_size,
            tokenizer.context_length,
            tokenizer.eot_id,
        )
    except ValueError as error:
        raise LbdlError(f"--model-size {args.model_size}: {error}") from None
    return config, tokenizer, None


def run_train_guide(args: GuideArgs, common: Common) -> dict[str, float]:
    """Train a noised CLIP on captioned images (the built-in scenes by default)."""
    if args.resume is not None:
        args, common = resume_arguments(args, common, TASK)
    schedule = NoiseSchedule(args.schedule, args.timesteps) if args.timesteps >= 2 else None
    if schedule is None:
        raise LbdlError(f"--timesteps {args.timesteps}: must be at least 2")
    console = Console(quiet=common.quiet)
    data = load_diffusion_data(
        args.data, args.image_size, 3, common.seed, args.skip_bad, args.builtin_count, captions=True
    )
    if not isinstance(data.train, Captioned):
        raise LbdlError(
            f"{args.data}: has no captions (use a manifest, image + .txt pairs, or "
            "the built-in scenes)"
        )
    clip_config, tokenizer, weights = _initial_clip(args, data.train.captions, data.image_size)
    config = {"clip": clip_config, "schedule": args.schedule, "timesteps": args.timesteps}
    model = NoisedClip(config)
    if weights is not None:
        weights = {
            k.replace("visual.patch_embed.", "visual.patch_embed.conv."): v
            for k, v in weights.items()
        }
        model.clip.load_state_dict(weights)
    console.print(
        f"data: {data.source}; {len(data.train)} captioned images; noised CLIP "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{args.schedule} schedule, T = {args.timesteps}"
    )
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "kind": GUIDE_KIND,
        "config": config,
        "tokenizer": tokenizer.to_meta(),
        "data": args.data,
    }
    trainer = Trainer(
        model,
        data.train,
        None,
        loss_fn=partial(noised_clip_loss, schedule=schedule, tokenizer=tokenizer),
        evaluate_fn=None,
        config=TrainConfig.from_args(args, common.seed, monitor="train_loss", mode="min"),
        run_dir=run_dir,
        device=common.torch_device(),
        checkpoint_meta=meta,
        collate_fn=collate_images,
        quiet=common.quiet,
    )
    last = trainer.fit(resume=args.resume is not None)
    print(f"run folder: {run_dir}")
    return last
