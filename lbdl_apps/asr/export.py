"""Deploying a speech recognizer (book 8.2, 6.5): three graphs, each traceable as is.

- `encoder`: log-mel (B, n_mels, T) -> audio features (B, T / stride, dim) (lbdl's own
  models also take the true lengths (B,) and return the padding mask (B, T / stride)).
  Any T up to 30 s: a Whisper model sees only the first T / 2 of its positions, the
  shortened window of short clips.
- `cross`: audio features -> every decoder block's cross-attention keys (B, blocks, heads,
  dim / heads, T / stride), transposed and scaled, and values (B, blocks, heads,
  T / stride, dim / heads), computed once per window: the first part of the decoder's cache.
- `decoder`: one step with its cache as explicit tensors: tokens (B, L) at positions P (a
  0-d input) onwards, the positions K whose logits are wanted, each block's self-attention
  cache buffers of C >= P positions (keys (B, heads, dim / heads, C), transposed and scaled
  as the cross ones, values (B, heads, C, dim / heads)) and its cross ones -> logits
  (B, K, vocab) and each block's self-attention keys and values of the L tokens.

`attach` installs adapters (asr/adapters.py) called as the app's modules are, so that the
app's searches run unchanged on ONNX Runtime or int8 modules. The transformer is not
convolutional: int8 is dynamic int8 of its matrix products."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.asr.adapters import DecoderAdapter, EncoderAdapter, cache_axis, self_cache_names
from lbdl_apps.asr.api import TASK
from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.export import Deployment, Graph
from lbdl_apps.core.layers import MultiHeadAttention

SAMPLE_FRAMES = 200  # log-mel frames of the sample input (2 s); the graphs take any length
SAMPLE_PAST = 3  # tokens already in the sample's self-attention cache buffers


def _heads(x: Tensor, rows: int, attention: MultiHeadAttention) -> Tensor:
    """(B, L, D) -> (B, heads, L, D / heads), B = `rows`. Every other size is a number: an
    export computes only `rows` from a shape (each computed size adds nodes to a step)."""
    heads = attention.heads
    return x.view(rows, -1, heads, attention.q_proj.out_features // heads).transpose(1, 2)


def _keys(x: Tensor, rows: int, attention: MultiHeadAttention) -> Tensor:
    """(B, L, D) -> the keys as every cache holds them, transposed and scaled by
    1 / sqrt(D / heads) (B, heads, D / heads, L)."""
    k = _heads(attention.k_proj(x), rows, attention)  # (B, heads, L, d)
    return k.transpose(2, 3) * k.shape[-1] ** -0.5


def _merge(y: Tensor, rows: int, attention: MultiHeadAttention) -> Tensor:
    """(B, heads, L, D / heads) -> (B, L, D), B = `rows`."""
    return y.transpose(1, 2).reshape(rows, -1, attention.q_proj.out_features)


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
            out.append(_keys(audio, audio.shape[0], attention))  # (B, H, d, S)
            out.append(_heads(attention.v_proj(audio), audio.shape[0], attention))
        return tuple(out)


class DecoderStep(nn.Module):
    """One decoding step of TransformerDecoder with its cache as tensors (book 5.3): the
    same blocks, positions P .. P + L - 1, causal attention over the P cached tokens and the
    L new ones, cross-attention over the cached audio keys (masked at padding when given)
    of U windows, the B rows being B / U consecutive rows per window (a window's beams or
    samples share its audio: its keys are computed and stored once).
    Each block's self-attention cache is a buffer of C >= P positions, of which the first P
    hold the tokens before (the rest is ignored): keys kept as the cross-attention keys are,
    transposed and scaled (B, heads, d, C), values (B, heads, C, d). A step reads it in
    place and returns only its L tokens' keys and values, which the caller writes at
    positions P .. P + L - 1: no step copies the cache.
    The logits go through a linear layer sharing the token embedding's weight (tied, as the
    decoder's), so that int8 of the linear layers also takes the largest product."""

    def __init__(self, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        vocab, dim = decoder.token_embed.weight.shape
        self.logits = nn.Linear(dim, vocab, bias=False)
        self.logits.weight = decoder.token_embed.weight

    def forward(
        self, tokens: Tensor, past: Tensor, at: Tensor, *cache: Tensor
    ) -> tuple[Tensor, ...]:
        """`past`: P (a 0-d int64); `at` (K,): the positions among the L whose logits are
        wanted; `cache`: each block's self keys and values buffers (keys_0, values_0,
        keys_1, ...), then its cross keys and values (CrossGraph's outputs), then the padding
        (U, S) of lbdl's own models. Returns the logits (B, K, vocab) and each block's keys
        (B, heads, d, L) and values (B, heads, L, d) of the L tokens."""
        d = self.decoder
        blocks = len(d.blocks)
        buffers, audio = cache[: 2 * blocks], cache[2 * blocks :]
        padding = audio[2 * blocks] if len(audio) > 2 * blocks else None
        (rows, n), device = tokens.shape, tokens.device
        positions = torch.arange(n, device=device) + past  # (L,)
        x = d.token_embed(tokens) + d.pos_embed.weight[positions]  # (B, L, D)
        # keys: the C buffered positions, then the L new ones; (L, C + L), True where hidden:
        # a buffered position from P on, a new token after the query
        capacity = buffers[0].shape[3]
        buffered = torch.arange(capacity, device=device)[None, :] >= past
        new = torch.arange(n, device=device)
        hidden = torch.cat([buffered.expand(n, -1), new[None, :] > new[:, None]], 1)
        # padding (U, S) -> (U, 1, 1, S): True where a query may look
        keep = None if padding is None else ~padding[:, None, None, :]
        written: list[Tensor] = []
        for i, block in enumerate(d.blocks):
            h, attention = block.ln1(x), block.attn
            k = _keys(h, rows, attention)  # (B, H, d, L)
            v = _heads(attention.v_proj(h), rows, attention)  # (B, H, L, d)
            written += [k, v]
            q = _heads(attention.q_proj(h), rows, attention)
            scores = torch.cat([q @ buffers[2 * i], q @ k], 3)  # (B, H, L, C + L)
            a = scores.masked_fill(hidden, float("-inf")).softmax(-1)
            a_buffered, a_new = a.split([capacity, n], 3)  # (B, H, L, C), (B, H, L, L)
            y = a_buffered @ buffers[2 * i + 1] + a_new @ v  # (B, H, L, d)
            x = x + attention.out_proj(_merge(y, rows, attention))
            h, cross = block.ln_cross(x), block.cross_attn
            q, keys, values = cross.q_proj(h), audio[2 * i], audio[2 * i + 1]
            x = x + cross.out_proj(_grouped_attention(q, keys, values, keep, rows, cross))
            x = x + block.mlp(block.ln2(x))
        return self.logits(d.norm(x[:, at])), *written  # (B, K, D) -> (B, K, vocab)


def _grouped_attention(
    q: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, rows: int,
    attention: MultiHeadAttention,
) -> Tensor:  # fmt: skip
    """Attention of B = `rows` rows of queries (B, L, D) over the transposed, scaled keys
    (U, heads, d, S) and the values (U, heads, S, d) of U windows, B / U consecutive rows
    per window; `keep` (U, 1, 1, S) is False at padding. Returns (B, L, D)."""
    # (B, L, D) -> (U, B / U * L, D) -> (U, heads, B / U * L, d): a window's rows together
    grouped = _heads(q, keys.shape[0], attention)
    scores = grouped @ keys  # (U, heads, B / U * L, S)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    y = scores.softmax(-1) @ values  # (U, heads, B / U * L, d)
    return _merge(y, rows, attention)  # (U, B / U * L, D) -> (B, L, D)


def named_step(decoder: TransformerDecoder, names: list[str]) -> DecoderStep:
    """A DecoderStep whose forward's signature names its inputs (torch.export binds the
    sample inputs and their varying axes to the parameters' names)."""
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for name in ("self", *names)]  # fmt: skip

    def forward(self: DecoderStep, *inputs: Tensor) -> tuple[Tensor, ...]:
        return DecoderStep.forward(self, *inputs)

    forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    named = type("DecoderStep", (DecoderStep,), {"forward": forward,
                                                 "__doc__": DecoderStep.__doc__})  # fmt: skip
    return named(decoder)


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
    past_names = self_cache_names(blocks)
    # buffers of SAMPLE_PAST + 2 positions, the last 2 unused: keys (B, heads, d, C),
    # values (B, heads, C, d), as the cross ones
    capacity = SAMPLE_PAST + 2
    buffers = [torch.randn(2, heads, width, capacity, generator=generator) if cache_axis(name) == 3
               else torch.randn(2, heads, capacity, width, generator=generator)
               for name in past_names]  # fmt: skip
    tokens = torch.randint(0, config.vocab_size, (2, 2), generator=generator)
    dec_names = ["tokens", "past", "at", *past_names, *cross_names]
    dec_outputs = ["logits", *(f"new_{name}" for name in past_names)]
    dec_inputs = [tokens, torch.tensor(SAMPLE_PAST), torch.tensor([1, 0]), *buffers, *cross_out]
    dec_axes = {"tokens": {0: "batch", 1: "tokens"}, "at": {0: "at"}, **cross_axes,
                "logits": {0: "batch", 1: "at"}}  # fmt: skip
    for name in past_names:
        dec_axes[name] = {0: "batch", cache_axis(name): "capacity"}
        dec_axes[f"new_{name}"] = {0: "batch", cache_axis(name): "tokens"}
    if padding is not None:
        dec_names.append("padding")
        dec_inputs.append(padding)
        dec_axes["padding"] = audio_axes
    return {
        "encoder": enc,
        "cross": ((audio,), ["audio"], cross_names, {"audio": audio_axes, **cross_axes}),
        "decoder": (tuple(dec_inputs), dec_names, dec_outputs, dec_axes),
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
