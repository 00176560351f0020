"""Weights of OpenAI CLIP / open_clip ViT models in our modules (book 6.6): a user with a
local state-dict file gets the real model's zero-shot classifier, with OpenAI's tokenizer."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from lbdl_apps.clip.model import CLIP, ClipConfig
from lbdl_apps.clip.tokenizer import openai_tokenizer
from lbdl_apps.clip.torchscript import is_torchscript, read_torchscript
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
    TorchScript archive (its tensors only, no code run: torchscript.py); `state_dict`
    wrappers and DDP's `module.` prefixes removed."""
    cached = _READ.pop(_file_key(path), None)
    if cached is not None:
        return cached
    if path.suffix == ".safetensors":
        try:
            sd: Any = load_file(path)
        except (SafetensorError, OSError, ValueError):
            raise LbdlError(f"{path}: not a safetensors file (truncated or corrupt)") from None
    elif is_torchscript(path):
        sd = read_torchscript(path)
    else:
        sd = load_tensors(path, "state dict")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise LbdlError(f"{path}: holds no state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


_READ: dict[tuple, dict[str, Tensor]] = {}  # the plain torch file `state_dict_keys` just read


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def state_dict_keys(path: Path) -> set[str]:
    """The keys of the state dict in `path`, read cheaply where the format allows (the
    header of a safetensors file, the pickle of a TorchScript archive); a plain torch file
    is read whole, and kept for the `read_state_dict` that follows."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return set(handle.keys())
        except (SafetensorError, OSError, ValueError):
            raise LbdlError(f"{path}: not a safetensors file (truncated or corrupt)") from None
    if is_torchscript(path):
        return set(read_torchscript(path, load=False))
    sd = read_state_dict(path)
    _READ.clear()
    _READ[_file_key(path)] = sd
    return set(sd)


def publisher_act(path: Path, keys: set[str]) -> str:
    """The activation of the CLIP in a publisher's file: quick_gelu for OpenAI's weights (a
    TorchScript archive, or a state dict with OpenAI's `input_resolution` entry); for
    open_clip's, what the open_clip_config.json shipped beside it says; quick_gelu (the
    activation of OpenAI's weights, the most common ones) when nothing says."""
    if is_torchscript(path) or "input_resolution" in keys:
        return "quick_gelu"
    config = path.with_name("open_clip_config.json")
    if config.is_file():
        try:
            model = json.loads(config.read_text(encoding="utf-8")).get("model_cfg", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            model = {}
        return "quick_gelu" if isinstance(model, dict) and model.get("quick_gelu") else "gelu"
    return "quick_gelu"


def is_openai_clip(sd: Collection[str]) -> bool:
    """Whether `sd` (a state dict or its keys) has the keys of an OpenAI / open_clip ViT
    CLIP."""
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


def openai_checkpoint(
    sd: dict[str, Tensor], source: str, act: str = "quick_gelu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An OpenAI / open_clip state dict as an lbdl clip checkpoint: our CLIP's weights (in
    float32: OpenAI's are half) and its metadata (the config read off the shapes, OpenAI's
    tokenizer and preprocessing). `act`: "quick_gelu" for OpenAI's weights, "gelu" for most
    of open_clip's own."""
    try:
        config = openai_config(sd, act)
        state = {k: v.float() for k, v in from_openai_state_dict(sd).items()}
    except (KeyError, ValueError, IndexError) as error:
        raise LbdlError(f"{source}: weights do not map onto a CLIP ViT ({error})") from None
    tokenizer = openai_tokenizer(config.context_length)
    meta = {
        "task": "clip",
        "config": asdict(config),
        "tokenizer": tokenizer.to_meta(),
        "preprocessing": {"image_size": config.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD},
    }
    return state, meta


def convert_file(path: Path, act: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A local OpenAI / open_clip file (TorchScript archive, torch or safetensors state
    dict) as an lbdl checkpoint, its activation from the file (`publisher_act`) unless
    `act` says."""
    sd = read_state_dict(path)
    if not is_openai_clip(sd):
        raise LbdlError(f"{path}: not the state dict of an OpenAI / open_clip CLIP ViT")
    return openai_checkpoint(sd, str(path), act or publisher_act(path, set(sd)))


def matches(path: Path) -> bool:
    """Whether `path` holds an OpenAI / open_clip CLIP ViT, by its keys."""
    if not path.is_file():
        return False
    try:
        return is_openai_clip(state_dict_keys(path))
    except LbdlError:
        return False


def load_openai_clip(
    sd: dict[str, Tensor], source: str, act: str = "quick_gelu"
) -> tuple[CLIP, dict[str, Any]]:
    """Our CLIP with the weights of `sd`, and checkpoint-like metadata (OpenAI's tokenizer
    and preprocessing; meta["config"] is the typed config, as `load_model` gives it)."""
    state, meta = openai_checkpoint(sd, source, act)
    config = ClipConfig(**meta["config"])
    model = CLIP(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"{source}: weights do not map onto a CLIP ViT ({first})") from None
    return model, {**meta, "config": config, "source": source}
