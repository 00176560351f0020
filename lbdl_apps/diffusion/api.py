"""The diffusion Python API: `load(checkpoint).sample(16, prompts=["a red circle"])`; the CLI
uses it too."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from lbdl_apps.core.checkpoint import checkpoint_file, load_model, read_meta
from lbdl_apps.core.data import save_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Inference
from lbdl_apps.core.progress import progress_bar
from lbdl_apps.core.runtime import deploy
from lbdl_apps.diffusion.data import to_unit
from lbdl_apps.diffusion.model import DiffusionConfig, build_model
from lbdl_apps.diffusion.sampling import SAMPLERS, sample_loop
from lbdl_apps.diffusion.schedule import NoiseSchedule

if TYPE_CHECKING:
    from lbdl_apps.diffusion.guide import ClipGuide

TASK = "diffusion"
MODEL_KIND = "denoiser"
DEFAULT_GUIDANCE = 3.0
KINDS = {"none": "unconditional", "class": "class-conditional", "text": "text-conditional"}


@dataclass
class Samples:
    """Generated images (N, C, H, W) in [0, 1] and the condition each was asked for."""

    images: Tensor
    conditions: list[str]


def _safe_name(text: str, limit: int = 40) -> str:
    kept = "".join(c if c.isalnum() else "_" for c in text.strip().lower())
    return "_".join(part for part in kept.split("_") if part)[:limit] or "sample"


class Diffuser:
    """A trained denoiser with its noise schedule and conditioning, ready to sample."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.config: DiffusionConfig = meta["config"]
        self.device = device
        self.condition: str = self.config.condition
        self.labels: list[str] = list(meta.get("labels") or [])
        self.prediction: str = self.config.prediction
        self.schedule = NoiseSchedule(self.config.schedule, self.config.timesteps)
        self.text_encoder = getattr(model, "clip", None)  # a text-conditional model's CLIP

    @property
    def shape(self) -> tuple[int, int, int]:
        size = self.config.image_size
        return self.config.channels, size, size

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """The CLIP text embeddings this model is conditioned on."""
        if self.text_encoder is None:
            raise LbdlError("this model is not text-conditional")
        with torch.no_grad():
            return self.text_encoder.encode_text(list(prompts)).float().to(self.device)

    def class_index(self, name: str) -> int:
        if name in self.labels:
            return self.labels.index(name)
        folded = [label.lower() for label in self.labels]
        if name.lower() in folded:
            return folded.index(name.lower())
        if name.isdigit() and int(name) < len(self.labels):
            return int(name)
        shown = ", ".join(self.labels[:12]) + (", ..." if len(self.labels) > 12 else "")
        raise LbdlError(f"--class {name}: not a class of this model ({shown})")

    def _conditions(
        self, prompts: Sequence[str] | None, classes: Sequence[str] | None, guided_text: bool
    ) -> tuple[Tensor | None, list[str]]:
        """(condition tensor (K, ...) or None, K names) for the requested prompts/classes."""
        if classes:
            if self.condition != "class":
                raise LbdlError(f"--class: this model is {self._kind()}, not class-conditional")
            return torch.tensor([self.class_index(c) for c in classes]), list(classes)
        if prompts:
            if self.condition != "text" and not guided_text:
                raise LbdlError(
                    f"--prompt: this model is {self._kind()}, not text-conditional "
                    "(use --clip-guide to steer it with a noised CLIP)"
                )
            if self.condition == "text":
                return self.encode_text(prompts), list(prompts)
            return None, list(prompts)
        if self.condition == "class":
            return torch.arange(len(self.labels)), list(self.labels)
        return None, ["unconditional"]

    def _kind(self) -> str:
        return KINDS[self.condition]

    def predictor(self, cond: Tensor | None, guidance: float):
        """(x_t, t) -> (eps, x0), with classifier-free guidance at scale `guidance`:
        out_null + guidance * (out_cond - out_null), both from one batched forward pass."""
        model, schedule, prediction = self.model, self.schedule, self.prediction

        def predict(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            if cond is None or guidance == 1.0:
                out = model(x, t, cond)
            else:  # the batch twice: conditional rows, then null rows
                drop = torch.arange(2 * len(x), device=x.device) >= len(x)
                both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop)
                conditional, null = both.chunk(2)  # (2B, ...) -> 2 x (B, ...)
                out = null + guidance * (conditional - null)
            return schedule.eps_and_x0(prediction, out.float(), x, t)

        return predict

    def sample(
        self,
        n: int = 16,
        prompts: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        steps: int = 50,
        sampler: str = "ddpm",
        guidance: float | None = None,
        eta: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        clip_guide: ClipGuide | None = None,
        clip_scale: float = 0.0,
        quiet: bool = True,
    ) -> Samples:
        """`n` samples cycling through the prompts or classes (all classes of a class model
        when none is given); the same seed gives the same images (for the same batch size).

        `guidance` is the classifier-free guidance scale of a conditional model (default 3);
        `clip_guide` (a loaded noised CLIP) with `clip_scale` > 0 steers any model towards
        the prompts. The progress bar (core's) counts each batch's steps unless `quiet`."""
        self._check_request(n, steps, sampler, guidance, prompts, clip_guide)
        cond, names = self._conditions(prompts, classes, clip_guide is not None)
        scale = DEFAULT_GUIDANCE if guidance is None else guidance
        texts = clip_guide.encode_text(list(prompts)) if clip_guide is not None else None
        images = []
        with progress_bar(quiet, unit="steps") as bar:
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(n, start + batch_size)) % len(names)
                generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
                batch_cond = cond[rows].to(self.device) if cond is not None else None
                guide = None
                if clip_guide is not None and clip_scale > 0:
                    guide = clip_guide.gradient_fn(texts[rows].to(self.device), clip_scale)
                x = sample_loop(
                    self.predictor(batch_cond, scale),
                    self.schedule,
                    (len(rows), *self.shape),
                    steps,
                    sampler,
                    eta,
                    generator,
                    self.device,
                    guide,
                    progress=bar,
                )
                images.append(to_unit(x).cpu())
        return Samples(torch.cat(images), [names[i % len(names)] for i in range(n)])

    def _check_request(
        self,
        n: int,
        steps: int,
        sampler: str,
        guidance: float | None,
        prompts: Sequence[str] | None,
        clip_guide: ClipGuide | None,
    ) -> None:
        """The sampling options that this model cannot honour, as LbdlErrors."""
        if steps < 1:
            raise LbdlError(f"--steps {steps}: must be at least 1")
        if n < 1:
            raise LbdlError(f"--n {n}: must be at least 1")
        if sampler not in SAMPLERS:
            raise LbdlError(f"--sampler {sampler}: choose one of {', '.join(SAMPLERS)}")
        if guidance is not None and self.condition == "none":
            raise LbdlError(
                "--guidance: this model is unconditional; classifier-free guidance "
                "needs a class- or text-conditional model"
            )
        if guidance is not None and guidance < 0:
            raise LbdlError(f"--guidance {guidance}: must be >= 0")
        if clip_guide is not None and not prompts:
            raise LbdlError("--clip-guide: needs --prompt, the text to steer towards")
        if clip_guide is not None:
            wanted = (self.config.schedule, self.config.timesteps)
            if tuple(clip_guide.schedule) != wanted:
                raise LbdlError(
                    f"--clip-guide: trained with the {clip_guide.schedule[0]} "
                    f"schedule, T = {clip_guide.schedule[1]}; this model uses "
                    f"{wanted[0]}, T = {wanted[1]}"
                )


def save_samples(samples: Samples, out: str | Path) -> list[Path]:
    """grid.png (one column per condition when they cycle) and NNN_condition.png per sample."""
    folder = Path(out)
    paths = [
        save_image(image, folder / f"{i:03d}_{_safe_name(name)}.png")
        for i, (image, name) in enumerate(zip(samples.images, samples.conditions, strict=True))
    ]
    count = len(samples.images)
    per_row = len(set(samples.conditions))
    if per_row == 1 or per_row > 16:
        per_row = math.ceil(math.sqrt(count))
    grid = make_grid(samples.images, nrow=per_row, padding=2, pad_value=1.0)
    save_image(grid, folder / "grid.png")
    return paths


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", inference: Inference | None = None
) -> Diffuser:
    """Load a `lbdl diffusion` model checkpoint (a .safetensors file or a run folder), its
    denoiser run as `inference` says (default: PyTorch; book 8.2)."""
    from lbdl_apps.diffusion.export import deployment

    path = checkpoint_file(checkpoint, TASK)
    meta = read_meta(path, TASK)
    if meta.get("kind", MODEL_KIND) != MODEL_KIND:
        raise LbdlError(f"{path}: is a noised CLIP (for --clip-guide), not a diffusion model")
    model, meta = load_model(path, TASK, build_model, DiffusionConfig)
    diffuser = Diffuser(model, meta, resolve_device(device))
    deployed = deployment(diffuser)
    deploy(deployed, inference, diffuser.device)
    return diffuser
