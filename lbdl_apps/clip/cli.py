"""`lbdl clip`: train, evaluate and use contrastive image-text models (book 6.6)."""

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

app = typer.Typer(help="Contrastive image-text models (book 6.6): CLIP, zero-shot, search.")
TASK = "clip"

CheckpointArg = Annotated[
    Path,
    typer.Argument(help="A clip .safetensors file, a run folder, or OpenAI/open_clip weights."),
]
TemplateOption = Annotated[
    list[str] | None,
    typer.Option(
        "--template",
        help="Prompt template with {} for the label; repeat it to ensemble prompts "
        "(default: the checkpoint's, or 'a photo of a {}.').",
    ),
]
ActOption = Annotated[
    str,
    typer.Option(help="Activation of imported OpenAI/open_clip weights: quick_gelu or gelu."),
]


@verb(app)
def train(
    data: DataOption = None,
    model: Annotated[str, typer.Option(help="Model size: tiny, small or base.")] = "small",
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 128,
    lr: LrOption = 1e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    image_size: Annotated[
        int | None, typer.Option(min=8, help="Input size (default: the data's own, or 64).")
    ] = None,
    width: Annotated[int | None, typer.Option(min=8, help="Width of both encoders.")] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="Blocks of both encoders.")] = None,
    patch_size: Annotated[int | None, typer.Option(min=1, help="ViT patch size.")] = None,
    vocab_size: Annotated[int, typer.Option(min=32, help="BPE vocabulary size.")] = 1000,
    context_length: Annotated[
        int, typer.Option(min=4, help="Tokens per text (longer ones are truncated).")
    ] = 32,
    scenes: Annotated[
        int, typer.Option(min=10, help="Built-in data: number of training scenes.")
    ] = 10000,
    init: Annotated[
        str | None,
        typer.Option(help="Start from these weights (a clip checkpoint or OpenAI/open_clip)."),
    ] = None,
    weight_decay: WeightDecayOption = 0.1,
    warmup: WarmupOption = 1.0,
    ema: EmaOption = None,
    val_fraction: ValFractionOption = 0.1,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Train on this fraction of the pairs.")
    ] = 1.0,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad images and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a CLIP model on image-caption pairs or the built-in captioned scenes.

    Pairs: CSV/JSONL manifests, COCO captions, .txt sidecars, class folders with prompt
    templates, idx files."""
    from lbdl_apps.clip.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: CheckpointArg,
    data: DataOption = None,
    out: OutOption = None,
    batch_size: BatchSizeOption = 256,
    split: Annotated[str, typer.Option(help="test or val split of the data.")] = "test",
    template: TemplateOption = None,
    *,
    common: Common,
) -> None:
    """Retrieval recall@1/5/10 both ways, and zero-shot accuracy when the data has labels.

    Writes metrics.json."""
    from lbdl_apps.clip.train import run_evaluation

    templates = _check_templates(template)
    scores, folder = run_evaluation(checkpoint, data, out, batch_size, split, templates, common)
    table = Table("metric", "value")
    for key, value in scores.items():
        table.add_row(key, f"{value:.4f}")
    Console(quiet=common.quiet).print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"results: {folder}")


@verb(app, name="zero-shot")
def zero_shot(
    checkpoint: CheckpointArg,
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    labels_file: Annotated[
        Path | None, typer.Option(help="A text file of class names, one a line.")
    ] = None,
    template: TemplateOption = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels shown per image.")] = 3,
    out: OutOption = None,
    batch_size: BatchSizeOption = 64,
    act: ActOption = "quick_gelu",
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Rank labels for each image by probability, from text prompts alone.

    Each label's prompts are embedded and averaged (prompt ensembling); writes
    zero_shot.csv and zero_shot.json."""
    from lbdl_apps.clip.api import DEFAULT_TEMPLATES, check_labels, load
    from lbdl_apps.clip.outputs import write_zero_shot
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport

    names = _read_labels(labels, labels_file)
    check_labels(names)
    templates = _check_templates(template)
    clip = load(checkpoint, common.torch_device(), act)
    templates = templates or clip.meta.get("templates") or list(DEFAULT_TEMPLATES)
    paths = expand_inputs(images)
    report = BatchReport(strict=strict)
    predictions = clip.zero_shot(paths, names, templates, batch_size, report)
    report.ok(len(predictions))
    folder = out or Path("runs") / TASK / "zero-shot"
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = write_zero_shot(predictions, folder)
    k = min(top_k, len(names))
    table = Table("file", *[f"#{i + 1}" for i in range(k)])
    for p in predictions[:50]:
        ranked = zip(p.labels[:k], p.probabilities[:k], strict=True)
        cells = [f"{label} {prob:.3f}" for label, prob in ranked]
        table.add_row(Path(p.path).name, *cells)
    Console(quiet=common.quiet).print(table)
    if len(predictions) > 50:
        print(f"... {len(predictions) - 50} more in {csv_path}")
    print(f"{report.summary('images')}; results: {folder}")
    raise typer.Exit(report.exit_code)


@verb(app)
def embed(
    checkpoint: CheckpointArg,
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Image files, folders or globs.")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", help="A text to embed (repeatable).")
    ] = None,
    texts_file: Annotated[
        Path | None, typer.Option(help="A text file of texts to embed, one a line.")
    ] = None,
    out: OutOption = None,
    batch_size: BatchSizeOption = 64,
    act: ActOption = "quick_gelu",
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Embed images or texts into embeddings.npy, with embeddings.json naming each row."""
    from lbdl_apps.clip.api import load
    from lbdl_apps.clip.outputs import write_embeddings
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport, LbdlError

    texts = list(text or []) + (_read_lines(texts_file) if texts_file else [])
    if inputs and texts:
        raise LbdlError("embed: give images or texts, not both (run embed twice)")
    if not inputs and not texts:
        raise LbdlError("embed: nothing to embed; give images, --text or --texts-file")
    paths = expand_inputs(inputs) if inputs else []
    clip = load(checkpoint, common.torch_device(), act)
    report = BatchReport(strict=strict)
    if texts:
        embeddings = clip.encode_text(texts).float().cpu()
        items = [{"index": i, "text": t} for i, t in enumerate(texts)]
    else:
        done, embeddings = clip.embed_images(paths, batch_size, report)
        items = [{"index": i, "path": str(p)} for i, p in enumerate(done)]
    report.ok(len(items))
    folder = out or Path("runs") / TASK / "embed"
    folder.mkdir(parents=True, exist_ok=True)
    info = {"checkpoint": str(checkpoint), "kind": "text" if texts else "image",
            "embed_dim": clip.embed_dim, "normalized": True}  # fmt: skip
    npy, _ = write_embeddings(embeddings.numpy(), items, info, folder)
    what = "texts" if texts else "images"
    print(f"{report.summary(what)}; embeddings {tuple(embeddings.shape)} in {npy}")
    raise typer.Exit(report.exit_code)


@verb(app)
def search(
    checkpoint: CheckpointArg,
    folders: Annotated[list[str], typer.Argument(help="Image folders, files or globs.")],
    text: Annotated[str, typer.Option("--text", help="The text query.")],
    top_k: Annotated[int, typer.Option(min=1, help="Images to return.")] = 16,
    out: OutOption = None,
    batch_size: BatchSizeOption = 64,
    act: ActOption = "quick_gelu",
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Rank images by similarity to a text: table, results.csv and contact_sheet.png."""
    from lbdl_apps.clip.api import load
    from lbdl_apps.clip.outputs import write_search
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport, LbdlError

    if not text.strip():
        raise LbdlError("--text: the query is empty")
    paths = expand_inputs(folders)
    clip = load(checkpoint, common.torch_device(), act)
    report = BatchReport(strict=strict)
    done, images = clip.embed_images(paths, batch_size, report)
    report.ok(len(done))
    if not done:
        raise LbdlError(f"{' '.join(folders)}: no readable image to search")
    scores = (images @ clip.encode_text([text]).float().cpu().t()).squeeze(1)
    order = scores.argsort(descending=True)[:top_k].tolist()
    ranked = [(done[i], float(scores[i])) for i in order]
    folder = out or Path("runs") / TASK / "search"
    folder.mkdir(parents=True, exist_ok=True)
    _, sheet = write_search(ranked, text, folder)
    table = Table("rank", "file", "similarity", title=text)
    for rank, (path, score) in enumerate(ranked, start=1):
        table.add_row(str(rank), str(path), f"{score:.4f}")
    Console(quiet=common.quiet).print(table)
    print(f"{report.summary('images')}; contact sheet: {sheet}")
    raise typer.Exit(report.exit_code)


def _read_lines(path: Path) -> list[str]:
    from lbdl_apps.core.errors import LbdlError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LbdlError(f"{path}: cannot read ({type(error).__name__})") from None
    return [line.strip() for line in lines if line.strip()]


def _read_labels(labels: str | None, labels_file: Path | None) -> list[str]:
    from lbdl_apps.core.errors import LbdlError

    if labels is not None and labels_file is not None:
        raise LbdlError("labels: give --labels or --labels-file, not both")
    if labels_file is not None:
        return _read_lines(labels_file)
    if labels is None:
        raise LbdlError("labels: give --labels 'cat,dog,...' or --labels-file FILE")
    return [label.strip() for label in labels.split(",")]


def _check_templates(templates: list[str] | None) -> list[str] | None:
    from lbdl_apps.core.errors import LbdlError

    for template in templates or []:
        if template.count("{}") != 1:
            raise LbdlError(f"--template '{template}': needs exactly one {{}} for the label")
    return templates or None
