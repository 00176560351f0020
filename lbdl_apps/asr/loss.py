"""The training loss of the recognizer (book 3.1, 6.5): teacher-forced cross-entropy of the
next token, with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.asr.data import IGNORED, Batch


def token_loss(
    logits: Tensor, targets: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of (B, L, vocab) logits against (B, L) targets, the IGNORED positions
    left out; the token accuracy as a metric."""
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(),  # (B, L, vocab) -> (B * L, vocab)
        targets.flatten(),  # (B, L) -> (B * L,)
        ignore_index=IGNORED,
        label_smoothing=label_smoothing,
    )
    known = targets != IGNORED
    accuracy = (logits.argmax(-1) == targets)[known].float().mean()
    return loss, {"token_acc": accuracy}


def speech_loss(
    model: nn.Module, batch: Batch, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of lbdl's own models: padded frames masked, padded positions (IGNORED) left
    out."""
    return token_loss(model(batch.mel, batch.frames, batch.tokens), batch.targets, label_smoothing)


def whisper_loss(
    model: nn.Module, batch: Batch, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of a Whisper model fine-tuned (finetune.py): its encoder sees the padded
    windows whole, as Whisper does (no frame mask), and the targets count only the text
    tokens and the end token (the prompt's positions are IGNORED)."""
    return token_loss(model(batch.mel, None, batch.tokens), batch.targets, label_smoothing)
