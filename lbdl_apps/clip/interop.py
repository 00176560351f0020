"""Weights of OpenAI CLIP / open_clip ViT models in our modules (book 6.6): a user with a
local state-dict file gets the real model's zero-shot classifier, with OpenAI's tokenizer."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from lbdl_apps.clip.model import CLIP, ClipConfig
from lbdl_apps.clip.tokenizer import openai_tokenizer
from lbdl_apps.core.backbones.vit import (
    from_openai_clip_text_state_dict,
    from_openai_clip_visual_state_dict,
)
from lbdl_apps.core.checkpoint import load_tensors
from lbdl_apps.core.errors import LbdlError

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
HEAD_WIDTH = 64  # OpenAI's models have width / 64 attention heads


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors file, a plain torch file (weights_only) or OpenAI's
    TorchScript archive; `state_dict` wrappers and DDP's `module.` prefixes removed."""
    try:
        if path.suffix == ".safetensors":
            sd: Any = load_file(path)
        elif _is_torchscript(path):
            sd = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            sd = load_tensors(path, "state dict")
    except LbdlError:
        raise
    except Exception as error:
        raise LbdlError(f"{path}: not a readable state dict ({type(error).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise LbdlError(f"{path}: holds no state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


def _is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (OpenAI's released .pt files): a zip with
    code beside its data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def is_openai_clip(sd: dict[str, Tensor]) -> bool:
    """Whether `sd` has the keys of an OpenAI / open_clip ViT CLIP."""
    keys = ("visual.conv1.weight", "token_embedding.weight", "ln_final.weight")
    return all(k in sd for k in keys)


def _layers(sd: dict[str, Tensor], prefix: str) -> int:
    found = {k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)}
    return len(found)


def openai_config(sd: dict[str, Tensor], act: str = "quick_gelu") -> ClipConfig:
    """Our model config read off the shapes of an OpenAI / open_clip state dict."""
    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    context_length, text_width = sd["positional_embedding"].shape
    vocab_size = sd["token_embedding.weight"].shape[0]
    return ClipConfig(
        image_size=patch * grid,
        patch_size=patch,
        vision_width=vision_width,
        vision_depth=_layers(sd, "visual.transformer.resblocks."),
        vision_heads=vision_width // HEAD_WIDTH,
        text_width=text_width,
        text_depth=_layers(sd, "transformer.resblocks."),
        text_heads=text_width // HEAD_WIDTH,
        embed_dim=sd["text_projection"].shape[1],
        vocab_size=vocab_size,
        context_length=context_length,
        eot_id=vocab_size - 1,  # <end_of_text>, the last id
        act=act,
    )


def from_openai_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI / open_clip CLIP keys -> the keys of our CLIP."""
    out = {f"visual.{k}": v for k, v in from_openai_clip_visual_state_dict(sd).items()}
    decoder = from_openai_clip_text_state_dict(sd)
    out.update({f"text.transformer.{k}": v for k, v in decoder.items()})
    out["text.proj.weight"] = sd["text_projection"].t()
    out["logit_scale"] = sd["logit_scale"].reshape(())  # (1,) or () -> ()
    return out


def load_openai_clip(
    sd: dict[str, Tensor], source: str, act: str = "quick_gelu"
) -> tuple[CLIP, dict[str, Any]]:
    """Our CLIP with the weights of `sd`, and checkpoint-like metadata (OpenAI's tokenizer
    and preprocessing; meta["config"] is the typed config, as `load_model` gives it).
    `act`: "quick_gelu" for OpenAI's weights, "gelu" for most of open_clip's own."""
    config = openai_config(sd, act)
    model = CLIP(config)
    try:
        model.load_state_dict(from_openai_state_dict(sd))
    except (KeyError, RuntimeError) as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"{source}: weights do not map onto a CLIP ViT ({first})") from None
    tokenizer = openai_tokenizer(config.context_length)
    meta = {
        "task": "clip",
        "config": config,
        "tokenizer": tokenizer.to_meta(),
        "preprocessing": {
            "image_size": config.image_size,
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
        },
        "source": source,
    }
    return model, meta
