"""Whisper checkpoints in every publisher's layout, for the tests, made with the publishers'
own code and random weights: openai-whisper's `Whisper(ModelDimensions(...))` saved as its
.pt; the same weights in a transformers `WhisperForConditionalGeneration` (built from its
config, then given these weights, checked against openai-whisper's outputs by the test) saved
with save_pretrained; and in a CTranslate2 folder written here (model.bin as CTranslate2
4.x writes it: version 6, fused query/key/value projections; config.json, tokenizer.json,
vocabulary.txt)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4,
        "n_audio_layer": 2, "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 64,
        "n_text_head": 4, "n_text_layer": 2}  # fmt: skip
MULTILINGUAL = {**DIMS, "n_vocab": 51865}


def random_whisper(dims: dict[str, int] = DIMS, seed: int = 0):
    """openai-whisper's model with random weights (its buffers, the encoder's sinusoids,
    as it makes them)."""
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    model = Whisper(ModelDimensions(**dims)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def save_openai(model, path: Path, extra: object = None) -> Path:
    """openai-whisper's checkpoint format: {"dims": dict, "model_state_dict": ...}; `extra`,
    when given, is pickled beside them (a file lbdl must refuse)."""
    checkpoint = {"dims": dict(model.dims.__dict__), "model_state_dict": model.state_dict()}
    if extra is not None:
        checkpoint["extra"] = extra
    torch.save(checkpoint, path)
    return path


HF_RULES = (
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^(encoder|decoder)\.blocks\.", r"model.\1.layers."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.attn\.", ".self_attn."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
)


def hf_model(model):
    """transformers' Whisper built from its config (random), then given `model`'s weights."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d = model.dims
    config = WhisperConfig(
        vocab_size=d.n_vocab, num_mel_bins=d.n_mels, d_model=d.n_audio_state,
        encoder_layers=d.n_audio_layer, encoder_attention_heads=d.n_audio_head,
        decoder_layers=d.n_text_layer, decoder_attention_heads=d.n_text_head,
        encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
        max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx,
    )  # fmt: skip
    hf = WhisperForConditionalGeneration(config).eval()
    state = {}
    for name, value in model.state_dict().items():
        for pattern, replacement in HF_RULES:
            name = re.sub(pattern, replacement, name)
        state[name] = value
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return hf


def save_hf(model, folder: Path):
    """The transformers model of `model`, saved with save_pretrained into `folder`."""
    hf = hf_model(model)
    hf.save_pretrained(folder)
    return hf


def _variable(name: str, value: np.ndarray) -> bytes:
    """One variable of a model.bin (version >= 4): name, rank, shape, dtype id, bytes."""
    type_ids = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
                np.dtype("int32"): 3, np.dtype("float16"): 4}  # fmt: skip
    raw = np.ascontiguousarray(value).tobytes()
    encoded = name.encode() + b"\0"
    head = struct.pack("<H", len(encoded)) + encoded + struct.pack("<B", value.ndim)
    head += b"".join(struct.pack("<I", n) for n in value.shape)
    return head + struct.pack("<BI", type_ids[value.dtype], len(raw)) + raw


def _ct2_variables(model) -> dict[str, np.ndarray]:
    """openai-whisper's weights as CTranslate2's WhisperSpec variables."""
    s = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    d, out = model.dims, {}

    def linear(ct2: str, openai: str) -> None:
        out[f"{ct2}/weight"], out[f"{ct2}/bias"] = s[f"{openai}.weight"], s[f"{openai}.bias"]

    def attention(ct2: str, openai: str, fused: tuple[str, ...]) -> None:
        zero = np.zeros(d.n_text_state, np.float32)
        parts = [s[f"{openai}.{p}.weight"] for p in fused]
        biases = [zero if p == "key" else s[f"{openai}.{p}.bias"] for p in fused]
        index = 0 if len(fused) == 3 else 1
        out[f"{ct2}/linear_{index}/weight"] = np.concatenate(parts)
        out[f"{ct2}/linear_{index}/bias"] = np.concatenate(biases)
        if len(fused) == 2:
            linear(f"{ct2}/linear_0", f"{openai}.query")
        linear(f"{ct2}/linear_{index + 1}", f"{openai}.out")
        out[f"{ct2}/layer_norm/gamma"] = s[f"{openai}_ln.weight"]
        out[f"{ct2}/layer_norm/beta"] = s[f"{openai}_ln.bias"]

    for side, layers in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(layers):
            ct2, openai = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            attention(f"{ct2}/self_attention", f"{openai}.attn", ("query", "key", "value"))
            if side == "decoder":
                attention(f"{ct2}/attention", f"{openai}.cross_attn", ("key", "value"))
            linear(f"{ct2}/ffn/linear_0", f"{openai}.mlp.0")
            linear(f"{ct2}/ffn/linear_1", f"{openai}.mlp.2")
            out[f"{ct2}/ffn/layer_norm/gamma"] = s[f"{openai}.mlp_ln.weight"]
            out[f"{ct2}/ffn/layer_norm/beta"] = s[f"{openai}.mlp_ln.bias"]
    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    out["encoder/position_encodings/encodings"] = s["encoder.positional_embedding"]
    out["encoder/layer_norm/gamma"], out["encoder/layer_norm/beta"] = (
        s["encoder.ln_post.weight"], s["encoder.ln_post.bias"])  # fmt: skip
    out["decoder/embeddings/weight"] = s["decoder.token_embedding.weight"]
    out["decoder/position_encodings/encodings"] = s["decoder.positional_embedding"]
    out["decoder/layer_norm/gamma"], out["decoder/layer_norm/beta"] = (
        s["decoder.ln.weight"], s["decoder.ln.bias"])  # fmt: skip
    scalars = {"decoder/activation": np.int8(3), "decoder/alibi": np.int8(0),
               "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
               "decoder/num_heads": np.int16(d.n_text_head), "decoder/pre_norm": np.int8(1),
               "decoder/scale_embeddings": np.int8(0),
               "decoder/start_from_zero_embedding": np.int8(0),
               "encoder/num_heads": np.int16(d.n_audio_head)}  # fmt: skip
    return {**out, **{k: np.asarray(v) for k, v in scalars.items()}}


def save_ct2(model, folder: Path, tokenizer) -> Path:
    """A CTranslate2 Whisper folder of `model` (float32), with `tokenizer` (an lbdl
    WhisperTokenizer: its tokenizer.json and its vocabulary, one token a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    variables = _ct2_variables(model)
    body = struct.pack("<I", 6) + _variable_name("WhisperSpec") + struct.pack("<I", 3)
    body += struct.pack("<I", len(variables))
    body += b"".join(_variable(name, variables[name]) for name in sorted(variables))
    body += struct.pack("<I", 1) + _variable_name("decoder/projection/weight")
    body += _variable_name("decoder/embeddings/weight")
    (folder / "model.bin").write_bytes(body)
    t = tokenizer
    config = {"suppress_ids": t.suppress_tokens(), "suppress_ids_begin": [220, t.eot],
              "lang_ids": [t.sot + 1 + i for i in range(len(t.languages))],
              "alignment_heads": [[1, 0], [1, 3]]}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(t.to_json())
    tokens = [t.tokenizer.id_to_token(i) for i in range(t.n_vocab)]
    (folder / "vocabulary.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


def _variable_name(text: str) -> bytes:
    encoded = text.encode() + b"\0"
    return struct.pack("<H", len(encoded)) + encoded


def whisper_tokenizer(n_vocab: int = 51864):
    """lbdl's Whisper tokenizer from openai-whisper's own tiktoken vocabulary."""
    from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer, is_multilingual, read_tiktoken
    from lbdl_apps.asr.zoo import TIKTOKEN, _assets

    name = TIKTOKEN[is_multilingual(n_vocab)][0]
    ranks = read_tiktoken(Path(_assets()[0]) / name)
    return WhisperTokenizer.from_ranks(ranks, n_vocab)


def noise_wave(seconds: float, seed: int = 0) -> np.ndarray:
    """A 16 kHz test signal: a tone with a few bursts, in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = 0.2 * np.sin(2 * np.pi * 300 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    return (wave + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
