"""The training loss of the recognizer (book 3.1, 6.5): teacher-forced cross-entropy of the
next token, with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.asr.data import IGNORED, Batch


def speech_loss(
    model: nn.Module, batch: Batch, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the (B, L, vocab) logits against the (B, L) targets, the padded
    positions (IGNORED) left out; the token accuracy as a metric."""
    logits = model(batch.mel, batch.frames, batch.tokens)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(),  # (B, L, vocab) -> (B * L, vocab)
        batch.targets.flatten(),  # (B, L) -> (B * L,)
        ignore_index=IGNORED,
        label_smoothing=label_smoothing,
    )
    known = batch.targets != IGNORED
    accuracy = (logits.argmax(-1) == batch.targets)[known].float().mean()
    return loss, {"token_acc": accuracy}
