"""`lbdl asr`: train, evaluate and run Whisper-style speech recognition (book 6.5). Each
verb's options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from lbdl_apps.core import options
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, option
from lbdl_apps.core.verbs import verb


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl asr train` was asked for; saved as the run's config.json."""

    model: str = "nano"
    """nano, mini or tiny (the dimensions of Whisper tiny)."""
    width: int | None = option(None, min=8)
    """Model width (overrides)."""
    depth: int | None = option(None, min=1)
    """Encoder and decoder blocks (overrides)."""
    heads: int | None = option(None, min=1)
    """Attention heads (overrides)."""
    frontend: str = "conv1d"
    """conv1d (Whisper's) or conv2d (a VGG-style 2D CNN over bands)."""
    epochs: int = 20
    batch_size: int = 32
    weight_decay: float = 0.01
    vocab_size: int = option(512, min=260)
    """BPE vocabulary size."""
    max_tokens: int = option(96, min=4)
    """Longest token sequence."""
    label_smoothing: float = option(0.1, min=0.0, max=0.5)
    """Label smoothing of the cross-entropy."""
    dropout: float = option(0.0, min=0.0, max=0.9)
    """Dropout in the transformer blocks."""
    normalization: str = "band-mean"
    """Log-mel scaling: band-mean (per-band mean removed), level-mean (overall mean removed)
    or whisper."""
    split_by: str = "random"
    """random, or speaker (test speakers unseen in training)."""
    test_speakers: str | None = None
    """Comma-separated speakers held out for the test."""
    test_fraction: float = option(0.1, min=0.0, max=0.9)
    """Share of the data held out for the test (or of the speakers, with --split-by speaker)."""
    builtin: str = "mixed"
    """Built-in speech: mixed, digits, digit (one) or phrases."""
    builtin_size: int = option(2000, min=10)
    """Synthesized training clips of the built-in data."""
    extra_builtin: int = option(0, min=0)
    """Synthesized spoken digits mixed into --data's training."""
    speed: float = option(0.0, min=0.0, max=0.5)
    """Speed perturbation: factor in 1 +- this."""
    noise_snr: float | None = None
    """Add white noise at SNR (dB) from this to +30."""
    freq_masks: int = option(0, min=0)
    """SpecAugment frequency masks."""
    time_masks: int = option(0, min=0)
    """SpecAugment time masks."""
    stretch: float = option(0.0, min=0.0, max=1.0)
    """Tempo perturbation: duration x 1/(1+this) to 1+this."""
    warp: float = option(0.0, min=0.0, max=0.5)
    """Vocal tract length perturbation: formants x 1+-this."""
    eq: float = option(0.0, min=0.0, max=30.0)
    """Random equalizer: band gains within +-this dB."""
    skip_bad: bool = False
    """Warn about bad audio files and train on the rest."""
    init: str | None = None
    """Fine-tune this Whisper model (whisper:tiny.en, an lbdl Whisper checkpoint, or a
    publisher's file or folder) with its tokenizer and prompt format; the model and
    tokenizer options are its own. Learning rates: ~1e-5 full, ~1e-3 with --lora."""
    lora: int | None = option(None, min=1)
    """With --init: train only low-rank adapters of this rank on the attention and MLP
    projections (book 8.3); `lbdl asr merge-lora` folds them into the weights."""
    lora_alpha: float | None = option(None, min=0.0)
    """The adapters' update is scaled by alpha / rank (default: 2 x rank)."""
    freeze_encoder: bool = False
    """With --init: train the decoder only."""
    encoder_window: float | None = option(None, min=0.02, max=30.0)
    """With --init: the encoder sees the first SECONDS of Whisper's 30-s window (short
    clips; the checkpoint decodes with the same window)."""


@dataclass(kw_only=True)
class Decoding(options.Options):
    """How `evaluate` and `transcribe` decode, and adapt to the audio first."""

    beam_size: int = option(1, min=1)
    """Beam width (1: greedy decoding)."""
    language: str | None = None
    """Whisper models: the spoken language (en, de, fr, ...); default: English for .en
    models, detected from each file's first 30 s for multilingual ones."""
    task: str = "transcribe"
    """Whisper models: transcribe, or translate (into English)."""
    best_of: int = option(5, min=1)
    """Whisper models: samples per window when decoding at a temperature above 0."""
    patience: float = option(1.0, min=0.0)
    """Whisper models, beam search: wait for patience x beam-size finished candidates."""
    length_penalty: float | None = option(None, min=0.0, max=1.0)
    """Whisper models: rank candidates by log-probability / ((5 + length) / 6) ** this
    (default: / length)."""
    temperature: float = option(0.0, min=0.0, max=1.0)
    """Whisper models: the first decoding temperature (0: the likeliest tokens)."""
    temperature_increment: float = option(0.2, min=0.0, max=1.0)
    """Whisper models: decode a window again this much hotter, up to 1, while its text is
    too repetitive or too unlikely (0: never)."""
    compression_ratio_threshold: float | None = option(2.4, min=0.0)
    """Whisper models: a text whose gzip compression ratio is above this is too repetitive."""
    logprob_threshold: float | None = -1.0
    """Whisper models: a text whose mean token log-probability is below this is too unlikely."""
    no_speech_threshold: float = option(0.6, min=0.0, max=1.0)
    """Above this no-speech probability (and, for Whisper models, below --logprob-threshold),
    a window has no text."""
    condition_on_previous_text: bool = True
    """Whisper models: prompt each window with the text before it (not after a temperature
    above 0.5)."""
    initial_prompt: str | None = None
    """Whisper models: text to prompt the first window with (names, spellings, style)."""
    word_timestamps: bool = False
    """Whisper models: the start and end of each word (cross-attention alignment), in the
    json, srt and vtt files."""
    vad: bool = False
    """Whisper models: transcribe only the speech Silero VAD finds (no text on silence)."""
    encoder_window: float | None = option(None, min=12.0, max=30.0)
    """Whisper models: read a clip no longer than SECONDS in one window of SECONDS instead
    of 30 (2-3x faster at 15 s; longer files keep 30 s); a window whose text repeats itself
    is decoded again on 30 s."""
    adapt: bool = False
    """First adapt the batch norms to all the audio given (a new speaker or microphone)."""
    adapt_passes: int = option(0, min=0, max=100)
    """Adapt as --adapt does, then tune the encoder on that audio for this many passes so
    that its transcriptions become confident and as diverse as the training texts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in ("transcribe", "translate"):
            raise LbdlError(f"--task {self.task}: choose transcribe or translate")


class WritesCheckpoint:
    """Options whose `out` is a new lbdl checkpoint (never overwritten silently)."""

    out: Path
    exist_ok: bool

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.out.suffix != ".safetensors":
            raise LbdlError(f"{self.out}: an lbdl checkpoint ends with .safetensors")
        if self.out.exists() and not self.exist_ok:
            raise LbdlError(f"{self.out}: exists (--exist-ok overwrites it)")


@dataclass(kw_only=True)
class ConvertArgs(WritesCheckpoint, options.Options):
    """The options of `lbdl asr convert`."""

    source: str = option(argument=True)
    """A Whisper model: an openai-whisper .pt, a transformers folder (or its
    model.safetensors), a CTranslate2 folder, a name (whisper:tiny.en), or an lbdl checkpoint."""
    out: Path = option(argument=True)
    """The lbdl checkpoint to write (.safetensors)."""
    exist_ok: bool = False
    """Overwrite OUT if it exists."""


@dataclass(kw_only=True)
class MergeLoraArgs(WritesCheckpoint, options.Options):
    """The options of `lbdl asr merge-lora`."""

    checkpoint: str = option(argument=True)
    """A checkpoint trained with --lora (a .safetensors file or a run folder)."""
    out: Path = option(argument=True)
    """The plain checkpoint to write (.safetensors)."""
    exist_ok: bool = False
    """Overwrite OUT if it exists."""


@dataclass(kw_only=True)
class EvaluateArgs(Decoding, options.Inference, options.EvaluateArgs):
    """The options of `lbdl asr evaluate`."""

    show: int = option(10, min=0)
    """Worst utterances to list."""


@dataclass(kw_only=True)
class TranscribeArgs(Decoding, options.Inference, options.PredictArgs):
    """The options of `lbdl asr transcribe` (and `predict`)."""

    batch_size: int = option(16, min=1)
    """Batch size."""
    formats: str = option("txt,json,srt,vtt", flags=("--format",))
    """Comma-separated: txt, json, srt, vtt."""


app = typer.Typer(
    help="Speech recognition (book 6.5): a Whisper-style encoder-decoder transformer on "
    "log-mel spectrograms, writing BPE tokens."
)


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train on a manifest, a wav + txt folder, LibriSpeech, FSDD or built-in synthesized speech."""
    from lbdl_apps.asr.task import train as run

    run(args, common)


@verb(app, "transcribe", aliases=("predict",))
def transcribe(args: TranscribeArgs, common: Common) -> int:
    """Transcribe audio files (30-second windows); prints and writes .txt/.json/.srt/.vtt."""
    from lbdl_apps.asr.api import load
    from lbdl_apps.asr.audio import AUDIO_EXTENSIONS
    from lbdl_apps.asr.outputs import FORMATS, write_transcripts
    from lbdl_apps.asr.whisper_transcribe import long_form_of
    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder

    kinds = tuple(k.strip() for k in args.formats.split(",") if k.strip())
    if not kinds or any(k not in FORMATS for k in kinds):
        raise LbdlError(f"--format {args.formats}: choose among {', '.join(FORMATS)}")
    folder = batch_folder("asr", "transcribe", args.out, args.exist_ok)
    recognizer = load(args.checkpoint, common.torch_device(), args)
    paths = expand_inputs(args.inputs, AUDIO_EXTENSIONS, "audio files")
    report = BatchReport(strict=args.strict)
    transcripts = recognizer.transcribe(
        paths, args.beam_size, args.batch_size, args.no_speech_threshold, report, args.adapt,
        args.adapt_passes, args.language, args.task, long_form=long_form_of(args),
    )  # fmt: skip
    report.ok(len(transcripts))
    write_transcripts(transcripts, folder, kinds)
    for t in transcripts:
        print(f"{t.path}\t{t.text}")
    return report.finish("files", folder)


@verb(app)
def convert(args: ConvertArgs, common: Common) -> None:
    """Convert a Whisper model (openai-whisper .pt, transformers or CTranslate2 folder, or a
    name) into an lbdl checkpoint, with its tokenizer and special tokens inside."""
    from lbdl_apps.asr.api import TASK, resolve
    from lbdl_apps.asr.model import RecognizerConfig, build_model
    from lbdl_apps.core.checkpoint import config_from_dict, read_any, save_checkpoint

    path, state, meta = read_any(resolve(args.source), TASK)
    try:  # what is written loads: the weights fit the model of the config
        build_model(config_from_dict(RecognizerConfig, meta["config"], path)).load_state_dict(state)
    except (KeyError, RuntimeError) as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"{path}: weights do not match the model config ({first})") from None
    save_checkpoint(args.out, state, meta)
    kind = meta.get("whisper", {}).get("format", "lbdl")
    print(f"{args.source} ({kind}) -> {args.out}")


@verb(app, "merge-lora")
def merge_lora(args: MergeLoraArgs, common: Common) -> None:
    """Fold a --lora checkpoint's adapters into its weights: a plain checkpoint of the same
    model (book 8.3), written atomically."""
    from lbdl_apps.asr.finetune import merge_checkpoint

    rank = merge_checkpoint(args.checkpoint, args.out)
    print(f"{args.checkpoint} (adapters of rank {rank} merged) -> {args.out}")


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """Word and character error rates, results.csv per file, and the worst utterances."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.asr.metrics import worst
    from lbdl_apps.asr.task import evaluate as run

    result = run(args, common)
    console = Console(quiet=common.quiet)
    if args.show:
        table = Table("file", "reference", "hypothesis", "WER", title="worst utterances")
        for r in worst(result.rows, args.show):
            table.add_row(Path(r.name).name, r.reference, r.hypothesis, f"{r.wer:.2f}")
        console.print(table)
    scores = result.scores
    print(f"wer {scores['wer']:.4f} cer {scores['cer']:.4f} ({len(result.rows)} utterances)")
    console.print(f"results: {result.folder}")


@verb(app)
def export(args: options.ExportArgs, common: Common) -> None:
    """Export the encoder, the decoder's cross-attention cache and its decoding step (ONNX,
    TorchScript or an exported program; int8 with --quantize) with a model.json."""
    from lbdl_apps.asr.api import load
    from lbdl_apps.asr.export import deployment
    from lbdl_apps.core.export import run_export

    run_export(args, lambda checkpoint: deployment(load(checkpoint)))
