"""Beam search as openai-whisper's BeamSearchDecoder does it (book 7.1): every live beam
proposes its beam_size + 1 best continuations; per window, the candidates are ranked by
summed log-probability, those ending with the end token are finished, the beam_size best
others live on (the KVCache reordered to follow them). A window is done when patience x
beam_size candidates have finished; the finished (or, short of them, the live) sequences are
then ranked by log-probability / length (or Google NMT's length penalty)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from lbdl_apps.asr.whisper_decode import Search, WhisperOptions

Sequence = tuple[int, ...]


def _step(
    tokens: Tensor,
    logits: Tensor,
    sum_logprobs: Tensor,
    k: int,
    eot: int,
) -> tuple[list[Sequence], list[int], list[dict[Sequence, float]]]:
    """One step: the next live sequences (k per window), the beam each extends, and each
    window's newly finished sequences with their scores. `sum_logprobs` is updated."""
    logprobs = logits.log_softmax(-1)
    top_logprobs, top_tokens = top_k(logprobs, k + 1)
    scores_all = (sum_logprobs[:, None] + top_logprobs).tolist()  # float32 sums, as Whisper's
    prefixes, top = tokens.tolist(), top_tokens.tolist()
    live: list[Sequence] = []
    sources: list[int] = []
    finished: list[dict[Sequence, float]] = []
    for i in range(tokens.shape[0] // k):
        scores: dict[Sequence, float] = {}
        origin: dict[Sequence, int] = {}
        for row in range(i * k, (i + 1) * k):
            for score, token in zip(scores_all[row], top[row], strict=True):
                sequence = (*prefixes[row], token)
                scores[sequence], origin[sequence] = score, row
        ended: dict[Sequence, float] = {}
        saved = 0
        for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
            if sequence[-1] == eot:
                ended[sequence] = scores[sequence]
                continue
            sum_logprobs[len(live)] = scores[sequence]
            live.append(sequence)
            sources.append(origin[sequence])
            saved += 1
            if saved == k:
                break
        finished.append(ended)
    return live, sources, finished


GROUP_SIZE = 24  # values per group in top_k (51864 = 24 x 2161)


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """torch.topk(values, k) of (B, N) rows (largest first), read faster over a vocabulary:
    a row is split into G strided groups (position mod G, GROUP_SIZE values each); the k + 1
    largest values lie in the k + 1 groups with the largest maxima, so only those groups are
    ranked. Where the k + 1 best tie or are not finite (an order torch.topk alone defines),
    torch.topk itself answers."""
    rows, n = values.shape
    g = n // GROUP_SIZE
    if g <= k + 1:
        return values.topk(k, dim=-1)
    main, tail = values[:, : g * GROUP_SIZE], values[:, g * GROUP_SIZE :]
    grouped = main.unflatten(1, (GROUP_SIZE, g))  # (B, N) -> (B, GROUP_SIZE, G)
    best = grouped.amax(1).topk(k + 1, dim=-1).indices  # (B, k + 1) groups
    members = best[:, None, :].expand(rows, GROUP_SIZE, k + 1)  # (B, GROUP_SIZE, k + 1)
    where = torch.arange(GROUP_SIZE, device=values.device)[None, :, None] * g + members
    candidates = torch.cat([grouped.gather(2, members).flatten(1), tail], 1)
    positions = torch.cat([where.flatten(1), torch.arange(g * GROUP_SIZE, n,
                                                          device=values.device).expand(rows, -1)],
                          1)  # fmt: skip
    top, chosen = candidates.topk(k + 1, dim=-1)
    if not (bool(torch.isfinite(top).all()) and bool((top[:, :-1] > top[:, 1:]).all())):
        return values.topk(k, dim=-1)
    return top[:, :k], positions.gather(1, chosen[:, :k])


def beam_search(
    search: Search, tokens: Tensor, k: int, options: WhisperOptions
) -> tuple[list[list[int]], list[float]]:
    """Each window's best sequence (its sampled tokens) and summed log-probability; `tokens`
    (B * k, prompt) holds each window's prompt k times (and search.audio its audio). A
    window that has its k finished candidates leaves the batch with its beams
    (`Search.keep`): the rest of the search cannot change its result."""
    eot, begin = search.eot, tokens.shape[1]
    wanted = round(k * options.patience)
    sum_logprobs = torch.zeros(tokens.shape[0], device=tokens.device)
    done: list[dict[Sequence, float]] = [{} for _ in range(tokens.shape[0] // k)]
    windows = list(range(len(done)))  # the windows still searched, in batch order
    for step in range(search.sample_len):
        logits = search.logits(tokens, step)
        live, sources, finished = _step(tokens, logits, sum_logprobs, k, eot)
        chosen = torch.tensor([sequence[-1] for sequence in live], device=tokens.device)
        tokens = torch.cat([tokens[sources], chosen[:, None]], 1)  # (B, t) -> (B, t + 1)
        if sources != list(range(len(sources))):  # beams move within their window
            search.cache.reorder(torch.tensor(sources, device=tokens.device), same_context=True)
        for window, new in zip(windows, finished, strict=True):
            previous = done[window]
            for sequence in sorted(new, key=new.__getitem__, reverse=True):
                if len(previous) >= wanted:
                    break
                previous[sequence] = new[sequence]
        if all(len(done[w]) >= wanted for w in windows) or search.done(tokens):
            break
        if wanted >= k and any(len(done[w]) >= wanted for w in windows):
            staying = [i for i, w in enumerate(windows) if len(done[w]) < wanted]
            rows = torch.tensor([i * k + j for i in staying for j in range(k)],
                                device=tokens.device)  # fmt: skip
            tokens, sum_logprobs = tokens[rows], sum_logprobs[rows]
            search.keep(rows)
            windows = [windows[i] for i in staying]
    return _ranked(done, windows, tokens, sum_logprobs, k, eot, begin, options.length_penalty)


def _ranked(
    done: list[dict[Sequence, float]],
    windows: list[int],
    tokens: Tensor,
    sum_logprobs: Tensor,
    k: int,
    eot: int,
    begin: int,
    length_penalty: float | None,
) -> tuple[list[list[int]], list[float]]:
    """Whisper's finalize and MaximumLikelihoodRanker: windows short of k finished sequences
    take their live ones (best first; `windows` gives each live window's place in `tokens`);
    the best by score / length wins."""
    sums = sum_logprobs.cpu().numpy().reshape(-1, k)  # (windows still searched, k)
    rows = tokens.tolist()
    best_tokens, best_sums = [], []
    for i, sequences in enumerate(done):
        if len(sequences) < k:
            place = windows.index(i)
            for j in list(np.argsort(sums[place]))[::-1]:
                sequences[(*rows[place * k + j], eot)] = float(sums[place][j])
                if len(sequences) >= k:
                    break
        candidates = [list(s[begin : s.index(eot, begin)]) for s in sequences]
        logprobs = list(sequences.values())
        chosen = ranked_best(candidates, logprobs, length_penalty)
        best_tokens.append(candidates[chosen])
        best_sums.append(logprobs[chosen])
    return best_tokens, best_sums


def ranked_best(
    candidates: list[list[int]], logprobs: list[float], length_penalty: float | None
) -> int:
    """The index of the best candidate by Whisper's MaximumLikelihoodRanker: summed
    log-probability / length, or / Google NMT's ((5 + length) / 6) ** length_penalty."""
    scores = []
    for logprob, candidate in zip(logprobs, candidates, strict=True):
        length = len(candidate)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(logprob / penalty)
    return int(np.argmax(scores))
