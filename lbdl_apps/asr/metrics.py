"""How well a recognizer transcribes (book 6.5): word and character error rates, the
end-of-epoch validation, and the scores of each utterance that `evaluate` writes."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.text import char_error_rate, word_error_rate

from lbdl_apps.asr.api import Recognizer
from lbdl_apps.asr.data import Batch, Utterance, normalize_text
from lbdl_apps.asr.decode import greedy_decode
from lbdl_apps.asr.loss import speech_loss
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.asr.whisper_transcribe import LongForm
from lbdl_apps.core.outputs import atomic_path
from lbdl_apps.core.train import EvaluateFn


def word_and_char_error(
    references: list[str], hypotheses: list[str], normalize: Callable[[str], str] = normalize_text
) -> dict[str, float]:
    """Corpus WER and CER (torchmetrics) of normalized texts (Whisper models: Whisper's
    English normalisation); an empty reference counts every hypothesis word as an
    insertion."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    if not any(refs):
        return {"wer": float(any(hyps)), "cer": float(any(hyps))}
    return {
        "wer": float(word_error_rate(hyps, refs)),
        "cer": float(char_error_rate(hyps, refs)),
    }


def validation_fn(tokenizer: TextTokenizer, max_tokens: int) -> EvaluateFn:
    """Trainer evaluation: mean loss and greedy-decoding WER / CER of the validation set."""

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        model.eval()
        losses, refs, hyps = [], [], []
        for batch in loader:
            batch = Batch(*(t.to(device) for t in batch))
            losses.append(float(speech_loss(model, batch)[0]) * len(batch.mel))
            found = greedy_decode(model, batch.mel, batch.frames, tokenizer.specials, max_tokens)
            hyps += [tokenizer.decode(h.tokens) for h in found]
            refs += [tokenizer.decode(t[t >= 0].tolist()) for t in batch.targets.cpu()]
        return {"loss": sum(losses) / len(refs), **word_and_char_error(refs, hyps)}

    return evaluate


@dataclass
class Scored:
    """One evaluated utterance."""

    name: str
    reference: str
    hypothesis: str
    wer: float
    cer: float


def evaluate_utterances(
    recognizer: Recognizer,
    utterances: list[Utterance],
    beam_size: int = 1,
    batch_size: int = 32,
    adapt: bool = False,
    adapt_passes: int = 0,
    language: str | None = None,
    task: str = "transcribe",
    long_form: LongForm | None = None,
) -> tuple[dict[str, float], list[Scored]]:
    """Transcribe `utterances` (with `adapt`, after adapting the recognizer to them, without
    their texts; `adapt_passes` of information maximisation imply `adapt`); corpus WER / CER
    and the per-utterance scores."""
    waves = [u.load() for u in utterances]
    if adapt or adapt_passes:
        recognizer.adapt(waves, batch_size, adapt_passes)
    segments = recognizer.transcribe_waves(waves, beam_size, batch_size, language=language,
                                           task=task, long_form=long_form)  # fmt: skip
    hyps = [" ".join(s.text for s in segs if s.text) for segs in segments]
    refs = [u.text for u in utterances]
    rows = []
    normalize = recognizer.normalize
    for i, (u, ref, hyp) in enumerate(zip(utterances, refs, hyps, strict=True)):
        one = word_and_char_error([ref], [hyp], normalize)
        rows.append(Scored(str(u.path) if u.path else f"builtin:{i}", ref, hyp, *one.values()))
    scores = word_and_char_error(refs, hyps, normalize)
    scores["utterances"] = len(utterances)
    return scores, rows


def write_results(rows: list[Scored], path: Path) -> None:
    """results.csv: one row per utterance (file, reference, hypothesis, WER, CER)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reference", "hypothesis", "wer", "cer"])
        for r in rows:
            writer.writerow([r.name, r.reference, r.hypothesis, f"{r.wer:.4f}", f"{r.cer:.4f}"])


def worst(rows: list[Scored], count: int = 10) -> list[Scored]:
    """The utterances with the highest error rates (WER, then CER)."""
    return sorted(rows, key=lambda r: (-r.wer, -r.cer))[:count]
