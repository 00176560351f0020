"""CTranslate2's model.bin, read without ctranslate2 (faster-whisper's model folders): a
little-endian header (binary version, spec name, spec revision), then each variable's name,
shape, dtype and raw bytes, then aliases (a name standing for another variable: the tied
output projection). int8 / int16 weights come with a per-row `weight_scale` and are read back
as float32. `whisper_state` renames a WhisperSpec's variables to openai-whisper's names,
splitting the fused query/key/value projections."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import torch
from torch import Tensor

from lbdl_apps.core.errors import LbdlError

BINARY_VERSIONS = range(1, 7)  # what CTranslate2 4.x reads (it writes version 6)
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
ITEM_DTYPES = {4: torch.float32, 2: torch.int16, 1: torch.int8}  # versions < 4: by item size


class _Reader:
    """Little-endian values read one after the other from a bytes buffer."""

    def __init__(self, data: bytearray, path: Path) -> None:
        self.data, self.offset, self.path = data, 0, path

    def take(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise LbdlError(f"{self.path}: truncated CTranslate2 model.bin")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.take("H")  # with the final NUL
        raw = bytes(self.data[self.offset : self.offset + length])
        self.offset += length
        if len(raw) != length or not raw.endswith(b"\0"):
            raise LbdlError(f"{self.path}: not a CTranslate2 model.bin (bad string)")
        return raw[:-1].decode("utf-8", errors="replace")

    def tensor(self, dtype: torch.dtype, shape: list[int], nbytes: int) -> Tensor:
        if self.offset + nbytes > len(self.data):
            raise LbdlError(f"{self.path}: truncated CTranslate2 model.bin")
        count = nbytes // torch.empty(0, dtype=dtype).element_size()
        flat = torch.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += nbytes
        return flat.reshape(shape) if shape else flat.reshape(())


def read_model_bin(path: Path) -> tuple[str, int, dict[str, Tensor]]:
    """(spec name, spec revision, variables by name, aliases resolved) of a model.bin."""
    try:
        reader = _Reader(bytearray(path.read_bytes()), path)
    except OSError as error:
        raise LbdlError(f"{path}: cannot read ({error.strerror})") from None
    version = reader.take("I")
    if version not in BINARY_VERSIONS:
        raise LbdlError(f"{path}: not a CTranslate2 model.bin this lbdl reads (version {version})")
    name, revision = (reader.string(), reader.take("I")) if version >= 2 else ("", 1)
    variables: dict[str, Tensor] = {}
    for _ in range(reader.take("I")):
        variable = reader.string()
        shape = [reader.take("I") for _ in range(reader.take("B"))]
        if version >= 4:
            type_id, nbytes = reader.take("B"), reader.take("I")
            if type_id >= len(DTYPES):
                raise LbdlError(f"{path}: {variable} has an unknown dtype ({type_id})")
            dtype = DTYPES[type_id]
        else:
            item = reader.take("B")
            dtype, nbytes = ITEM_DTYPES.get(item, torch.uint8), reader.take("I") * item
        variables[variable] = reader.tensor(dtype, shape, nbytes)
    aliases = [(reader.string(), reader.string()) for _ in range(reader.take("I"))] if (
        version >= 3) else []  # fmt: skip
    variables = _dequantized(variables)
    for alias, target in aliases:  # after dequantization: an alias of a quantized weight
        if target in variables:
            variables[alias] = variables[target]
    return name, revision, variables


def _dequantized(variables: dict[str, Tensor]) -> dict[str, Tensor]:
    """int8 / int16 weights with their `weight_scale` (w = q / scale, per output row) back
    as float32; the scales themselves dropped."""
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and not value.is_floating_point():
            # scale (rows,) -> (rows, 1, ...): one factor per output row (or one in all)
            shape = (-1, *[1] * (value.dim() - 1)) if scale.dim() else ()
            value = value.float() / scale.float().reshape(shape)
        out[name] = value
    return out


def _scalar(variables: dict[str, Tensor], name: str, path: Path) -> int:
    if name not in variables:
        raise LbdlError(f"{path}: not a Whisper model.bin (no {name})")
    return int(variables[name].item())


def _linear(variables: dict[str, Tensor], name: str, path: Path) -> tuple[Tensor, Tensor | None]:
    weight = variables.get(f"{name}/weight")
    if weight is None:
        raise LbdlError(f"{path}: not a Whisper model.bin (no {name}/weight)")
    return weight, variables.get(f"{name}/bias")


def _attention(out: dict, v: dict, ct2: str, openai: str, self_attention: bool, path: Path) -> None:
    """One attention layer: CTranslate2 fuses query, key and value (self-attention) or key
    and value (cross-attention) into one projection; the key's part of the bias is zero."""
    names = ("query", "key", "value") if self_attention else ("key", "value")
    fused, bias = _linear(v, f"{ct2}/linear_0" if self_attention else f"{ct2}/linear_1", path)
    if not self_attention:
        out[f"{openai}.query.weight"], out[f"{openai}.query.bias"] = _linear(
            v, f"{ct2}/linear_0", path
        )
    # fused (len(names) * dim, dim) -> one (dim, dim) chunk per projection
    for part, weight, b in zip(names, fused.chunk(len(names)),
                               bias.chunk(len(names)) if bias is not None else [None] * 3,
                               strict=False):  # fmt: skip
        out[f"{openai}.{part}.weight"] = weight
        if part != "key" and b is not None:
            out[f"{openai}.{part}.bias"] = b
    out[f"{openai}.out.weight"], out[f"{openai}.out.bias"] = _linear(
        v, f"{ct2}/linear_{1 if self_attention else 2}", path
    )
    _norm(out, v, f"{ct2}/layer_norm", f"{openai}_ln", path)


def _norm(out: dict, v: dict, ct2: str, openai: str, path: Path) -> None:
    if f"{ct2}/gamma" not in v:
        raise LbdlError(f"{path}: not a Whisper model.bin (no {ct2}/gamma)")
    out[f"{openai}.weight"], out[f"{openai}.bias"] = v[f"{ct2}/gamma"], v.get(f"{ct2}/beta")


def _layers(variables: dict[str, Tensor], side: str) -> int:
    """How many layers `side` (encoder or decoder) has: its variables layer_0/..., layer_1/..."""
    found = (re.match(rf"{side}/layer_(\d+)/", n) for n in variables)
    return len({m.group(1) for m in found if m})


def whisper_state(
    variables: dict[str, Tensor], path: Path
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """A WhisperSpec's variables as an openai-whisper state dict and its dims."""
    v, out = variables, {}
    for conv in ("conv1", "conv2"):
        out[f"encoder.{conv}.weight"], out[f"encoder.{conv}.bias"] = _linear(
            v, f"encoder/{conv}", path
        )
    out["encoder.positional_embedding"] = v.get("encoder/position_encodings/encodings")
    out["decoder.positional_embedding"] = v.get("decoder/position_encodings/encodings")
    out["decoder.token_embedding.weight"] = v.get("decoder/embeddings/weight")
    _norm(out, v, "encoder/layer_norm", "encoder.ln_post", path)
    _norm(out, v, "decoder/layer_norm", "decoder.ln", path)
    if any(out[k] is None for k in ("encoder.positional_embedding",
                                    "decoder.positional_embedding",
                                    "decoder.token_embedding.weight")):  # fmt: skip
        raise LbdlError(f"{path}: not a Whisper model.bin (no position encodings or embeddings)")
    for side in ("encoder", "decoder"):
        for i in range(_layers(v, side)):
            ct2, openai = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            _attention(out, v, f"{ct2}/self_attention", f"{openai}.attn", True, path)
            if side == "decoder":
                _attention(out, v, f"{ct2}/attention", f"{openai}.cross_attn", False, path)
            for j, k in ((0, 0), (1, 2)):
                out[f"{openai}.mlp.{k}.weight"], out[f"{openai}.mlp.{k}.bias"] = _linear(
                    v, f"{ct2}/ffn/linear_{j}", path
                )
            _norm(out, v, f"{ct2}/ffn/layer_norm", f"{openai}.mlp_ln", path)
    return out, _dims(v, out, path)


def _dims(v: dict[str, Tensor], state: dict[str, Tensor], path: Path) -> dict[str, int]:
    """openai-whisper's ModelDimensions of a WhisperSpec (its shapes and head counts)."""
    if "decoder/activation" in v and int(v["decoder/activation"].item()) != 3:
        raise LbdlError(f"{path}: a Whisper model.bin whose activation is not GELU")
    projection = v.get("decoder/projection/weight")
    embedding = state["decoder.token_embedding.weight"]
    if projection is not None and not torch.equal(projection, embedding):
        raise LbdlError(f"{path}: the output projection is not the token embedding (untied)")
    audio_ctx, audio_state = state["encoder.positional_embedding"].shape
    text_ctx, text_state = state["decoder.positional_embedding"].shape
    return {
        "n_mels": state["encoder.conv1.weight"].shape[1], "n_audio_ctx": audio_ctx,
        "n_audio_state": audio_state, "n_audio_head": _scalar(v, "encoder/num_heads", path),
        "n_audio_layer": _layers(v, "encoder"), "n_vocab": embedding.shape[0],
        "n_text_ctx": text_ctx, "n_text_state": text_state,
        "n_text_head": _scalar(v, "decoder/num_heads", path), "n_text_layer": _layers(v, "decoder"),
    }  # fmt: skip
