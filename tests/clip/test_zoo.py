"""CLIP models by name (`openai:ViT-B-32`, `openai:ViT-B-16`, `laion:ViT-B-32`) and publisher
files recognised by their keys (book 6.6), proven against the publishers' own code with random
weights: OpenAI's TorchScript release read back by open_clip's `load_openai_model`, open_clip's
`create_model(..., pretrained=None)`; the same embeddings within 1e-4. Then every verb end to
end with such a file under each name, and the one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lbdl_apps.clip import load
from lbdl_apps.clip.torchscript import read_torchscript
from lbdl_apps.core import zoo
from lbdl_apps.core.checkpoint import read_meta
from lbdl_apps.core.errors import LbdlError
from tests.cli_helpers import assert_user_error, lbdl

open_clip = pytest.importorskip("open_clip")
TEXTS = ["a photo of a dog.", "a photo of a cat."]
OPENAI_EXTRAS = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}


def small_clip(quick_gelu: bool, seed: int = 0):
    """open_clip's own CLIP, small enough for a test (a 32 px ViT, 2 + 2 blocks)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)
    return open_clip.CLIP(64, vision, text, quick_gelu=quick_gelu).eval()


def openai_release(path: Path) -> None:
    """A file in the layout OpenAI released CLIP in: a traced TorchScript archive in half
    precision, with the input_resolution / context_length / vocab_size entries."""
    model = small_clip(quick_gelu=True)
    mask = model.attn_mask
    del model._buffers["attn_mask"]
    model.attn_mask = mask  # a constant of the trace, as in OpenAI's archives
    for name, value in OPENAI_EXTRAS.items():
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    inputs = (torch.randn(2, 3, 32, 32), open_clip.tokenize(TEXTS))
    traced = torch.jit.trace_module(model, {"forward": inputs}, check_trace=False)
    traced.half().save(str(path))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openai") / "ViT-B-32.pt"
    openai_release(path)
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$LBDL_HOME in a tmp folder, and no network (a name not cached is one line)."""
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(zoo.urllib.request, "urlopen", offline)
    (tmp_path / "home" / "downloads").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture
def pngs(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def embeddings(clip, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return clip.encode_image(images), clip.encode_text(TEXTS)


def reference_embeddings(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image = model.encode_image(images, normalize=True)
        return image, model.encode_text(open_clip.tokenize(TEXTS), normalize=True)


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16"])
def test_openai_names_give_open_clips_embeddings(release: Path, home: Path, arch: str) -> None:
    shutil.copy(release, home / "downloads" / f"{arch}.pt")
    reference = open_clip.load_openai_model(str(release), precision="fp32", device="cpu")
    clip = load(f"openai:{arch}")
    images = torch.randn(3, 3, 32, 32)
    for ours, theirs in zip(embeddings(clip, images), reference_embeddings(reference, images),
                            strict=True):  # fmt: skip
        assert torch.allclose(ours, theirs, atol=1e-4)
    assert clip.config.act == "quick_gelu" and clip.image_size == 32
    assert abs(clip.logit_scale - float(reference.logit_scale.exp())) < 1e-3
    meta = read_meta(home / "models" / f"openai--{arch}.safetensors", task="clip")
    assert meta["source"] == f"openai:{arch}" and meta["license"].startswith("MIT")


def test_openai_file_is_recognised_by_its_contents(release: Path, tmp_path: Path) -> None:
    odd = tmp_path / "weights.bin"  # not OpenAI's name: read by its keys
    shutil.copy(release, odd)
    clip = load(odd)
    assert clip.config.act == "quick_gelu"  # a TorchScript archive: OpenAI's weights
    reference = open_clip.load_openai_model(str(release), precision="fp32", device="cpu")
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(embeddings(clip, images)[0], reference_embeddings(reference, images)[0],
                          atol=1e-4)  # fmt: skip
    gelu = load(odd, act="gelu")  # --act still overrides
    assert gelu.config.act == "gelu"
    assert not torch.allclose(embeddings(gelu, images)[0], embeddings(clip, images)[0], atol=1e-4)


def test_laion_name_is_open_clips_vit_b_32_with_gelu(home: Path) -> None:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    save_file(model.state_dict(), str(home / "downloads" / "open_clip_model.safetensors"))
    clip = load("laion:ViT-B-32")
    assert clip.config.act == "gelu" and clip.image_size == 224 and clip.embed_dim == 512
    images = torch.randn(2, 3, 224, 224)
    for ours, theirs in zip(embeddings(clip, images), reference_embeddings(model, images),
                            strict=True):  # fmt: skip
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_open_clip_config_beside_a_state_dict_gives_its_activation(tmp_path: Path) -> None:
    model = small_clip(quick_gelu=False)
    path = tmp_path / "hub" / "open_clip_pytorch_model.bin"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 64}}))
    clip = load(path)
    assert clip.config.act == "gelu"
    images = torch.randn(2, 3, 32, 32)
    for ours, theirs in zip(embeddings(clip, images), reference_embeddings(model, images),
                            strict=True):  # fmt: skip
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_a_torchscript_archive_with_code_objects_is_refused(release: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(release) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(os.system, protocol=2)  # GLOBAL posix.system
            dst.writestr(item, data)
    with pytest.raises(LbdlError, match="beyond tensors"):
        read_torchscript(bad)
    assert_user_error(lbdl("clip", "embed", bad, "--text", "a"), "bad.pt", "neither an lbdl")


def test_every_verb_takes_a_name(release: Path, home: Path, pngs: Path, tmp_path: Path) -> None:
    shutil.copy(release, home / "downloads" / "ViT-B-32.pt")
    result = lbdl("clip", "zero-shot", "openai:ViT-B-32", pngs, "--labels", "cat,dog",
                  "--out", tmp_path / "zs")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "zs" / "zero_shot.csv").is_file()
    result = lbdl("clip", "embed", "openai:ViT-B-32", "--text", "a dog", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "e" / "embeddings.npy").shape == (1, 64)
    result = lbdl("clip", "search", "openai:ViT-B-32", pngs, "--text", "a dog",
                  "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = lbdl("clip", "train", "--init", "openai:ViT-B-32", "--epochs", "1", "--scenes", "40",
                  "--batch-size", "16", "--val-fraction", "0.2", "--run-dir", tmp_path / "run",
                  "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = read_meta(tmp_path / "run" / "model.safetensors", task="clip")
    assert tuned["config"]["act"] == "quick_gelu" and tuned["config"]["vocab_size"] == 49408


def test_names_bad_and_offline_are_one_line(pngs: Path, home: Path, tmp_path: Path) -> None:
    assert_user_error(lbdl("clip", "embed", "openai:ViT-L-99", "--text", "a"),
                      "openai:ViT-L-99", "not a known model name")  # fmt: skip
    line = assert_user_error(lbdl("clip", "embed", "laion:ViT-B-32", "--text", "a"),
                             "laion:ViT-B-32", "cannot be reached")  # fmt: skip
    assert "open_clip_model.safetensors" in line and str(home / "downloads") in line
    assert_user_error(lbdl("clip", "embed", "openai:ViT-B-32", "--text", "a", "--act", "relu"),
                      "--act relu")  # fmt: skip
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    assert_user_error(lbdl("clip", "zero-shot", other, pngs, "--labels", "a,b"),
                      "other.pt", "neither an lbdl checkpoint")  # fmt: skip
    assert not (home / "models").exists()
