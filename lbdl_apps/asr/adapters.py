"""The deployed graphs of asr/export.py run as the app's modules are called
(`model.encoder(mel, frames)`, `model.decoder(tokens, audio, mask, cache=KVCache)`), so that
greedy and beam search (the app's decode.py, whisper_decode.py, whisper_beam.py) run
unchanged on ONNX Runtime or int8 modules (book 8.2), the self-attention cache buffers kept
in the KVCache (whose `reorder` follows the beams)."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.layers import KVCache

CACHE = "graphs"  # the KVCache entry of the explicit cache tensors
ENCODER_CHUNK = 4  # windows per call of the deployed encoder
CAPACITY_STEP = 64  # positions by which a self-attention cache buffer grows


def self_cache_names(blocks: int) -> list[str]:
    """The step's self-attention cache inputs: self_keys_0, self_values_0, self_keys_1, ..."""
    return [f"self_{kind}_{i}" for i in range(blocks) for kind in ("keys", "values")]


class EncoderAdapter(nn.Module):
    """Called as AudioEncoder is, `(mel, frames) -> (features, padding or None)`, running
    the deployed encoder graph on at most ENCODER_CHUNK windows at a time (the same
    results: the windows are independent; a 30-s window's attention scores take ~0.3 GB).
    Whisper's windows come one at a time from `SpeechRecognizer.encode`."""

    def __init__(self, graph: nn.Module, lengths: bool) -> None:
        super().__init__()
        self.graph, self.lengths = graph, lengths

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if not self.lengths:
            return torch.cat([self.graph(part) for part in mel.split(ENCODER_CHUNK)]), None
        if frames is None:
            frames = torch.full((mel.shape[0],), mel.shape[-1], device=mel.device)
        parts = [self.graph(m, f) for m, f in zip(mel.split(ENCODER_CHUNK),
                                                  frames.to(mel.device).split(ENCODER_CHUNK),
                                                  strict=True)]  # fmt: skip
        return torch.cat([audio for audio, _ in parts]), torch.cat([p for _, p in parts])


def _regrouped(rows: Tensor) -> tuple[Tensor, int]:
    """The windows that the batch rows `rows` (B,) read, and how many rows each: once per
    window where each window's rows are `group` neighbours (beams after whole windows left
    the batch), else once per row."""
    windows, counts = torch.unique_consecutive(rows, return_counts=True)
    group = int(counts[0])
    if bool((counts == group).all()) and len(torch.unique(windows)) == len(windows):
        return windows, group
    return rows, 1


class DecoderAdapter(nn.Module):
    """Called as TransformerDecoder is, `(tokens, audio, padding, cache) -> logits`, running
    the deployed cross and step graphs. The self-attention cache lives in the KVCache's
    `graphs` entry (batch first, so `KVCache.reorder` follows the beams), with `rows`, the
    window of each row; the cross-attention keys and values, once per distinct window (a
    window repeated for its beams is computed once), are kept beside, per KVCache. A call
    without a cache (language detection, word alignment: hooks on `blocks`) runs the
    model's own decoder."""

    def __init__(self, decoder: TransformerDecoder, cross: nn.Module, step: nn.Module,
                 masked: bool) -> None:  # fmt: skip
        super().__init__()
        self.original, self.cross, self.step, self.masked = decoder, cross, step, masked
        self.blocks = decoder.blocks
        self.max_len = decoder.max_len
        attention = decoder.blocks[0].attn
        self.heads = attention.heads
        self.width = decoder.token_embed.weight.shape[1] // attention.heads
        self.past = self_cache_names(len(decoder.blocks))
        # per window, not per row (a KVCache entry is reordered by rows): kept beside
        self.windows: weakref.WeakKeyDictionary[KVCache, tuple[Tensor, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def forward(
        self,
        tokens: Tensor,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        logits: bool = True,
        at: Tensor | None = None,
    ) -> Tensor:
        if cache is None or not logits:
            return self.original(tokens, context, context_padding_mask, cache, logits, at)
        entry = cache.layer(CACHE)
        if "rows" not in entry:
            return self._prompt(tokens, context, context_padding_mask, cache, at)
        audio, rows = self.windows[cache], entry["rows"]
        group = len(rows) // audio[0].shape[0]  # 0 once rows have left the batch
        if not group or not torch.equal(rows, torch.arange(len(rows), device=rows.device) // group):
            windows, group = _regrouped(rows)  # rows moved or left: the windows they read
            audio = self.windows[cache] = tuple(t[windows] for t in audio)
            entry["rows"] = torch.arange(len(rows), device=rows.device) // group
        return self._step(tokens, entry, audio, group, context_padding_mask, cache, at)

    def _prompt(self, tokens: Tensor, context: Tensor, padding: Tensor | None, cache: KVCache,
                at: Tensor | None) -> Tensor:  # fmt: skip
        """The first step, computed once per window where a window's rows (its beams or
        samples) have the same prompt, its cache and logits then repeated for each row."""
        group, b = _group(context), tokens.shape[0]
        by_window = tokens.view(b // group, group, -1)  # (B, L) -> (B / g, g, L)
        once = group if torch.equal(by_window, by_window[:, :1].expand_as(by_window)) else 1
        self.windows[cache] = self.cross(context[::group])
        entry = cache.layer(CACHE)
        entry["rows"] = torch.arange(b // once, device=tokens.device) // (group // once)
        for name in self.past:
            entry[name] = self._buffer(context, b // once, name, 0)
        padding = None if padding is None else padding[::once]
        out = self._step(tokens[::once], entry, self.windows[cache], group // once, padding,
                         cache, at)  # fmt: skip
        if once == 1:
            return out
        for name, value in entry.items():
            entry[name] = value.repeat_interleave(once, 0)
        return out.repeat_interleave(once, 0)

    def _step(
        self,
        tokens: Tensor,
        entry: dict[str, Tensor],
        audio: tuple[Tensor, ...],
        group: int,
        padding: Tensor | None,
        cache: KVCache,
        at: Tensor | None,
    ) -> Tensor:
        """One run of the step graph on the batch rows of `entry`, `group` rows per window
        of `audio`; the L tokens' keys and values written into the buffers (grown to hold
        them, the P tokens before kept)."""
        past, n = cache.length, tokens.shape[1]
        for name in self.past:
            axis = cache_axis(name)
            if entry[name].shape[axis] < past + n:
                capacity = -(-(past + n) // CAPACITY_STEP) * CAPACITY_STEP
                grown = self._buffer(tokens, len(tokens), name, capacity)
                grown.narrow(axis, 0, past).copy_(entry[name].narrow(axis, 0, past))
                entry[name] = grown
        at = torch.arange(n, device=tokens.device) if at is None else at
        inputs = [tokens, torch.tensor(past), at, *(entry[name] for name in self.past), *audio]
        if self.masked:
            if padding is None:
                u, s = audio[0].shape[0], audio[0].shape[-1]  # keys (U, heads, d, S)
                padding = torch.zeros(u, s, dtype=torch.bool, device=tokens.device)
            else:
                padding = padding[::group]
            inputs.append(padding)
        out, *written = self.step(*inputs)
        for name, new in zip(self.past, written, strict=True):
            entry[name].narrow(cache_axis(name), past, n).copy_(new)
        cache.advance(n)
        return out

    def _buffer(self, like: Tensor, rows: int, name: str, capacity: int) -> Tensor:
        """A zero self-attention cache buffer on `like`'s device: keys (B, heads, d, C),
        values (B, heads, C, d)."""
        if cache_axis(name) == 3:
            return torch.zeros(rows, self.heads, self.width, capacity, device=like.device)
        return torch.zeros(rows, self.heads, capacity, self.width, device=like.device)


def cache_axis(name: str) -> int:
    """The positions' axis of a self-attention cache tensor: 3 for keys, 2 for values."""
    return 3 if "keys" in name else 2


def _group(context: Tensor) -> int:
    """g when each window's features fill g consecutive rows of `context` (B, S, D) (its
    beams or samples), else 1."""
    b, g = context.shape[0], 1
    while g < b and torch.equal(context[g], context[0]):
        g += 1
    if g == 1 or b % g:
        return 1
    grouped = context.view(b // g, g, *context.shape[1:])  # (B, S, D) -> (B / g, g, S, D)
    return g if torch.equal(grouped, grouped[:, :1].expand_as(grouped)) else 1
