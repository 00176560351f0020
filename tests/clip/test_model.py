"""The text encoder's end-of-text pooling, the tokenizer's BPE and fixed context, the
encoders' shapes."""

import subprocess
import sys
from collections import Counter

import torch

from lbdl_apps.clip.model import CLIP, default_config, eos_positions
from lbdl_apps.clip.tokenizer import learn_merges, train_bpe

CAPTIONS = ["a red circle on the left.", "a small blue square at the top.", "a star."]


def _model(tokenizer, image_size: int = 16) -> CLIP:
    torch.manual_seed(0)
    config = default_config("tiny", image_size, tokenizer.vocab_size, 12, tokenizer.eot_id)
    return CLIP(config).eval()


def test_tokenizer_wraps_truncates_and_pads() -> None:
    tokenizer = train_bpe(CAPTIONS, vocab_size=100, context_length=12)
    tokens = tokenizer(["a star.", "a red circle " * 10])
    assert tokens.shape == (2, 12)
    short_end = int(eos_positions(tokens, tokenizer.eot_id)[0])
    assert tokens[0, 0] == tokenizer.sot_id
    assert (tokens[0, short_end + 1 :] == tokenizer.pad_id).all()
    assert tokens[1, -1] == tokenizer.eot_id  # truncated, still ends with end-of-text


def test_bpe_merges_the_most_frequent_pair_first() -> None:
    """Sennrich et al.'s example: low x5, lower x2, newest x6, widest x3. (e, s) and
    (s, t</w>) tie at 9, string order takes (e, s); then (es, t</w>) 9, (l, o) 7, and of the
    pairs at 6, (e, w) first in string order."""
    words = Counter({
        ("l", "o", "w</w>"): 5,
        ("l", "o", "w", "e", "r</w>"): 2,
        ("n", "e", "w", "e", "s", "t</w>"): 6,
        ("w", "i", "d", "e", "s", "t</w>"): 3,
    })  # fmt: skip
    assert learn_merges(words, 4) == [("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w")]
    texts = ["low " * 5, "lower " * 2, "newest " * 6, "widest " * 3]
    tokenizer = train_bpe(texts, vocab_size=4 + 11 + 4, context_length=8)
    assert tokenizer.vocab_size == 4 + 11 + 4  # specials, 11 symbols, 4 merges
    assert tokenizer.tokenizer.encode("Lowest").tokens == ["lo", "w", "est</w>"]


def test_the_same_captions_give_the_same_tokenizer_in_every_process() -> None:
    program = (
        "from lbdl_apps.clip.tokenizer import train_bpe; "
        "print(train_bpe(['a red thing on a gray ground', 'the blue dot', 'red red'] * 4, 40)"
        ".tokenizer.to_str())"
    )
    runs = {subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}  # fmt: skip
    assert len(runs) == 1


def test_pooling_reads_the_end_of_text_token_whatever_the_padding() -> None:
    tokenizer = train_bpe(CAPTIONS, vocab_size=100, context_length=12)
    model = _model(tokenizer)
    tokens = tokenizer(["a star.", "a small blue square at the top."])
    end = eos_positions(tokens, tokenizer.eot_id)
    assert end[0] < end[1] < 11
    with torch.no_grad():
        states = model.text.transformer(tokens, logits=False)
        expected = model.text.proj(states[torch.arange(2), end])
        assert torch.allclose(model.text(tokens), expected)
        repadded = tokens.clone()
        repadded[0, end[0] + 1 :] = 5  # other tokens after the end: the causal mask hides them
        assert torch.allclose(model.text(repadded)[0], model.text(tokens)[0], atol=1e-6)
        assert not torch.allclose(model.text(tokens)[0], states[0, -1] @ model.text.proj.weight.t())


def test_embeddings_are_unit_norm_and_shared_size() -> None:
    tokenizer = train_bpe(CAPTIONS, vocab_size=100, context_length=12)
    model = _model(tokenizer)
    with torch.no_grad():
        images = model.encode_image(torch.randn(3, 3, 16, 16))
        texts = model.encode_text(tokenizer(CAPTIONS))
    assert images.shape == texts.shape == (3, 64)
    assert torch.allclose(images.norm(dim=1), torch.ones(3))
    assert torch.allclose(texts.norm(dim=1), torch.ones(3))
