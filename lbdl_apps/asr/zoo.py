"""The Whisper models of the field, by name (book 6.5; `lbdl models`): OpenAI's tiny, base
and small, multilingual and English-only (.en), as openai-whisper downloads them (a .pt whose
URL holds its sha256) with the BPE vocabulary openai-whisper ships (gpt2 / multilingual
.tiktoken, from its repository at a release tag). A copy in ~/.cache/whisper (openai-whisper's
cache) or in the Hugging Face cache (openai/whisper-NAME) is used as it is. Files on disk in a
publisher's format (openai-whisper .pt, transformers folder, CTranslate2 folder) are
recognised by their contents. No torch import here: whisper_import.py does the work."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from lbdl_apps.core import zoo
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.zoo import Pretrained, PublisherFormat, Source, register, register_format

OPENAI_URL = "https://openaipublic.azureedge.net/main/whisper/models/{sha}/{file}"
OPENAI_CACHE = "~/.cache/whisper"  # where openai-whisper's load_model keeps its downloads
WHISPER_RELEASE = "v20250625"  # the openai-whisper tag whose assets the sha256s below are of
ASSETS_URL = "https://raw.githubusercontent.com/openai/whisper/{tag}/whisper/assets/{file}"
LICENSE = "MIT (OpenAI Whisper)"
# name: (sha256, as in the URL of openai-whisper's _MODELS; its _ALIGNMENT_HEADS: base85 of
# the gzipped (decoder layers, heads) booleans of the heads that follow the timing)
MODELS = {
    "tiny.en": ("d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03",
                "ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00"),
    "tiny": ("65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
             "ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO"),
    "base.en": ("25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead",
                "ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00"),
    "base": ("ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
             "ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m"),
    "small.en": ("f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872",
                 "ABzY8>?_)10{>%RpeA61k&I|OI3I$65C{;;pbCHh0B{qLQ;+}v00"),
    "small": ("9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794",
              "ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000"),
}  # fmt: skip
SIZES = {(4, 384): "tiny", (6, 512): "base", (12, 768): "small"}  # (decoder layers, width)
PARAMETERS = {"tiny": "39M", "base": "74M", "small": "244M"}
# openai-whisper's BPE vocabularies, by whether the model is multilingual: (file, sha256 and
# size of the file at WHISPER_RELEASE, computed here; GitHub publishes the git blob hash)
TIKTOKEN = {
    False: ("gpt2.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930", 835_554),
    True: ("multilingual.tiktoken",
           "b34b360dbb493e781e479794586d661700670d65564001f23024971d1f2fa126", 816_730),
}  # fmt: skip


def _assets() -> tuple[str, ...]:
    """openai-whisper's assets folder, when the package is installed (not imported)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(str(Path(p) / "assets") for p in spec.submodule_search_locations)


def _tiktoken_source(multilingual: bool) -> Source:
    file, sha, size = TIKTOKEN[multilingual]
    return Source(ASSETS_URL.format(tag=WHISPER_RELEASE, file=file), sha, size, file)


LOOK_IN = (OPENAI_CACHE, *_assets())
for _name, (_sha, _) in MODELS.items():
    _english = _name.endswith(".en")
    _size = _name.removesuffix(".en")
    register(Pretrained(
        name=f"whisper:{_name}",
        task="asr",
        sources=(Source(OPENAI_URL.format(sha=_sha, file=f"{_name}.pt"), _sha, 0, f"{_name}.pt"),
                 _tiktoken_source(not _english)),
        license=LICENSE,
        description=f"OpenAI Whisper {_size} ({PARAMETERS[_size]} parameters), "
        + ("English only" if _english else "multilingual, 99 languages"),
        convert="lbdl_apps.asr.zoo:convert_release",
        look_in=LOOK_IN,
    ))  # fmt: skip

TOKENIZER = Pretrained(  # not a model: where openai-whisper's vocabularies are found
    name="whisper tokenizer", task="asr", sources=(_tiktoken_source(False), _tiktoken_source(True)),
    license=LICENSE, description="openai-whisper's BPE vocabularies", convert="", look_in=LOOK_IN,
)  # fmt: skip


def convert_release(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """openai-whisper's .pt and its tiktoken vocabulary -> an lbdl asr checkpoint."""
    from lbdl_apps.asr.whisper_import import read_openai

    return read_openai(files[0], files[1])


def tiktoken_file(n_vocab: int) -> Path:
    """openai-whisper's BPE vocabulary for a model of `n_vocab` tokens: from lbdl's downloads,
    openai-whisper's installed assets, or downloaded from its repository."""
    from lbdl_apps.asr.whisper_tokenizer import is_multilingual

    return zoo.fetch(TOKENIZER, _tiktoken_source(is_multilingual(n_vocab)))


def family(dims: dict[str, int]) -> str | None:
    """Which release ("tiny.en", "base", ...) a model's dimensions are those of, if any."""
    size = SIZES.get((dims["n_text_layer"], dims["n_text_state"]))
    if size is None or dims["n_mels"] != 80 or dims["n_vocab"] not in (51864, 51865):
        return None
    return size if dims["n_vocab"] == 51865 else f"{size}.en"


def default_alignment_heads(dims: dict[str, int]) -> list[list[int]]:
    """The cross-attention heads that follow the timing (word timestamps): openai-whisper's
    for its releases, else all heads of the second half of the decoder (its default)."""
    import base64
    import gzip

    import numpy as np

    layers, heads = dims["n_text_layer"], dims["n_text_head"]
    name = family(dims)
    if name is not None:
        dump = base64.b85decode(MODELS[name][1].encode())
        mask = np.frombuffer(gzip.decompress(dump), dtype=bool).reshape(layers, heads)
        return [[int(layer), int(head)] for layer, head in zip(*np.nonzero(mask), strict=True)]
    return [[layer, head] for layer in range(layers // 2, layers) for head in range(heads)]


def hf_hub() -> Path:
    """The Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def hf_snapshot(name: str) -> Path | None:
    """The Hugging Face cache's copy of openai/whisper-NAME (the revision refs/main names),
    when it holds the weights and config."""
    repo = hf_hub() / f"models--openai--whisper-{name}"
    try:
        snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    ok = (snapshot / "config.json").is_file() and (snapshot / "model.safetensors").is_file()
    return snapshot if ok else None


def ensure_whisper(name: str) -> Path:
    """The lbdl checkpoint of `whisper:NAME`: cached; made from openai-whisper's files (in
    lbdl's downloads, ~/.cache/whisper, or downloaded); or made from the Hugging Face cache's
    copy when openai-whisper's is not on disk. Offline and nowhere: one line saying where."""
    entry = zoo.find(name, "asr")
    target = zoo.converted_path(entry)
    release = zoo.home() / "downloads" / entry.sources[0].file
    local = release.is_file() or any((Path(f).expanduser() / entry.sources[0].file).is_file()
                                     for f in entry.look_in)  # fmt: skip
    snapshot = None if target.is_file() or local else hf_snapshot(name.split(":", 1)[1])
    if snapshot is not None:
        from lbdl_apps.asr.whisper_import import read_hf
        from lbdl_apps.core.checkpoint import save_checkpoint

        state, meta = read_hf(snapshot)
        save_checkpoint(target, state, {**meta, "source": entry.name, "license": entry.license})
        return target
    try:
        return zoo.ensure(name, "asr")
    except LbdlError as error:
        if target.is_file() or "cannot be reached" not in str(error):
            raise
        where = f"{OPENAI_CACHE}, {hf_hub()}/models--openai--whisper-{name.split(':', 1)[1]}"
        raise LbdlError(f"{error} (also looked in {where})") from None


def _is_openai(path: Path) -> bool:
    from lbdl_apps.asr.whisper_import import is_openai

    return is_openai(path)


def _read_openai(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from lbdl_apps.asr.whisper_import import read_openai

    return read_openai(path)


def _is_hf(path: Path) -> bool:
    from lbdl_apps.asr.whisper_import import hf_folder

    return hf_folder(path) is not None


def _read_hf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from lbdl_apps.asr.whisper_import import read_hf

    return read_hf(path)


def _is_ct2(path: Path) -> bool:
    from lbdl_apps.asr.whisper_import import is_ct2

    return is_ct2(path)


def _read_ct2(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from lbdl_apps.asr.whisper_import import read_ct2

    return read_ct2(path)


register_format(PublisherFormat("openai-whisper .pt", "asr", _is_openai, _read_openai))
register_format(PublisherFormat("transformers Whisper", "asr", _is_hf, _read_hf))
register_format(PublisherFormat("CTranslate2 Whisper", "asr", _is_ct2, _read_ct2))
