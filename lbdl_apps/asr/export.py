"""Deploying a speech recognizer (book 8.2, 6.5): three graphs, each traceable as is.

- `encoder`: log-mel (B, n_mels, T) -> audio features (B, T / stride, dim) (lbdl's own
  models also take the true lengths (B,) and return the padding mask (B, T / stride)).
  Any T up to 30 s: a Whisper model sees only the first T / 2 of its positions, the
  shortened window of short clips.
- `cross`: audio features -> every decoder block's cross-attention keys (B, blocks, heads,
  dim / heads, T / stride), transposed and scaled, and values (B, blocks, heads,
  T / stride, dim / heads), computed once per window: the first part of the decoder's cache.
- `decoder`: one step with its cache as explicit tensors: tokens (B, L) after a prefix of
  Q tokens and P of the row's own (two 0-d inputs), the positions K whose logits are wanted,
  each block's self-attention cache buffers of C >= P positions (keys (B, heads,
  dim / heads, C), transposed and scaled as the cross ones, values (B, heads, C,
  dim / heads)), its cross ones and its prefix buffers (U, ., ., Q' >= Q), once per window
  as the cross ones -> logits (B, K, vocab) and each block's self-attention keys and values
  of the L tokens.

`attach` installs adapters (asr/adapters.py) called as the app's modules are, so that the
app's searches run unchanged on ONNX Runtime or int8 modules. The transformer is not
convolutional: int8 is dynamic int8 of its matrix products."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.asr.adapters import (
    DecoderAdapter,
    EncoderAdapter,
    buffer_shape,
    cache_axis,
    self_cache_names,
)
from lbdl_apps.asr.api import TASK
from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.export import Deployment, Graph
from lbdl_apps.core.layers import MultiHeadAttention

SAMPLE_FRAMES = 200  # log-mel frames of the sample input (2 s); the graphs take any length
SAMPLE_PREFIX = 2  # tokens in the sample's prefix buffers (a prompt shared by a window)
SAMPLE_PAST = 3  # tokens of each row in the sample's self-attention cache buffers


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
    same blocks, positions Q + P .. Q + P + L - 1, causal attention over the cached tokens
    and the L new ones, cross-attention over the cached audio keys (masked at padding when
    given) of U windows, the B rows being B / U consecutive rows per window (a window's
    beams or samples share its audio: its keys are computed and stored once).
    Each block's self-attention cache has two parts, each a buffer of which the first
    positions are valid (the rest is ignored), keys kept as the cross-attention keys are,
    transposed and scaled (., heads, d, C), values (., heads, C, d):
    - the prefix, Q tokens once per window (the prompt its rows share, read for all of them
      at once, as the audio is);
    - each row's own P tokens after it.
    A step reads both in place and returns only its L tokens' keys and values, which the
    caller writes at the row's positions P .. P + L - 1: no step copies the cache.
    The logits go through a linear layer sharing the token embedding's weight (tied, as the
    decoder's), so that int8 of the linear layers also takes the largest product."""

    def __init__(self, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        vocab, dim = decoder.token_embed.weight.shape
        self.logits = nn.Linear(dim, vocab, bias=False)
        self.logits.weight = decoder.token_embed.weight

    def forward(
        self, tokens: Tensor, prefix: Tensor, past: Tensor, at: Tensor, *cache: Tensor
    ) -> tuple[Tensor, ...]:
        """`prefix`, `past`: Q and P (0-d int64s); `at` (K,): the positions among the L whose
        logits are wanted; `cache`: each block's own keys and values buffers (keys_0,
        values_0, keys_1, ...), its cross keys and values (CrossGraph's outputs), its prefix
        keys and values, then the padding (U, S) of lbdl's own models. Returns the logits
        (B, K, vocab) and each block's keys (B, heads, d, L) and values (B, heads, L, d) of
        the L tokens."""
        d = self.decoder
        blocks = len(d.blocks)
        own, audio, shared = cache[:2 * blocks], cache[2 * blocks:4 * blocks], cache[4 * blocks:]
        padding = shared[2 * blocks] if len(shared) > 2 * blocks else None
        (rows, n), device = tokens.shape, tokens.device
        windows = audio[0].shape[0]
        positions = torch.arange(n, device=device) + prefix + past  # (L,)
        x = d.token_embed(tokens) + d.pos_embed.weight[positions]  # (B, L, D)
        # keys: the prefix's buffer, the row's buffer, then the L new ones; (L, Q' + C + L),
        # True where hidden: a buffered position past the valid ones, a new token after the
        # query
        sizes = [shared[0].shape[3], own[0].shape[3], n]
        shape = (rows, d.blocks[0].attn.heads, n, sizes[0])  # the prefix's scores by row
        prefixed = torch.arange(sizes[0], device=device)[None, :] >= prefix
        buffered = torch.arange(sizes[1], device=device)[None, :] >= past
        new = torch.arange(n, device=device)
        hidden = torch.cat([prefixed.expand(n, -1), buffered.expand(n, -1),
                            new[None, :] > new[:, None]], 1)  # fmt: skip
        # padding (U, S) -> (U, 1, 1, S): True where a query may look
        keep = None if padding is None else ~padding[:, None, None, :]
        written: list[Tensor] = []
        for i, block in enumerate(d.blocks):
            h, attention = block.ln1(x), block.attn
            k = _keys(h, rows, attention)  # (B, H, d, L)
            v = _heads(attention.v_proj(h), rows, attention)  # (B, H, L, d)
            written += [k, v]
            q = attention.q_proj(h)
            by_row = _heads(q, rows, attention)  # (B, H, L, d)
            by_window = _heads(q, windows, attention)  # (U, H, B / U * L, d)
            scores = torch.cat([_rows(by_window @ shared[2 * i], windows, shape),
                                by_row @ own[2 * i], by_row @ k], 3)  # (B, H, L, Q' + C + L)
            a = scores.masked_fill(hidden, float("-inf")).softmax(-1)
            a_shared, a_own, a_new = a.split(sizes, 3)
            y = a_own @ own[2 * i + 1] + a_new @ v  # (B, H, L, d)
            # (U, H, B / U * L, d)
            from_prefix = _windows(a_shared, windows, shape) @ shared[2 * i + 1]
            x = x + attention.out_proj(_merge(y, rows, attention)
                                       + _merge(from_prefix, rows, attention))  # fmt: skip
            h, cross = block.ln_cross(x), block.cross_attn
            q, keys, values = cross.q_proj(h), audio[2 * i], audio[2 * i + 1]
            x = x + cross.out_proj(_grouped_attention(q, keys, values, keep, rows, cross))
            x = x + block.mlp(block.ln2(x))
        return self.logits(d.norm(x[:, at])), *written  # (B, K, D) -> (B, K, vocab)


def _rows(t: Tensor, windows: int, shape: tuple[int, int, int, int]) -> Tensor:
    """(U, heads, B / U * L, X), a window's rows together -> (B, heads, L, X) = `shape`
    (every size given: a size read from a tensor in an export adds nodes to every step)."""
    rows, heads, n, size = shape
    # (U, H, B / U, L, X) -> (U, B / U, H, L, X) -> (B, H, L, X)
    return t.view(windows, heads, -1, n, size).transpose(1, 2).reshape(rows, heads, n, size)


def _windows(t: Tensor, windows: int, shape: tuple[int, int, int, int]) -> Tensor:
    """(B, heads, L, X) = `shape` -> (U, heads, B / U * L, X), a window's rows together."""
    _, heads, n, size = shape
    # (U, B / U, H, L, X) -> (U, H, B / U, L, X) -> (U, H, B / U * L, X)
    return t.view(windows, -1, heads, n, size).transpose(1, 2).reshape(windows, heads, -1, size)


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
    """Each graph's sample inputs (batch 2; the step's: 2 rows for each of 2 windows), their
    names, output names and varying axes."""
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
    prefix_names = self_cache_names(blocks, "prefix")

    def buffers(names: list[str], rows: int, capacity: int) -> list[Tensor]:
        return [torch.randn(buffer_shape(name, rows, heads, width, capacity),
                            generator=generator) for name in names]  # fmt: skip

    # 2 rows per window (2 windows); buffers of SAMPLE_PAST + 2 positions per row and of
    # SAMPLE_PREFIX + 1 per window, the last ones unused
    own = buffers(past_names, 4, SAMPLE_PAST + 2)
    shared = buffers(prefix_names, 2, SAMPLE_PREFIX + 1)
    tokens = torch.randint(0, config.vocab_size, (4, 2), generator=generator)
    dec_names = ["tokens", "prefix", "past", "at", *past_names, *cross_names, *prefix_names]
    dec_outputs = ["logits", *(f"new_{name}" for name in past_names)]
    dec_inputs = [tokens, torch.tensor(SAMPLE_PREFIX), torch.tensor(SAMPLE_PAST),
                  torch.tensor([1, 0]), *own, *cross_out, *shared]  # fmt: skip
    # a step's rows (batch) read their windows' cross and prefix tensors (windows)
    windowed = {name: {**axes, 0: "windows"} for name, axes in cross_axes.items()}
    dec_axes = {"tokens": {0: "batch", 1: "tokens"}, "at": {0: "at"}, **windowed,
                "logits": {0: "batch", 1: "at"}}  # fmt: skip
    for name in past_names:
        dec_axes[name] = {0: "batch", cache_axis(name): "capacity"}
        dec_axes[f"new_{name}"] = {0: "batch", cache_axis(name): "tokens"}
    for name in prefix_names:
        dec_axes[name] = {0: "windows", cache_axis(name): "prefix_capacity"}
    if padding is not None:
        dec_names.append("padding")
        dec_inputs.append(padding)
        dec_axes["padding"] = {**audio_axes, 0: "windows"}
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
        "the prompt once per window with empty buffers (Q = P = 0), the keys and values it "
        "returns kept as the window's prefix buffers (Q: its length); then each chosen token "
        "with its row's buffers of P tokens, into which the returned keys and values are "
        "written (greedy or beam search; reorder the row buffers' batch axis to follow the "
        "beams; a window's rows share its cross and prefix tensors)",
    }
