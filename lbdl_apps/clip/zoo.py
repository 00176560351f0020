"""The CLIP models of the field, by name (book 6.6; `lbdl models`): OpenAI's ViT-B/32 and
ViT-B/16 as OpenAI released them (TorchScript archives whose URLs hold their sha256), and
LAION's ViT-B/32 as open_clip publishes it on the Hugging Face hub; and OpenAI / open_clip
files on disk, recognised by their keys. Torch is imported only when a file is converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lbdl_apps.core.zoo import Pretrained, PublisherFormat, Source, register, register_format

OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/{sha}/{file}"
OPENAI_LOOK_IN = ("~/.cache/clip",)  # where OpenAI's clip.load and open_clip keep them
OPENAI_LICENSE = "MIT (OpenAI CLIP)"
OPENAI = {  # name: (sha256 as in the URL of openai/CLIP's clip.py and open_clip's pretrained.py)
    "ViT-B-32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "ViT-B-16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
}
LAION_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
LAION_FILE = "open_clip_model.safetensors"  # open_clip prefers it to open_clip_pytorch_model.bin

for _arch, _sha in OPENAI.items():
    register(Pretrained(
        name=f"openai:{_arch}",
        task="clip",
        sources=(Source(OPENAI_URL.format(sha=_sha, file=f"{_arch}.pt"), _sha, 0, f"{_arch}.pt"),),
        license=OPENAI_LICENSE,
        description=f"OpenAI CLIP {'/'.join(_arch.rsplit('-', 1))} (WIT-400M), 224 px, quick_gelu",
        convert="lbdl_apps.clip.zoo:convert_openai",
        look_in=OPENAI_LOOK_IN,
    ))  # fmt: skip

register(Pretrained(
    name="laion:ViT-B-32",
    task="clip",
    sources=(Source(f"https://huggingface.co/{LAION_REPO}/resolve/main/{LAION_FILE}", "", 0,
                    LAION_FILE),),
    license="MIT (LAION)",
    description="open_clip ViT-B/32 laion2b_s34b_b79k (LAION-2B), 224 px, gelu",
    convert="lbdl_apps.clip.zoo:convert_laion",
))  # fmt: skip


def convert_openai(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAI's TorchScript archive -> our CLIP (QuickGELU, as OpenAI trained it)."""
    from lbdl_apps.clip.interop import convert_file

    return convert_file(files[0], act="quick_gelu")


def convert_laion(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """open_clip's state dict of laion2b_s34b_b79k -> our CLIP (GELU, as LAION trained it)."""
    from lbdl_apps.clip.interop import convert_file

    return convert_file(files[0], act="gelu")


def _matches(path: Path) -> bool:
    from lbdl_apps.clip.interop import matches

    return matches(path)


def _convert(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from lbdl_apps.clip.interop import convert_file

    return convert_file(path)


register_format(PublisherFormat("OpenAI / open_clip CLIP ViT", "clip", _matches, _convert))
