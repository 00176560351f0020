"""`lbdl asr`: train, evaluate and run Whisper-style speech recognition (book 6.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lbdl_apps.core.cli_common import (
    AmpOption,
    BatchSizeOption,
    Common,
    CompileOption,
    ConfigOption,
    DataOption,
    EmaOption,
    EpochsOption,
    ExistOkOption,
    LrOption,
    NameOption,
    OutOption,
    PatienceOption,
    ResumeOption,
    RunDirOption,
    SavePeriodOption,
    StrictOption,
    ValFractionOption,
    WarmupOption,
    WeightDecayOption,
    WorkersOption,
    from_options,
    verb,
)

app = typer.Typer(
    help="Speech recognition (book 6.5): a Whisper-style encoder-decoder transformer on "
    "log-mel spectrograms, writing BPE tokens."
)
TASK = "asr"
BeamOption = Annotated[int, typer.Option(min=1, help="Beam width (1: greedy decoding).")]
AdaptOption = Annotated[
    bool,
    typer.Option(
        help="First adapt the batch norms to all the audio given (a new speaker or microphone)."
    ),
]
AdaptPassesOption = Annotated[
    int,
    typer.Option(
        min=0,
        max=100,
        help="Adapt as --adapt does, then tune the encoder on that audio for this many passes "
        "so that its transcriptions become confident and as diverse as the training texts.",
    ),
]


@verb(app)
def train(
    data: DataOption = None,
    model: Annotated[
        str, typer.Option(help="nano, mini or tiny (the dimensions of Whisper tiny).")
    ] = "nano",
    width: Annotated[int | None, typer.Option(min=8, help="Model width (overrides).")] = None,
    depth: Annotated[
        int | None, typer.Option(min=1, help="Encoder and decoder blocks (overrides).")
    ] = None,
    heads: Annotated[int | None, typer.Option(min=1, help="Attention heads (overrides).")] = None,
    frontend: Annotated[
        str, typer.Option(help="conv1d (Whisper's) or conv2d (a VGG-style 2D CNN over bands).")
    ] = "conv1d",
    epochs: EpochsOption = 20,
    batch_size: BatchSizeOption = 32,
    lr: LrOption = 1e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    vocab_size: Annotated[int, typer.Option(min=260, help="BPE vocabulary size.")] = 512,
    max_tokens: Annotated[int, typer.Option(min=4, help="Longest token sequence.")] = 96,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.0,
    normalization: Annotated[
        str,
        typer.Option(
            help="Log-mel scaling: band-mean (per-band mean removed), level-mean (overall mean "
            "removed) or whisper."
        ),
    ] = "band-mean",
    split_by: Annotated[
        str, typer.Option(help="random, or speaker (test speakers unseen in training).")
    ] = "random",
    test_speakers: Annotated[
        str | None, typer.Option(help="Comma-separated speakers held out for the test.")
    ] = None,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    val_fraction: ValFractionOption = 0.1,
    builtin: Annotated[
        str, typer.Option(help="Built-in speech: mixed, digits, digit (one) or phrases.")
    ] = "mixed",
    builtin_size: Annotated[
        int, typer.Option(min=10, help="Synthesized training clips of the built-in data.")
    ] = 2000,
    extra_builtin: Annotated[
        int, typer.Option(min=0, help="Synthesized spoken digits mixed into --data's training.")
    ] = 0,
    speed: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Speed perturbation: factor in 1 +- this.")
    ] = 0.0,
    noise_snr: Annotated[
        float | None, typer.Option(help="Add white noise at SNR (dB) from this to +30.")
    ] = None,
    freq_masks: Annotated[int, typer.Option(min=0, help="SpecAugment frequency masks.")] = 0,
    time_masks: Annotated[int, typer.Option(min=0, help="SpecAugment time masks.")] = 0,
    stretch: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Tempo perturbation: duration x 1/(1+this) to 1+this."),
    ] = 0.0,
    warp: Annotated[
        float,
        typer.Option(min=0.0, max=0.5, help="Vocal tract length perturbation: formants x 1+-this."),
    ] = 0.0,
    eq: Annotated[
        float,
        typer.Option(min=0.0, max=30.0, help="Random equalizer: band gains within +-this dB."),
    ] = 0.0,
    weight_decay: WeightDecayOption = 0.01,
    warmup: WarmupOption = 1.0,
    ema: EmaOption = None,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad audio files and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train on a manifest, a wav + txt folder, LibriSpeech, FSDD or built-in synthesized speech."""
    from lbdl_apps.asr.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="An asr .safetensors file.")],
    data: DataOption = None,
    out: OutOption = None,
    split: Annotated[str, typer.Option(help="test or val split of the data.")] = "test",
    beam_size: BeamOption = 1,
    show: Annotated[int, typer.Option(min=0, help="Worst utterances to list.")] = 10,
    adapt: AdaptOption = False,
    adapt_passes: AdaptPassesOption = 0,
    *,
    common: Common,
) -> None:
    """Word and character error rates, results.csv per file, and the worst utterances."""
    from lbdl_apps.asr.train import run_evaluation, worst

    scores, rows, folder = run_evaluation(
        checkpoint, data, out, split, beam_size, common, adapt, adapt_passes
    )
    console = Console(quiet=common.quiet)
    if show:
        table = Table("file", "reference", "hypothesis", "WER", title="worst utterances")
        for r in worst(rows, show):
            table.add_row(Path(r.name).name, r.reference, r.hypothesis, f"{r.wer:.2f}")
        console.print(table)
    print(f"wer {scores['wer']:.4f} cer {scores['cer']:.4f} ({len(rows)} utterances)")
    console.print(f"results: {folder}")


@verb(app)
def transcribe(
    checkpoint: Annotated[Path, typer.Argument(help="An asr .safetensors file.")],
    inputs: Annotated[list[str], typer.Argument(help="Audio files, folders or globs.")],
    out: OutOption = None,
    beam_size: BeamOption = 1,
    batch_size: BatchSizeOption = 16,
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: txt, json, srt, vtt.")
    ] = "txt,json,srt,vtt",
    no_speech_threshold: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Above this no-speech probability, no text."),
    ] = 0.6,
    strict: StrictOption = False,
    adapt: AdaptOption = False,
    adapt_passes: AdaptPassesOption = 0,
    *,
    common: Common,
) -> None:
    """Transcribe audio files (30-second windows); prints and writes .txt/.json/.srt/.vtt."""
    from lbdl_apps.asr.api import load
    from lbdl_apps.asr.audio import AUDIO_EXTENSIONS
    from lbdl_apps.asr.outputs import FORMATS, write_transcripts
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport, LbdlError

    kinds = tuple(k.strip() for k in formats.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FORMATS]
    if unknown or not kinds:
        raise LbdlError(f"--format {formats}: choose among {', '.join(FORMATS)}")
    recognizer = load(checkpoint, common.torch_device())
    paths = expand_inputs(inputs, AUDIO_EXTENSIONS, "audio files")
    report = BatchReport(strict=strict)
    transcripts = recognizer.transcribe(
        paths, beam_size, batch_size, no_speech_threshold, report, adapt, adapt_passes
    )
    report.ok(len(transcripts))
    folder = out or Path("runs") / TASK / "transcribe"
    folder.mkdir(parents=True, exist_ok=True)
    write_transcripts(transcripts, folder, kinds)
    for t in transcripts:
        print(f"{t.path}\t{t.text}")
    print(f"{report.summary('files')}; results: {folder}")
    raise typer.Exit(report.exit_code)


app.command("predict", help="Same as transcribe.")(app.registered_commands[-1].callback)
