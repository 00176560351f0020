"""Decoding of `lbdl asr` (book 6.5): the key/value cache changes nothing but the cost, beam
width 1 is greedy, and padding a batch changes no result, with either front end."""

from __future__ import annotations

import pytest
import torch

from lbdl_apps.asr.decode import Specials, beam_search, greedy_decode
from lbdl_apps.asr.model import FRONTENDS, MaskedBatchNorm2d, build_model, default_config

SPECIALS = Specials(sot=1, eot=2, no_speech=3)


@pytest.fixture(scope="module", params=FRONTENDS)
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    config = default_config("nano", vocab_size=300, max_tokens=24, frontend=request.param)
    net = build_model(config).eval()
    with torch.no_grad():  # larger weights: outputs that depend more on the audio
        for p in net.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.2)
    return net


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(3, 80, 50), torch.tensor([50, 37, 20])


def test_encoder_downsamples_the_frames_and_masks_padding(model) -> None:
    mel, lengths = batch()
    audio, mask = model.encode(mel, lengths)
    if model.config.frontend == "conv1d":  # ceil(50 / 2); ceil(37 / 2), ceil(20 / 2) kept
        assert audio.shape == (3, 25, 128) and mask.sum(1).tolist() == [0, 25 - 19, 25 - 10]
    else:  # ceil(50 / 4); ceil(37 / 4), ceil(20 / 4) kept
        assert audio.shape == (3, 13, 128) and mask.sum(1).tolist() == [0, 13 - 10, 13 - 5]
    for i, n in enumerate(lengths.tolist()):  # the same features as the utterance alone
        alone, _ = model.encode(mel[i : i + 1, :, :n], None)
        assert torch.allclose(alone[0], audio[i, : alone.shape[1]], atol=1e-4)


def test_cached_decoding_gives_the_tokens_of_uncached_decoding(model) -> None:
    mel, lengths = batch()
    cached = greedy_decode(model, mel, lengths, SPECIALS)
    uncached = greedy_decode(model, mel, lengths, SPECIALS, use_cache=False)
    assert [h.tokens for h in cached] == [h.tokens for h in uncached]
    assert len({tuple(h.tokens) for h in cached}) > 1  # the utterances decode differently
    for a, b in zip(cached, uncached, strict=True):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)


def test_beam_width_one_equals_greedy_and_wider_beams_score_higher(model) -> None:
    mel, lengths = batch()
    greedy = greedy_decode(model, mel, lengths, SPECIALS, max_tokens=12)
    beam1 = beam_search(model, mel, lengths, SPECIALS, beam_size=1, max_tokens=12)
    assert [h.tokens for h in beam1] == [h.tokens for h in greedy]
    beam4 = beam_search(model, mel, lengths, SPECIALS, beam_size=4, max_tokens=12)
    assert len(beam4) == 3 and all(len(h.tokens) <= 11 for h in beam4)


def test_a_padded_batch_decodes_like_each_utterance_alone(model) -> None:
    mel, lengths = batch()
    together = greedy_decode(model, mel, lengths, SPECIALS)
    for i, n in enumerate(lengths.tolist()):
        alone = greedy_decode(model, mel[i : i + 1, :, :n], None, SPECIALS)
        assert alone[0].tokens == together[i].tokens


def test_batch_norm_of_the_2d_front_end_ignores_padding_in_training() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 4, 5, 9) * 3 + 1
    valid = torch.arange(9)[None, :] < torch.tensor([9, 6])[:, None]
    norm = MaskedBatchNorm2d(4).train()
    out = norm(x, valid)
    frames = torch.cat([x[0], x[1, :, :, :6]], dim=-1)  # (C, F, 9 + 6): the audio alone
    mean, var = frames.mean(dim=(1, 2)), frames.var(dim=(1, 2), unbiased=False)
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps)
    assert torch.allclose(out[0], expected[0], atol=1e-5)
    assert torch.allclose(out[1, :, :, :6], expected[1, :, :, :6], atol=1e-5)
    n = frames[0].numel()
    assert torch.allclose(norm.running_var, 0.9 + 0.1 * var * n / (n - 1), atol=1e-5)
