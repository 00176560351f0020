"""Deploying a speech recognizer (book 8.2, 6.5): three graphs, each traceable as is.

- `encoder`: log-mel (B, n_mels, T) -> audio features (B, T / stride, dim) (lbdl's own
  models also take the true lengths (B,) and return the padding mask (B, T / stride)).
  Any T up to 30 s: a Whisper model sees only the first T / 2 of its positions, the
  shortened window of short clips.
- `cross`: audio features -> every decoder block's cross-attention keys (B, blocks, heads,
  dim / heads, T / stride), transposed and scaled, and values (B, blocks, heads,
  T / stride, dim / heads), computed once per window: the first part of the decoder's cache.
- `decoder`: one step with its cache as explicit tensors: tokens (B, L), the self-attention
  keys and values of the P tokens before (B, blocks, heads, P, dim / heads) and the cross
  ones of each block -> logits (B, L, vocab) and the self-attention cache of P + L tokens.

`attach` installs adapters called as the app's modules are (`model.encoder(mel, frames)`,
`model.decoder(tokens, audio, mask, cache=KVCache)`), so that greedy and beam search (the
app's decode.py, whisper_decode.py, whisper_beam.py) run unchanged on ONNX Runtime or int8
modules, the cache tensors kept in the KVCache (whose `reorder` follows the beams). The
transformer is not convolutional: int8 is dynamic int8 of its matrix products."""

from __future__ import annotations

import inspect
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.asr.api import TASK
from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.export import Deployment, Graph
from lbdl_apps.core.layers import KVCache

SAMPLE_FRAMES = 200  # log-mel frames of the sample input (2 s); the graphs take any length
SAMPLE_PAST = 3  # tokens already in the sample's self-attention cache
CACHE = "graphs"  # the KVCache entry of the explicit cache tensors
ENCODER_CHUNK = 4  # windows per call of the deployed encoder


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(y: Tensor) -> Tensor:
    """(B, heads, L, D / heads) -> (B, L, D)."""
    b, h, n, d = y.shape
    return y.transpose(1, 2).reshape(b, n, h * d)


class EncoderGraph(nn.Module):
    """The audio encoder as the app calls it, with the padding mask always applied (lbdl's
    models; a mask with no padding gives the unmasked result), so no branch on values."""

    def __init__(self, encoder: nn.Module, lengths: bool) -> None:
        super().__init__()
        self.encoder, self.lengths = encoder, lengths

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        encoder = self.encoder
        if not self.lengths:  # Whisper: the windows' frames, no lengths
            return encoder(mel)[0]
        # (1, T) < (B, 1) -> valid (B, T): True at the frames of the audio
        valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]
        # (B, dim, T / stride) -> (B, T / stride, dim)
        x = encoder.positions(encoder.frontend(mel, valid).transpose(1, 2))
        padding = ~valid[:, :: encoder.frontend.stride]  # (B, T) -> (B, ceil(T / stride))
        return encoder.transformer(x, key_padding_mask=padding), padding


class CrossGraph(nn.Module):
    """Audio features (B, S, D) -> the cross-attention keys and values of each decoder block
    (keys_0, values_0, keys_1, ...): keys (B, heads, D / heads, S), transposed and scaled by
    1 / sqrt(D / heads) once here rather than at every step, values (B, heads, S, D / heads).
    One tensor each (not stacked): a step then reads them without copying slices."""

    def __init__(self, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.blocks = decoder.blocks

    def forward(self, audio: Tensor) -> tuple[Tensor, ...]:
        out = []
        for block in self.blocks:
            attention = block.cross_attn
            k = _heads(attention.k_proj(audio), attention.heads)  # (B, H, S, d)
            out.append(k.transpose(2, 3) * k.shape[-1] ** -0.5)  # (B, H, d, S)
            out.append(_heads(attention.v_proj(audio), attention.heads))
        return tuple(out)


class DecoderStep(nn.Module):
    """One decoding step of TransformerDecoder with its cache as tensors (book 5.3): the
    same blocks, positions P .. P + L - 1, causal attention over the P cached tokens and the
    L new ones, cross-attention over the cached audio keys (masked at padding when given)
    of U windows, the B rows being B / U consecutive rows per window (a window's beams or
    samples share its audio: its keys are computed and stored once).
    The logits go through a linear layer sharing the token embedding's weight (tied, as the
    decoder's), so that int8 of the linear layers also takes the largest product."""

    def __init__(self, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        vocab, dim = decoder.token_embed.weight.shape
        self.logits = nn.Linear(dim, vocab, bias=False)
        self.logits.weight = decoder.token_embed.weight

    def forward(self, tokens: Tensor, self_keys: Tensor, self_values: Tensor,
                *audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """`audio`: each block's cross keys and values (CrossGraph's outputs), then the
        padding (U, S) of lbdl's own models."""
        d = self.decoder
        padding = audio[2 * len(d.blocks)] if len(audio) > 2 * len(d.blocks) else None
        positions = torch.arange(tokens.shape[1], device=tokens.device) + self_keys.shape[3]
        x = d.token_embed(tokens) + d.pos_embed.weight[positions]  # (B, L, D)
        # (1, P + L) <= (L, 1) -> (L, P + L): key j is visible to new token i when j <= P + i
        keys = torch.arange(self_keys.shape[3] + tokens.shape[1], device=tokens.device)
        causal = keys[None, :] <= positions[:, None]
        # padding (U, S) -> (U, 1, 1, S): True where a query may look
        keep = None if padding is None else ~padding[:, None, None, :]
        new_keys, new_values = [], []
        for i, block in enumerate(d.blocks):
            h, attention = block.ln1(x), block.attn
            k = torch.cat([self_keys[:, i], _heads(attention.k_proj(h), attention.heads)], 2)
            v = torch.cat([self_values[:, i], _heads(attention.v_proj(h), attention.heads)], 2)
            new_keys.append(k)
            new_values.append(v)
            q = _heads(attention.q_proj(h), attention.heads)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            x = x + attention.out_proj(_merge(y))
            h, cross = block.ln_cross(x), block.cross_attn
            q = _heads(cross.q_proj(h), cross.heads)
            y = _grouped_attention(q, audio[2 * i], audio[2 * i + 1], keep)
            x = x + cross.out_proj(_merge(y))
            x = x + block.mlp(block.ln2(x))
        return self.logits(d.norm(x)), torch.stack(new_keys, 1), torch.stack(new_values, 1)


def _grouped_attention(q: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None) -> Tensor:
    """Attention of B rows of queries (B, H, L, d) over the transposed, scaled keys
    (U, H, d, S) and the values (U, H, S, d) of U windows, B / U consecutive rows per window;
    `keep` (U, 1, 1, S) is False at padding."""
    b, h, n, d = q.shape
    u = keys.shape[0]
    # (B, H, L, d) -> (U, B / U, H, L, d) -> (U, H, B / U, L, d) -> (U, H, B / U * L, d)
    grouped = q.view(u, b // u, h, n, d).transpose(1, 2).reshape(u, h, -1, d)
    scores = grouped @ keys  # (U, H, B / U * L, S)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    y = scores.softmax(-1) @ values  # (U, H, B / U * L, d)
    # (U, H, B / U * L, d) -> (U, H, B / U, L, d) -> (U, B / U, H, L, d) -> (B, H, L, d)
    return y.view(u, h, b // u, n, d).transpose(1, 2).reshape(b, h, n, d)


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


def named_step(decoder: TransformerDecoder, names: list[str]) -> DecoderStep:
    """A DecoderStep whose forward's signature names its inputs (torch.export binds the
    sample inputs and their varying axes to the parameters' names)."""
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for name in ("self", *names)]  # fmt: skip

    def forward(self: DecoderStep, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return DecoderStep.forward(self, *inputs)

    forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    named = type("DecoderStep", (DecoderStep,), {"forward": forward,
                                                 "__doc__": DecoderStep.__doc__})  # fmt: skip
    return named(decoder)


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
        dim = decoder.token_embed.weight.shape[1]
        self.shape = (len(decoder.blocks), attention.heads, 0, dim // attention.heads)
        # TODO(core): KVCache entries shared by rows (that reorder leaves alone)
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
    ) -> Tensor:
        if cache is None or not logits:
            return self.original(tokens, context, context_padding_mask, cache, logits)
        entry = cache.layer(CACHE)
        if "rows" not in entry:
            group = _group(context)
            self.windows[cache] = self.cross(context[::group])
            entry["rows"] = torch.arange(tokens.shape[0], device=tokens.device) // group
            empty = context.new_zeros(tokens.shape[0], *self.shape)
            entry["self_keys"], entry["self_values"] = empty, empty
        audio, rows = self.windows[cache], entry["rows"]
        group = len(rows) // audio[0].shape[0]  # 0 once rows have left the batch
        if not group or not torch.equal(rows, torch.arange(len(rows), device=rows.device) // group):
            windows, group = _regrouped(rows)  # rows moved or left: the windows they read
            audio = self.windows[cache] = tuple(t[windows] for t in audio)
            entry["rows"] = torch.arange(len(rows), device=rows.device) // group
        inputs = [tokens, entry["self_keys"], entry["self_values"], *audio]
        if self.masked:
            if context_padding_mask is None:
                b, s = audio[0].shape[0], audio[0].shape[-1]  # keys (U, heads, d, S)
                context_padding_mask = torch.zeros(b, s, dtype=torch.bool, device=tokens.device)
            else:
                context_padding_mask = context_padding_mask[::group]
            inputs.append(context_padding_mask)
        out, entry["self_keys"], entry["self_values"] = self.step(*inputs)
        cache.advance(tokens.shape[1])
        return out


def deployment(recognizer: Any) -> Deployment:
    """The recognizer's encoder, cross-attention cache and decoder step; attached back as
    adapters in `recognizer.model` (only where a replacement is given: PyTorch fp32 keeps
    the model's own modules, exactly)."""
    model = recognizer.model
    whisper = model.config.architecture == "whisper"
    encoder = getattr(model.encoder, "original", model.encoder)
    decoder = getattr(model.decoder, "original", model.decoder)
    encoder_graph = EncoderGraph(encoder, not whisper)
    cross_graph = CrossGraph(decoder)
    samples = _samples(model, encoder_graph, cross_graph)
    step_graph = named_step(decoder, samples["decoder"][1])
    adapter = DecoderAdapter(decoder, cross_graph, step_graph, not whisper)

    def attach_encoder(module: nn.Module) -> None:
        if module is not encoder_graph:
            wrapped = EncoderAdapter(module, not whisper)
            wrapped.original = encoder
            model.encoder = wrapped

    def attach_decoder(part: str, module: nn.Module) -> None:
        setattr(adapter, part, module)
        if module is not (cross_graph if part == "cross" else step_graph):
            model.decoder = adapter

    graphs = [
        Graph("encoder", encoder_graph, *samples["encoder"], attach=attach_encoder),
        Graph("cross", cross_graph, *samples["cross"],
              attach=lambda module: attach_decoder("cross", module)),
        Graph("decoder", step_graph, *samples["decoder"],
              attach=lambda module: attach_decoder("step", module)),
    ]  # fmt: skip
    return Deployment(TASK, Path(recognizer.meta["file"]), graphs, _description(recognizer))


def _samples(model: nn.Module, encoder: EncoderGraph, cross: CrossGraph) -> dict[str, tuple]:
    """Each graph's sample inputs (batch 2), their names, output names and varying axes."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, config.n_mels, SAMPLE_FRAMES, generator=generator)
    mel_axes = {0: "batch", 2: "frames"}
    audio_axes = {0: "batch", 1: "positions"}
    if encoder.lengths:
        frames = torch.tensor([SAMPLE_FRAMES, SAMPLE_FRAMES * 3 // 4])
        enc = ((mel, frames), ["mel", "frames"], ["audio", "padding"],
               {"mel": mel_axes, "frames": {0: "batch"}, "audio": audio_axes,
                "padding": audio_axes})  # fmt: skip
    else:
        enc = ((mel,), ["mel"], ["audio"], {"mel": mel_axes, "audio": audio_axes})
    with torch.no_grad():
        audio = encoder(*enc[0])
        padding = audio[1] if encoder.lengths else None
        audio = audio[0] if encoder.lengths else audio
        cross_out = cross(audio)
    blocks = len(cross_out) // 2
    cross_names = [f"cross_{kind}_{i}" for i in range(blocks) for kind in ("keys", "values")]
    # keys (B, heads, d, S), values (B, heads, S, d)
    cross_axes = {name: {0: "batch", 3 if "keys" in name else 2: "positions"}
                  for name in cross_names}  # fmt: skip
    _, heads, width, _ = cross_out[0].shape
    past = torch.randn(2, blocks, heads, SAMPLE_PAST, width, generator=generator)
    tokens = torch.randint(0, config.vocab_size, (2, 2), generator=generator)
    self_in, self_out = {0: "batch", 3: "past"}, {0: "batch", 3: "length"}
    dec_names = ["tokens", "self_keys", "self_values", *cross_names]
    dec_inputs = [tokens, past, past.clone(), *cross_out]
    dec_axes = {"tokens": {0: "batch", 1: "tokens"}, "self_keys": self_in, "self_values": self_in,
                **cross_axes, "logits": {0: "batch", 1: "tokens"}, "new_self_keys": self_out,
                "new_self_values": self_out}  # fmt: skip
    if padding is not None:
        dec_names.append("padding")
        dec_inputs.append(padding)
        dec_axes["padding"] = audio_axes
    return {
        "encoder": enc,
        "cross": ((audio,), ["audio"], cross_names, {"audio": audio_axes, **cross_axes}),
        "decoder": (tuple(dec_inputs), dec_names, ["logits", "new_self_keys", "new_self_values"],
                    dec_axes),
    }  # fmt: skip


def _description(recognizer: Any) -> dict[str, Any]:
    """What model.json says beside the files: the front end, the tokens, the decoding loop."""
    model, tokenizer = recognizer.model, recognizer.tokenizer
    config = model.config
    if config.architecture == "whisper":
        front = (f"16 kHz mono -> Whisper's log-mel: {config.n_mels} Slaney mel bands of a "
                 "400-sample Hann STFT every 160 samples, log10, clamped to 8 decades below "
                 "the maximum, (x + 4) / 4; 30-s windows of 3000 frames, zero-padded (shorter "
                 "windows: the first frames alone, at most 3000)")  # fmt: skip
        tokens = {"sot_sequence": tokenizer.sot_sequence(None, "transcribe"),
                  "no_timestamps": tokenizer.no_timestamps, "eot": tokenizer.eot,
                  "suppress_tokens": recognizer.suppress, "tokenizer": "the checkpoint's "
                  "Whisper BPE (lbdl asr convert stores it)"}  # fmt: skip
    else:
        front = (f"16 kHz mono -> log-mel ({config.n_mels} bands, 10 ms frames, normalization "
                 f"{recognizer.normalization}); a batch zero-padded to its longest, with the "
                 "frames of each (`frames`)")  # fmt: skip
        specials = recognizer.tokenizer.specials
        tokens = {"sot": specials.sot, "eot": specials.eot, "no_speech": specials.no_speech,
                  "tokenizer": "the checkpoint's BPE"}  # fmt: skip
    return {
        "input": front,
        "tokens": tokens,
        "max_tokens": config.max_tokens,
        "decoding": "encoder once per window; cross once per window; then decoder steps: "
        "the prompt with empty self caches (P = 0), then each chosen token with the caches "
        "returned by the step before (greedy or beam search; reorder the caches' batch axis "
        "to follow the beams)",
    }
