"""OpenAI CLIP / open_clip weights in our modules (book 6.6): the same embeddings as
open_clip's own model with random weights, and OpenAI's tokenizer rebuilt exactly."""

from pathlib import Path

import pytest
import torch

from lbdl_apps.clip import load
from lbdl_apps.clip.interop import load_openai_clip
from lbdl_apps.clip.tokenizer import openai_tokenizer

open_clip = pytest.importorskip("open_clip")
TEXTS = ["a photo of a cat.", "Two DOGS, running!  On grass", "word " * 100]


@pytest.fixture(scope="module")
def reference():
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)
    return open_clip.CLIP(64, vision, text, quick_gelu=True).eval()


def test_openai_tokenizer_matches_open_clip() -> None:
    assert torch.equal(openai_tokenizer(77)(TEXTS), open_clip.tokenize(TEXTS))


def test_mapped_weights_give_open_clips_embeddings(reference) -> None:
    model, meta = load_openai_clip(reference.state_dict(), "random open_clip")
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours_img = model.encode_image(images)
        ours_txt = model.encode_text(openai_tokenizer(77)(TEXTS))
        theirs_img = reference.encode_image(images, normalize=True)
        theirs_txt = reference.encode_text(open_clip.tokenize(TEXTS), normalize=True)
    assert torch.allclose(ours_img, theirs_img, atol=1e-5)
    assert torch.allclose(ours_txt, theirs_txt, atol=1e-5)
    assert meta["config"].vision_heads == 2 and meta["config"].image_size == 32
    assert torch.isclose(model.scale(), reference.logit_scale.exp())


def test_load_reads_a_state_dict_file(reference, tmp_path: Path) -> None:
    path = tmp_path / "open_clip_model.pt"
    torch.save(reference.state_dict(), path)
    clip = load(path)
    with torch.no_grad():
        theirs = reference.encode_text(open_clip.tokenize(["a dog"]), normalize=True)
    assert torch.allclose(clip.encode_text(["a dog"]), theirs, atol=1e-5)
    assert clip.image_size == 32 and clip.embed_dim == 64
