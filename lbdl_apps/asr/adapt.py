"""Test-time adaptation by information maximisation (SHOT-IM, Liang et al. 2020; the
entropy and cross-entropy of book 3.1): on unlabelled audio of a new speaker, the encoder is
tuned so that the decoder's predictions on it become confident, one clip at a time, and
diverse, over all of them, as diverse as the targets of training."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lbdl_apps.asr.data import IGNORED, teacher_forcing
from lbdl_apps.asr.decode import greedy_decode
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.errors import LbdlError

if TYPE_CHECKING:
    from lbdl_apps.asr.api import Recognizer

LEARNING_RATE = 1e-3  # of the passes' Adam


def token_prior(tokenizer: TextTokenizer, texts: Iterable[str]) -> dict[str, int]:
    """How often each token id (as a string, for JSON) is a decoder target in `texts`, the
    end token included: the distribution adaptation holds the predictions to."""
    counts = Counter(token for text in texts for token in tokenizer.target(text))
    return {str(token): count for token, count in sorted(counts.items())}


def information_loss(logits: Tensor, valid: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
    """The two terms of SHOT-IM over the `valid` positions of (B, L, K) logits restricted to
    the K tokens of the prior: the mean entropy of each prediction, and the KL divergence of
    their mean from the prior (SHOT's diversity term, with the prior in place of uniform)."""
    logp = logits.float().log_softmax(-1)[valid]
    p = logp.exp()
    entropy = -(p * logp).sum(-1).mean()
    mean = p.mean(0)
    divergence = (mean * (mean.clamp_min(1e-12).log() - prior.log())).sum()
    return entropy, divergence


def maximize_information(
    recognizer: Recognizer,
    waves: list[np.ndarray],
    passes: int,
    lr: float = LEARNING_RATE,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Tune the encoder for `passes` passes over `waves` (16 kHz, at most 30 s each) with
    Adam, the decoder frozen, each batch teacher-forced on the model's own greedy
    transcription; the model stays in eval mode (batch norm keeps its statistics). Returns
    the loss of each pass. An LbdlError for a checkpoint without a token prior."""
    prior_counts = recognizer.meta.get("token_prior")
    if not prior_counts:
        raise LbdlError("--adapt-passes: the checkpoint has no token prior (train it again)")
    model, tok, device = recognizer.model, recognizer.tokenizer, recognizer.device
    support = torch.tensor([int(t) for t in prior_counts], device=device)
    prior = torch.tensor(list(prior_counts.values()), dtype=torch.float, device=device)
    prior = prior / prior.sum()
    encoder = list(model.encoder.parameters())
    trainable = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    model.encoder.requires_grad_(True)
    optimizer = torch.optim.Adam(encoder, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for _ in range(passes):
            order = torch.randperm(len(waves), generator=generator).tolist()
            total = 0.0
            for first in range(0, len(order), batch_size):
                chunk = [waves[i] for i in order[first : first + batch_size]]
                mel, frames = recognizer.features(chunk)
                found = greedy_decode(model, mel, frames, tok.specials)
                targets = [[*h.tokens, tok.eot] for h in found]
                inputs, labels = teacher_forcing(targets, tok.sot, tok.pad)
                logits = model(mel, frames, inputs.to(device))[..., support]
                entropy, divergence = information_loss(logits, labels.to(device) != IGNORED, prior)
                loss = entropy + divergence
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(chunk)
            losses.append(total / len(waves))
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
        model.eval()
    return losses
