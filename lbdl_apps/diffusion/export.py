"""Deploying a diffusion model (book 8.2; 7.2): the denoiser for one sampling step as one
graph, called exactly as the sampler calls it: the noisy images x_t, the time indices t and,
for a conditional model, the condition (class labels or CLIP text embeddings) with the flags
of the rows that take the null condition (classifier-free guidance runs the batch twice,
conditional rows then null rows). The U-Net is convolutional: static int8, calibrated on the
data's images noised to time indices spread over the schedule, with their conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.export import CALIBRATION_INPUTS, Deployment, Graph, calibration_batches
from lbdl_apps.core.options import Quantization
from lbdl_apps.diffusion.api import DEFAULT_GUIDANCE, TASK, Diffuser
from lbdl_apps.diffusion.data import load_diffusion_data
from lbdl_apps.diffusion.model import DiffusionUNet

CONDITION_INPUTS = {"class": "class_label", "text": "text_embedding"}


class DenoiserStep(nn.Module):
    """DiffusionUNet's forward with every input a tensor (traceable): (x_t, t) for an
    unconditional model; (x_t, t, condition, null) for a conditional one, `null` (B,) bool
    marking the rows whose condition is replaced by the learned null one. Shares the
    model's weights; leaves out the CLIP text encoder (the prompts are embedded before)."""

    def __init__(self, model: DiffusionUNet) -> None:
        super().__init__()
        self.unet, self.condition = model.unet, model.condition
        if self.condition == "class":
            self.label_embedding, self.null_label = model.label_embedding, model.num_classes
        elif self.condition == "text":
            self.null_text = model.null_text

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, null: Tensor | None = None
    ) -> Tensor:
        if self.condition == "none" or cond is None or null is None:  # (x_t, t) alone
            return self.unet(x_t, t.float())
        if self.condition == "class":
            vector = self.label_embedding(torch.where(null, self.null_label, cond.long()))
        else:  # (B, 1) flags against (1, D) null and (B, D) embeddings: (B, D)
            vector = torch.where(null[:, None], self.null_text[None], cond)
        return self.unet(x_t, t.float(), vector)


class Denoiser(nn.Module):
    """What the sampler calls, `model(x_t, t, cond=None, drop=None)` as on DiffusionUNet,
    running a replacement of the DenoiserStep (ONNX Runtime, int8, autocast): the inputs the
    graph always takes are filled in (no `cond`: every row null; no `drop`: none)."""

    def __init__(self, step: nn.Module, condition: str, text_dim: int) -> None:
        super().__init__()
        self.step, self.condition, self.text_dim = step, condition, text_dim

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, drop: Tensor | None = None
    ) -> Tensor:
        if self.condition == "none":
            return self.step(x, t.long())
        batch, device = x.shape[0], x.device
        null = torch.zeros(batch, dtype=torch.bool, device=device) if drop is None else drop
        if cond is None:
            null = torch.ones(batch, dtype=torch.bool, device=device)
            shape = (batch,) if self.condition == "class" else (batch, self.text_dim)
            cond = torch.zeros(shape, device=device)
        cond = cond.long() if self.condition == "class" else cond.float()
        return self.step(x, t.long(), cond.to(device), null.to(device))


def deployment(diffuser: Diffuser) -> Deployment:
    """The denoiser's step, attached back as `diffuser.model` (where the sampler calls it):
    PyTorch fp32 keeps the model itself, anything else runs through a `Denoiser`."""
    model = diffuser.model
    step = DenoiserStep(model).eval()
    condition, text_dim = diffuser.condition, diffuser.config.cond_dim

    def attach(module: nn.Module) -> None:
        diffuser.model = model if module is step else Denoiser(module, condition, text_dim)

    names = ["x_t", "t"] + ([CONDITION_INPUTS[condition], "null"] if condition != "none" else [])
    batch = {0: "batch"}
    graph = Graph(
        "denoiser",
        step,
        tuple(t.to(diffuser.device) for t in sample_inputs(diffuser)),  # where the model is
        names,
        ["prediction"],
        dynamic={name: batch for name in [*names, "prediction"]},
        attach=attach,
        calibration=lambda data: calibration(diffuser, step, data),
    )
    return Deployment(TASK, Path(diffuser.meta["file"]), [graph], describe(diffuser))


def sample_inputs(diffuser: Diffuser) -> tuple[Tensor, ...]:
    """Two rows as the sampler gives them: noise, two time indices, and for a conditional
    model two conditions, the second row null (the guidance's unconditional half)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *diffuser.shape, generator=generator)
    t = torch.tensor([diffuser.schedule.steps - 1, diffuser.schedule.steps // 2])
    if diffuser.condition == "none":
        return x, t
    null = torch.tensor([False, True])
    if diffuser.condition == "class":
        return x, t, torch.tensor([0, min(1, len(diffuser.labels) - 1)]), null
    return x, t, torch.randn(2, diffuser.config.cond_dim, generator=generator), null


def calibration(
    diffuser: Diffuser, step: DenoiserStep, data: str | None
) -> list[tuple[Tensor, ...]]:
    """Static int8's inputs: CALIBRATION_INPUTS images of --calibrate DATA (read as `train
    --data` reads it; default: the model's training data, else the built-in scenes) noised
    to time indices spread evenly over the schedule (seeded), with their conditions (class
    labels, or the captions' CLIP embeddings), every other row null."""
    meta, (channels, size, _) = diffuser.meta, diffuser.shape
    source = calibration_data(diffuser, data)
    if source is None and channels != 3:
        raise LbdlError(
            "--quantize int8: this model's training data is not here and the built-in scenes "
            f"are RGB, the model {channels}-channel; give --calibrate DATA, images like its own"
        )
    found = load_diffusion_data(
        source, size, channels, 0, builtin_count=CALIBRATION_INPUTS,
        captions=diffuser.condition == "text", scene_label=meta.get("scene_label", "color"),
    )  # fmt: skip
    batches = calibration_batches(found.train, lambda batch: tuple(batch))
    schedule, total = diffuser.schedule, sum(len(b[0]) for b in batches)
    generator = torch.Generator().manual_seed(0)
    times = torch.linspace(0, schedule.steps - 1, total).round().long()
    times = times[torch.randperm(total, generator=generator)]
    inputs, start = [], 0
    for images, conditions in batches:
        t = times[start : start + len(images)]
        start += len(images)
        noise = torch.randn(images.shape, generator=generator)
        x_t = schedule.q_sample(images, t, noise)
        if diffuser.condition == "none":
            inputs.append((x_t, t))
            continue
        null = torch.arange(len(images)) % 2 == 1
        inputs.append((x_t, t, _conditions(diffuser, step, conditions, len(images)), null))
    return inputs


def calibration_data(diffuser: Diffuser, data: str | None) -> str | None:
    """The images that calibrate static int8: --calibrate DATA, else the model's training
    data when it is still there; None: the built-in scenes."""
    if data is not None and not Path(data).expanduser().exists():
        raise LbdlError(f"--calibrate {data}: no such file or folder")
    source = data if data is not None else diffuser.meta.get("data")
    if source is not None and not Path(source).expanduser().exists():
        return None  # the training data is gone: the built-in scenes
    return source


def calibration_note(diffuser: Diffuser, quantization: Quantization) -> str | None:
    """model.json's `calibration`: what calibrated static int8 (None without int8).
    TODO(core): core writes "built-in data" for every default; let the deployment say."""
    if not quantization.quantize:
        return None
    source = calibration_data(diffuser, quantization.calibrate) or "the built-in scenes"
    return f"{CALIBRATION_INPUTS} images of {source} noised over the schedule, with conditions"


def _conditions(diffuser: Diffuser, step: DenoiserStep, conditions: Any, count: int) -> Tensor:
    """Calibration conditions: the data's labels (within the model's classes) or its
    captions' embeddings; the model's classes in turn (or null text) when it has none."""
    if diffuser.condition == "class":
        classes = max(1, len(diffuser.labels))
        if isinstance(conditions, Tensor) and conditions.dtype == torch.long:
            return conditions % classes
        return torch.arange(count) % classes
    if isinstance(conditions, (list, tuple)) and conditions and isinstance(conditions[0], str):
        return diffuser.encode_text(list(conditions)).cpu()
    return step.null_text.detach().cpu().expand(count, -1).clone()  # (D,) -> (count, D)


def describe(diffuser: Diffuser) -> dict[str, Any]:
    """model.json's description: images, schedule, prediction, conditioning and sampling."""
    config, schedule = diffuser.config, diffuser.schedule
    channels, size, _ = diffuser.shape
    return {
        "image": f"x_t (batch, {channels}, {size}, {size}) float; clean images are in [-1, 1] "
        f"({'gray' if channels == 1 else 'RGB'}): show (x + 1) / 2 clamped to [0, 1]",
        "schedule": {
            "kind": config.schedule,
            "timesteps": config.timesteps,
            "rebuild": "cosine: alpha_bar(s) = cos^2((s/T + 0.008) / 1.008 * pi/2) / its value "
            "at 0, beta_t = min(1 - alpha_bar(t+1) / alpha_bar(t), 0.999); linear: beta from "
            "1e-4 to 0.02 (times 1000 / T) over T steps (lbdl_apps/diffusion/schedule.py)",
            "betas": schedule.betas.tolist(),
            "t": "int64 time index in 0..T-1 (T-1 the noisiest), one per row",
        },
        "prediction": {
            "type": config.prediction,
            "meaning": "eps: the noise; x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)"
            if config.prediction == "eps"
            else "v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0; x0 = sqrt(alpha_bar_t) "
            "x_t - sqrt(1 - alpha_bar_t) v",
        },
        "conditioning": conditioning(diffuser),
        "sampling": "x_T ~ N(0, I), then DDPM or DDIM steps over evenly spaced indices, x0 "
        "clamped to [-1, 1]; classifier-free guidance: out = out_null + s (out_cond - out_null), "
        f"s = {DEFAULT_GUIDANCE:g} by default (lbdl_apps/diffusion/sampling.py)",
    }


def conditioning(diffuser: Diffuser) -> dict[str, Any]:
    """What the condition inputs of the graph are."""
    if diffuser.condition == "none":
        return {"kind": "none", "inputs": []}
    null = "null (batch,) bool: True rows take the learned null condition (guidance)"
    if diffuser.condition == "class":
        return {"kind": "class", "labels": diffuser.labels, "null": null,
                "class_label": "(batch,) int64 index into labels"}  # fmt: skip
    clip = diffuser.config.clip
    return {
        "kind": "text",
        "null": null,
        "text_embedding": f"(batch, {diffuser.config.cond_dim}) float: the unit-norm CLIP text "
        "embedding of the prompt (the model's own CLIP text encoder, stored in its checkpoint)",
        "clip_source": clip.source if clip is not None else None,
    }
