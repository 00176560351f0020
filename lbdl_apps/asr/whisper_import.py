"""Whisper checkpoints of every publisher into lbdl (book 6.5): openai-whisper's .pt (`dims`
+ `model_state_dict`), a Hugging Face transformers folder (config.json + model.safetensors)
and a CTranslate2 folder (faster-whisper's: model.bin, config.json, tokenizer.json,
vocabulary). Each is read into openai-whisper's names, the one layout every other maps to,
then renamed to lbdl's (`key_map`); `to_openai` maps back. The result is an ordinary lbdl asr
checkpoint: the typed config, Whisper's tokenizer with its special tokens, what decoding
suppresses and the alignment heads, all in its metadata."""

from __future__ import annotations

import json
import pickletools
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from lbdl_apps.asr.audio import HOP, N_FFT, SAMPLE_RATE
from lbdl_apps.asr.model import RecognizerConfig
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer, bpe_from_hf, read_tiktoken
from lbdl_apps.core.checkpoint import is_lbdl_checkpoint, load_tensors
from lbdl_apps.core.errors import LbdlError

DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab",
        "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")  # fmt: skip
CT2_VOCABULARIES = ("vocabulary.txt", "vocabulary.json")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

# One layer's parameter names: openai-whisper's, lbdl's, Hugging Face's. Per layout: the
# blocks' prefix (encoder, decoder), self- and cross-attention, the four projections, the
# three norms (self, cross, MLP), the MLP's two layers, and the names outside the blocks.
LAYOUTS: dict[str, dict[str, Any]] = {
    "openai": {
        "blocks": ("encoder.blocks", "decoder.blocks"), "attn": ("attn", "cross_attn"),
        "proj": ("query", "key", "value", "out"), "norms": ("attn_ln", "cross_attn_ln", "mlp_ln"),
        "mlp": ("mlp.0", "mlp.2"),
        "top": ("encoder.conv1", "encoder.conv2", "encoder.positional_embedding",
                "encoder.ln_post", "decoder.token_embedding.weight",
                "decoder.positional_embedding", "decoder.ln"),
    },
    "lbdl": {
        "blocks": ("encoder.transformer.blocks", "decoder.blocks"), "attn": ("attn", "cross_attn"),
        "proj": ("q_proj", "k_proj", "v_proj", "out_proj"), "norms": ("ln1", "ln_cross", "ln2"),
        "mlp": ("mlp.fc1", "mlp.fc2"),
        "top": ("encoder.frontend.conv1", "encoder.frontend.conv2", "encoder.positions.pe",
                "encoder.transformer.norm", "decoder.token_embed.weight",
                "decoder.pos_embed.weight", "decoder.norm"),
    },
    "hf": {
        "blocks": ("model.encoder.layers", "model.decoder.layers"),
        "attn": ("self_attn", "encoder_attn"), "proj": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "norms": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
        "mlp": ("fc1", "fc2"),
        "top": ("model.encoder.conv1", "model.encoder.conv2",
                "model.encoder.embed_positions.weight", "model.encoder.layer_norm",
                "model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                "model.decoder.layer_norm"),
    },
}  # fmt: skip
TOP_KINDS = ("module", "module", "tensor", "module", "tensor", "tensor", "module")


def parameter_names(layout: str, audio_layers: int, text_layers: int) -> list[str]:
    """Every parameter name of a Whisper model in `layout`, in one fixed order."""
    lay = LAYOUTS[layout]
    names = []
    for name, kind in zip(lay["top"], TOP_KINDS, strict=True):
        names += [name] if kind == "tensor" else [f"{name}.weight", f"{name}.bias"]
    for side, layers in enumerate((audio_layers, text_layers)):
        for i in range(layers):
            block = f"{lay['blocks'][side]}.{i}"
            for a in range(side + 1):  # the decoder's blocks also attend to the audio
                for p, proj in enumerate(lay["proj"]):
                    attn = f"{block}.{lay['attn'][a]}.{proj}"
                    names += [f"{attn}.weight"] + ([] if p == 1 else [f"{attn}.bias"])
                names += [f"{block}.{lay['norms'][a]}.weight", f"{block}.{lay['norms'][a]}.bias"]
            for layer in lay["mlp"]:
                names += [f"{block}.{layer}.weight", f"{block}.{layer}.bias"]
            names += [f"{block}.{lay['norms'][2]}.weight", f"{block}.{lay['norms'][2]}.bias"]
    return names


def key_map(source: str, target: str, dims: dict[str, int]) -> dict[str, str]:
    """Parameter names of layout `source` -> those of layout `target`."""
    layers = (dims["n_audio_layer"], dims["n_text_layer"])
    return dict(zip(parameter_names(source, *layers), parameter_names(target, *layers),
                    strict=True))  # fmt: skip


def renamed(state: dict[str, Tensor], names: dict[str, str], where: Path) -> dict[str, Tensor]:
    """`state` under the names of `names`; an LbdlError for a missing parameter."""
    missing = [k for k in names if k not in state]
    if missing:
        raise LbdlError(f"{where}: not a Whisper checkpoint (no {missing[0]})")
    return {new: state[old] for old, new in names.items()}


def config_of(dims: dict[str, int], where: Path) -> RecognizerConfig:
    """The lbdl config of openai-whisper's ModelDimensions."""
    if dims["n_audio_state"] != dims["n_text_state"] or dims["n_audio_head"] != dims["n_text_head"]:
        raise LbdlError(f"{where}: encoder and decoder of different widths (not supported)")
    from lbdl_apps.asr.zoo import family

    return RecognizerConfig(
        name=family(dims) or "whisper", dim=dims["n_audio_state"],
        encoder_depth=dims["n_audio_layer"], decoder_depth=dims["n_text_layer"],
        heads=dims["n_audio_head"], vocab_size=dims["n_vocab"], n_mels=dims["n_mels"],
        max_frames=2 * dims["n_audio_ctx"], max_tokens=dims["n_text_ctx"], architecture="whisper",
    )  # fmt: skip


def dims_of(config: RecognizerConfig) -> dict[str, int]:
    """openai-whisper's ModelDimensions of an lbdl Whisper config."""
    audio = {"n_audio_state": config.dim, "n_audio_head": config.heads}
    text = {"n_text_state": config.dim, "n_text_head": config.heads}
    return {"n_mels": config.n_mels, "n_audio_ctx": config.max_frames // 2, **audio,
            "n_audio_layer": config.encoder_depth, "n_vocab": config.vocab_size,
            "n_text_ctx": config.max_tokens, **text,
            "n_text_layer": config.decoder_depth}  # fmt: skip


def finish(
    state: dict[str, Tensor],
    dims: dict[str, Any],
    tokenizer: WhisperTokenizer,
    alignment_heads: list[list[int]] | None,
    source: Path,
    form: str,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An lbdl checkpoint's (weights, metadata) from an openai-whisper state dict."""
    missing = [d for d in DIMS if not isinstance(dims.get(d), int)]
    if missing:
        raise LbdlError(f"{source}: Whisper dimensions without {missing[0]}")
    dims = {d: int(dims[d]) for d in DIMS}
    config = config_of(dims, source)
    if tokenizer.n_vocab != dims["n_vocab"]:
        raise LbdlError(f"{source}: a tokenizer of {tokenizer.n_vocab} tokens for a model "
                        f"of {dims['n_vocab']}")  # fmt: skip
    weights = renamed(state, key_map("openai", "lbdl", dims), source)
    weights = {k: v if v.dtype in (torch.float16, torch.float32) else v.float()
               for k, v in weights.items()}  # fmt: skip
    from lbdl_apps.asr.zoo import default_alignment_heads

    t = tokenizer
    meta = {
        "task": "asr", "config": asdict(config), "tokenizer": t.to_json(), "data": None,
        "source": str(source),
        "preprocessing": {"sample_rate": SAMPLE_RATE, "n_mels": dims["n_mels"], "n_fft": N_FFT,
                          "hop": HOP, "normalization": "whisper", "mel": "slaney",
                          "window_s": 30},
        "whisper": {
            "format": form, "dims": dims, "multilingual": t.multilingual,
            "languages": list(t.languages), "suppress_tokens": t.suppress_tokens(),
            "special_tokens": {"eot": t.eot, "sot": t.sot, "no_speech": t.no_speech,
                               "no_timestamps": t.no_timestamps,
                               "timestamp_begin": t.timestamp_begin,
                               "transcribe": t.transcribe, "translate": t.translate},
            "alignment_heads": alignment_heads or default_alignment_heads(dims),
        },
    }  # fmt: skip
    return weights, meta


def to_openai(
    state: dict[str, Tensor], config: RecognizerConfig
) -> tuple[dict[str, int], dict[str, Tensor]]:
    """An lbdl Whisper model's weights as openai-whisper's (dims, model_state_dict), which
    `whisper.model.Whisper(ModelDimensions(**dims)).load_state_dict` takes."""
    dims = dims_of(config)
    return dims, renamed(state, key_map("lbdl", "openai", dims), Path(config.name))


# ------------------------------------------------------------------ openai-whisper .pt


def _pickle_strings(path: Path) -> set[str]:
    """The strings in a torch zip file's pickle, read without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickled:
                return set()
            data = archive.read(pickled[0])
        return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return set()


def is_openai(path: Path) -> bool:
    """A torch file whose pickle names `dims` and `model_state_dict` (openai-whisper's)."""
    return path.is_file() and {"dims", "model_state_dict"} <= _pickle_strings(path)


def read_openai(path: Path, tiktoken: Path | None = None) -> tuple[dict[str, Tensor], dict]:
    """An openai-whisper .pt (read with weights_only: a file holding Python objects beyond
    tensors is refused) -> (lbdl weights, metadata); the tokenizer is openai-whisper's
    gpt2 / multilingual.tiktoken (`tiktoken`, else zoo.tiktoken_file)."""
    checkpoint = load_tensors(path, "openai-whisper checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("dims"), dict):
        raise LbdlError(f"{path}: not an openai-whisper checkpoint (no dims)")
    state, dims = checkpoint.get("model_state_dict"), checkpoint["dims"]
    if not isinstance(state, dict):
        raise LbdlError(f"{path}: not an openai-whisper checkpoint (no model_state_dict)")
    from lbdl_apps.asr.zoo import tiktoken_file

    n_vocab = int(dims.get("n_vocab", 0))
    ranks = read_tiktoken(tiktoken or tiktoken_file(n_vocab))
    tokenizer = WhisperTokenizer.from_ranks(ranks, n_vocab)
    return finish(state, dims, tokenizer, None, path, "openai-whisper")


# ------------------------------------------------------------------ Hugging Face


def _json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LbdlError(f"{path.parent}: no {path.name}") from None
    except (OSError, ValueError) as error:
        raise LbdlError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(found, dict):
        raise LbdlError(f"{path}: unreadable JSON (not an object)")
    return found


def hf_folder(path: Path) -> Path | None:
    """The transformers Whisper folder that `path` (the folder, or its weights file beside
    config.json) is, if it is one: its config.json says model_type whisper."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and (path.name not in HF_WEIGHTS or is_lbdl_checkpoint(path)):
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        return None
    return folder


def _hf_weights(folder: Path) -> dict[str, Tensor]:
    """The weights of a transformers folder: model.safetensors (or its shards'
    index), else pytorch_model.bin (weights_only)."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(_json(index).get("weight_map", {}).values())) if index.is_file() else []
    try:
        if files:
            return {k: v for name in files for k, v in load_file(folder / name).items()}
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as error:
        raise LbdlError(f"{folder}: unreadable weights ({error})") from None
    if (folder / "pytorch_model.bin").is_file():
        state = load_tensors(folder / "pytorch_model.bin", "transformers checkpoint")
        if isinstance(state, dict):
            return state
    raise LbdlError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _hf_tokenizer(folder: Path, n_vocab: int) -> WhisperTokenizer:
    """The folder's tokenizer.json, else its vocab.json + merges.txt, else openai-whisper's
    tiktoken vocabulary of that size."""
    if (folder / "tokenizer.json").is_file():
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        return WhisperTokenizer.from_bpe(*bpe_from_hf(text, folder / "tokenizer.json"), n_vocab)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
        return WhisperTokenizer.from_bpe(_json(folder / "vocab.json"), merges, n_vocab)  # type: ignore[arg-type]
    from lbdl_apps.asr.zoo import tiktoken_file

    return WhisperTokenizer.from_ranks(read_tiktoken(tiktoken_file(n_vocab)), n_vocab)


def read_hf(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A transformers Whisper folder (or its model.safetensors beside config.json) ->
    (lbdl weights, metadata)."""
    folder = hf_folder(path)
    if folder is None:
        raise LbdlError(f"{path}: not a transformers Whisper folder")
    c = _json(folder / "config.json")
    try:
        dims = {"n_mels": c["num_mel_bins"], "n_audio_ctx": c["max_source_positions"],
                "n_audio_state": c["d_model"], "n_audio_head": c["encoder_attention_heads"],
                "n_audio_layer": c["encoder_layers"], "n_vocab": c["vocab_size"],
                "n_text_ctx": c["max_target_positions"], "n_text_state": c["d_model"],
                "n_text_head": c["decoder_attention_heads"],
                "n_text_layer": c["decoder_layers"]}  # fmt: skip
    except KeyError as error:
        raise LbdlError(f"{folder / 'config.json'}: a Whisper config without {error}") from None
    ffn = (c.get("encoder_ffn_dim", 4 * c["d_model"]), c.get("decoder_ffn_dim", 4 * c["d_model"]))
    if ffn != (4 * c["d_model"],) * 2 or c.get("activation_function", "gelu") != "gelu":
        raise LbdlError(f"{folder}: not Whisper's MLP (4 x width, GELU)")
    state = _hf_weights(folder)
    if not any(k.startswith("model.") for k in state):  # WhisperModel, not ...ForConditional
        state = {f"model.{k}": v for k, v in state.items()}
    output = state.get("proj_out.weight")
    if output is not None and not torch.equal(output, state["model.decoder.embed_tokens.weight"]):
        raise LbdlError(f"{folder}: the output projection is not the token embedding (untied)")
    state = renamed(state, key_map("hf", "openai", dims), folder)
    generation = folder / "generation_config.json"
    heads = _json(generation).get("alignment_heads") if generation.is_file() else None
    tokenizer = _hf_tokenizer(folder, dims["n_vocab"])
    return finish(state, dims, tokenizer, heads, folder, "transformers")


# ------------------------------------------------------------------ CTranslate2


def publisher_file(checkpoint: str | Path) -> str | Path:
    """The file lbdl reads in a publisher's folder given as a CHECKPOINT: a CTranslate2
    folder's model.bin, a transformers folder's pytorch_model.bin when it has no
    model.safetensors; any other argument as it is (core.checkpoint reads a folder's
    model.safetensors)."""
    path = Path(checkpoint)
    if not path.is_dir() or (path / "model.safetensors").exists():
        return checkpoint
    if (path / "model.bin").exists() or any((path / f).is_file() for f in CT2_VOCABULARIES):
        return path / "model.bin"
    if (path / "pytorch_model.bin").exists():
        return path / "pytorch_model.bin"
    return checkpoint


def is_ct2(path: Path) -> bool:
    """A CTranslate2 model.bin whose spec is Whisper's."""
    if path.name != "model.bin" or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return False
    return b"WhisperSpec" in head


def read_ct2(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A CTranslate2 Whisper folder (faster-whisper's), or its model.bin -> (lbdl weights,
    metadata). model.bin and the vocabulary are needed; the tokenizer is tokenizer.json, or
    (as faster-whisper falls back to the hub's) openai-whisper's BPE vocabulary, checked
    against the folder's; config.json gives the alignment heads when it is there."""
    from lbdl_apps.asr.ct2 import read_model_bin, whisper_state

    folder = path.parent if path.name == "model.bin" else path
    vocabularies = [folder / f for f in CT2_VOCABULARIES if (folder / f).is_file()]
    if not (folder / "model.bin").is_file() or not vocabularies:
        lacking = "model.bin" if not (folder / "model.bin").is_file() else CT2_VOCABULARIES[0]
        raise LbdlError(f"{folder}: a CTranslate2 Whisper folder without {lacking}")
    _, _, variables = read_model_bin(folder / "model.bin")
    state, dims = whisper_state(variables, folder)
    if (folder / "tokenizer.json").is_file():
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        bpe = bpe_from_hf(text, folder / "tokenizer.json")
        tokenizer = WhisperTokenizer.from_bpe(*bpe, dims["n_vocab"])
    else:
        from lbdl_apps.asr.zoo import tiktoken_file

        ranks = read_tiktoken(tiktoken_file(dims["n_vocab"]))
        tokenizer = WhisperTokenizer.from_ranks(ranks, dims["n_vocab"])
    tokenizer.check_vocabulary(_vocabulary(vocabularies[0]), vocabularies[0])
    config = _json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return finish(state, dims, tokenizer, config.get("alignment_heads"), folder, "ctranslate2")


def _vocabulary(path: Path) -> list[str]:
    """The tokens of vocabulary.txt (one a line) or vocabulary.json (a list)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        tokens = json.loads(text)
        if not isinstance(tokens, list):
            raise LbdlError(f"{path}: not a list of tokens")
        return tokens
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
