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


def self_cache_names(blocks: int, part: str = "self") -> list[str]:
    """The step's self-attention cache inputs: self_keys_0, self_values_0, self_keys_1, ...
    (each row's tokens), or prefix_keys_0, ... (the prefix of each window)."""
    return [f"{part}_{kind}_{i}" for i in range(blocks) for kind in ("keys", "values")]


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
    the deployed cross and step graphs. Each row's self-attention cache lives in the
    KVCache's `graphs` entry (batch first, so `KVCache.reorder` follows the beams), with
    `rows`, the window of each row; what a window's rows share is kept beside, per KVCache,
    once per distinct window (a window repeated for its beams is computed once): the
    cross-attention keys and values and the prefix, the prompt's keys and values where the
    rows have the same prompt (then never copied when beams move). A call without a cache
    (language detection, word alignment: hooks on `blocks`) runs the model's own decoder."""

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
        # per window, not per row (a KVCache entry is reordered by rows): kept beside, with
        # the prefix's length
        self.windows: weakref.WeakKeyDictionary[KVCache, tuple[Tensor, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self.prefix: weakref.WeakKeyDictionary[KVCache, int] = weakref.WeakKeyDictionary()

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
        shared, rows = self.windows[cache], entry["rows"]
        group = len(rows) // shared[0].shape[0]  # 0 once rows have left the batch
        if not group or not torch.equal(rows, torch.arange(len(rows), device=rows.device) // group):
            windows, group = _regrouped(rows)  # rows moved or left: the windows they read
            shared = self.windows[cache] = tuple(t[windows] for t in shared)
            entry["rows"] = torch.arange(len(rows), device=rows.device) // group
        return self._step(tokens, entry, shared, group, context_padding_mask, cache, at)

    def _prompt(self, tokens: Tensor, context: Tensor, padding: Tensor | None, cache: KVCache,
                at: Tensor | None) -> Tensor:  # fmt: skip
        """The first step. Where a window's rows (its beams or samples) have the same prompt,
        it runs once per window and its keys and values become the window's prefix, its
        logits repeated for each row; otherwise each row's prompt goes into its own cache."""
        group, b = _group(context), tokens.shape[0]
        windows = b // group
        by_window = tokens.view(windows, group, -1)  # (B, L) -> (B / g, g, L)
        same = torch.equal(by_window, by_window[:, :1].expand_as(by_window))
        cross = self.cross(context[::group])
        empty = [self._buffer(context, windows, name, 1) for name in self.past]
        entry = cache.layer(CACHE)
        entry["rows"] = torch.arange(b, device=tokens.device) // group
        if not same:
            self.windows[cache], self.prefix[cache] = (*cross, *empty), 0
            for name in self.past:
                entry[name] = self._buffer(context, b, name, 0)
            return self._step(tokens, entry, self.windows[cache], group, padding, cache, at)
        padding = None if padding is None else padding[::group]
        out, written = self._run(tokens[::group], (*cross, *empty), empty, padding, 0, 0, at)
        self.windows[cache], self.prefix[cache] = (*cross, *written), tokens.shape[1]
        for name in self.past:
            entry[name] = self._buffer(context, b, name, CAPACITY_STEP)
        cache.advance(tokens.shape[1])
        return out.repeat_interleave(group, 0)

    def _step(
        self,
        tokens: Tensor,
        entry: dict[str, Tensor],
        shared: tuple[Tensor, ...],
        group: int,
        padding: Tensor | None,
        cache: KVCache,
        at: Tensor | None,
    ) -> Tensor:
        """One run of the step graph on the batch rows of `entry`, `group` rows per window
        of `shared`; the L tokens' keys and values written into the rows' buffers (grown to
        hold them, the P tokens before kept)."""
        prefix = self.prefix[cache]
        past, n = cache.length - prefix, tokens.shape[1]
        for name in self.past:
            axis = cache_axis(name)
            if entry[name].shape[axis] < past + n:
                capacity = -(-(past + n) // CAPACITY_STEP) * CAPACITY_STEP
                grown = self._buffer(tokens, len(tokens), name, capacity)
                grown.narrow(axis, 0, past).copy_(entry[name].narrow(axis, 0, past))
                entry[name] = grown
        padding = None if padding is None else padding[::group]
        own = [entry[name] for name in self.past]
        out, written = self._run(tokens, shared, own, padding, prefix, past, at)
        for name, new in zip(self.past, written, strict=True):
            entry[name].narrow(cache_axis(name), past, n).copy_(new)
        cache.advance(n)
        return out

    def _run(self, tokens: Tensor, shared: tuple[Tensor, ...], own: list[Tensor],
             padding: Tensor | None, prefix: int, past: int,
             at: Tensor | None) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
        """The step graph: the logits and the L tokens' keys and values of each block, for
        rows reading the `shared` tensors of their window (and its `padding`), with a prefix
        of `prefix` tokens and `past` of their own."""
        n = tokens.shape[1]
        at = torch.arange(n, device=tokens.device) if at is None else at
        inputs = [tokens, torch.tensor(prefix), torch.tensor(past), at, *own, *shared]
        if self.masked:
            if padding is None:
                u, s = shared[0].shape[0], shared[0].shape[-1]  # keys (U, heads, d, S)
                padding = torch.zeros(u, s, dtype=torch.bool, device=tokens.device)
            inputs.append(padding)
        out, *written = self.step(*inputs)
        return out, written

    def _buffer(self, like: Tensor, rows: int, name: str, capacity: int) -> Tensor:
        """A zero self-attention cache buffer on `like`'s device."""
        shape = buffer_shape(name, rows, self.heads, self.width, capacity)
        return torch.zeros(shape, device=like.device)


def buffer_shape(name: str, rows: int, heads: int, width: int,
                 capacity: int) -> tuple[int, int, int, int]:  # fmt: skip
    """The shape of a cache buffer of `capacity` positions, laid out as the cross-attention
    tensors: keys (B, heads, d, C), values (B, heads, C, d)."""
    if cache_axis(name) == 3:
        return rows, heads, width, capacity
    return rows, heads, capacity, width


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
