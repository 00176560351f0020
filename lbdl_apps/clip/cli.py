"""`lbdl clip`: train, evaluate and use contrastive image-text models (book 6.6). Each
verb's options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from lbdl_apps.core import options
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, Options, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(help="Contrastive image-text models (book 6.6): CLIP, zero-shot, search.")


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl clip train` was asked for; saved as the run's config.json."""

    model: str = "small"
    """Model size: tiny, small or base."""
    batch_size: int = 128
    weight_decay: float = 0.1
    image_size: int | None = option(None, min=8)
    """Input size (default: the data's own, or 64)."""
    width: int | None = option(None, min=8)
    """Width of both encoders."""
    depth: int | None = option(None, min=1)
    """Blocks of both encoders."""
    patch_size: int | None = option(None, min=1)
    """ViT patch size."""
    vocab_size: int = option(1000, min=32)
    """BPE vocabulary size."""
    context_length: int = option(32, min=4)
    """Tokens per text (longer ones are truncated)."""
    scenes: int = option(10000, min=10)
    """Built-in data: number of training scenes."""
    init: str | None = None
    """Start from these weights: a clip checkpoint, a model name (openai:ViT-B-32) or an
    OpenAI/open_clip file."""
    fraction: float = option(1.0, min=0.0, max=1.0)
    """Train on this fraction of the pairs."""


@dataclass(kw_only=True)
class Prompts(Options):
    """The prompt templates of zero-shot classification."""

    template: list[str] | None = option(None, flags=("--template",))
    """Prompt template with {} for the label; repeat it to ensemble prompts (default: the
    checkpoint's, or 'a photo of a {}.')."""
    templates_file: Path | None = None
    """A text file of prompt templates, one a line (added to --template's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for template in self.templates() or []:
            if template.count("{}") != 1:
                raise LbdlError(f"--template '{template}': needs exactly one {{}} for the label")

    def templates(self) -> list[str] | None:
        """The templates of --template and --templates-file (None: neither given)."""
        found = list(self.template or [])
        if self.templates_file is not None:
            found += read_lines(self.templates_file)
            if not found:
                raise LbdlError(f"--templates-file {self.templates_file}: no template in it")
        return found or None


@dataclass(kw_only=True)
class Activation(Options):
    """The activation of the model's MLPs, when it must be other than its own."""

    act: str | None = None
    """Activation: quick_gelu or gelu (default: the model's own; a publisher's file's is
    read off it, quick_gelu when it does not say)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act not in (None, "quick_gelu", "gelu"):
            raise LbdlError(f"--act {self.act}: use quick_gelu or gelu")


@dataclass(kw_only=True)
class EvaluateArgs(Prompts, Activation, options.Inference, options.EvaluateArgs):
    """The options of `lbdl clip evaluate`."""

    checkpoint: str = option(argument=True)
    """A clip .safetensors file, a run folder, a model name (openai:ViT-B-32, lbdl models) or
    an OpenAI/open_clip file."""
    batch_size: int = option(256, min=1)
    """Batch size."""


@dataclass(kw_only=True)
class ImageArgs(Activation, options.Inference, options.PredictArgs):
    """What the verbs that run a model over image files share."""

    checkpoint: str = option(argument=True)
    """A clip .safetensors file, a run folder, a model name (openai:ViT-B-32, lbdl models) or
    an OpenAI/open_clip file."""
    inputs: list[str] = option(argument=True)
    """Image files, folders or globs."""
    batch_size: int = option(64, min=1)
    """Images per batch."""


@dataclass(kw_only=True)
class ZeroShotArgs(Prompts, ImageArgs):
    """The options of `lbdl clip zero-shot` (and `predict`)."""

    labels: str | None = None
    """Comma-separated class names."""
    labels_file: Path | None = None
    """A text file of class names, one a line."""
    top_k: int = option(3, min=1)
    """Labels shown per image."""

    def names(self) -> list[str]:
        """The class names of --labels or --labels-file."""
        if self.labels is not None and self.labels_file is not None:
            raise LbdlError("labels: give --labels or --labels-file, not both")
        if self.labels_file is not None:
            return read_lines(self.labels_file)
        if self.labels is None:
            raise LbdlError("labels: give --labels 'cat,dog,...' or --labels-file FILE")
        return [label.strip() for label in self.labels.split(",")]


@dataclass(kw_only=True)
class EmbedArgs(ImageArgs):
    """The options of `lbdl clip embed`: images or texts."""

    inputs: list[str] | None = option(None, argument=True)
    """Image files, folders or globs."""
    text: list[str] | None = None
    """A text to embed (repeatable)."""
    texts_file: Path | None = None
    """A text file of texts to embed, one a line."""

    def texts(self) -> list[str]:
        """The texts of --text and --texts-file; an error unless images or texts are given."""
        texts = list(self.text or []) + (read_lines(self.texts_file) if self.texts_file else [])
        if self.inputs and texts:
            raise LbdlError("embed: give images or texts, not both (run embed twice)")
        if not self.inputs and not texts:
            raise LbdlError("embed: nothing to embed; give images, --text or --texts-file")
        return texts


@dataclass(kw_only=True)
class SearchArgs(ImageArgs):
    """The options of `lbdl clip search`."""

    inputs: list[str] = option(argument=True)
    """Image folders, files or globs."""
    text: str
    """The text query."""
    top_k: int = option(16, min=1)
    """Images to return."""


@dataclass(kw_only=True)
class ExportArgs(Activation, options.ExportArgs):
    """The options of `lbdl clip export`."""


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a text file, stripped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LbdlError(f"{path}: cannot read ({type(error).__name__})") from None
    return [line.strip() for line in lines if line.strip()]


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a CLIP model on image-caption pairs or the built-in captioned scenes.

    Pairs: CSV/JSONL manifests, COCO captions, .txt sidecars, class folders with prompt
    templates, idx files."""
    from lbdl_apps.clip.task import train as run

    run(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """Retrieval recall@1/5/10 both ways, and zero-shot accuracy when the data has labels.

    Writes metrics.json."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.clip.task import evaluate as run

    result = run(args, common)
    table = Table("metric", "value")
    for key, value in result.scores.items():
        table.add_row(key, f"{value:.4f}")
    Console(quiet=common.quiet).print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in result.scores.items()))
    print(f"results: {result.folder}")


@verb(app, "zero-shot", aliases=("predict",))
def zero_shot(args: ZeroShotArgs, common: Common) -> int:
    """Rank labels for each image by probability, from text prompts alone.

    Each label's prompts are embedded and averaged (prompt ensembling); writes
    zero_shot.csv and zero_shot.json."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.clip.api import DEFAULT_TEMPLATES, check_labels, load
    from lbdl_apps.clip.outputs import write_zero_shot
    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder

    names = args.names()
    check_labels(names)
    folder = batch_folder("clip", "zero-shot", args.out, args.exist_ok)
    clip = load(args.checkpoint, common.torch_device(), args, args.act)
    templates = args.templates() or clip.meta.get("templates") or list(DEFAULT_TEMPLATES)
    paths = expand_inputs(args.inputs)
    report = BatchReport(strict=args.strict)
    predictions = clip.zero_shot(paths, names, templates, args.batch_size, report)
    report.ok(len(predictions))
    csv_path = write_zero_shot(predictions, folder)
    k = min(args.top_k, len(names))
    table = Table("file", *[f"#{i + 1}" for i in range(k)])
    for p in predictions[:50]:
        ranked = zip(p.labels[:k], p.probabilities[:k], strict=True)
        table.add_row(Path(p.path).name, *[f"{label} {prob:.3f}" for label, prob in ranked])
    Console(quiet=common.quiet).print(table)
    if len(predictions) > 50:
        print(f"... {len(predictions) - 50} more in {csv_path}")
    return report.finish("images", folder)


@verb(app)
def embed(args: EmbedArgs, common: Common) -> int:
    """Embed images or texts into embeddings.npy, with embeddings.json naming each row."""
    from lbdl_apps.clip.api import load
    from lbdl_apps.clip.outputs import write_embeddings
    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder

    texts = args.texts()
    folder = batch_folder("clip", "embed", args.out, args.exist_ok)
    paths = expand_inputs(args.inputs) if args.inputs else []
    clip = load(args.checkpoint, common.torch_device(), args, args.act)
    report = BatchReport(strict=args.strict)
    if texts:
        embeddings = clip.encode_text(texts).float().cpu()
        items = [{"index": i, "text": t} for i, t in enumerate(texts)]
    else:
        done, embeddings = clip.embed_images(paths, args.batch_size, report)
        items = [{"index": i, "path": str(p)} for i, p in enumerate(done)]
    report.ok(len(items))
    info = {"checkpoint": str(args.checkpoint), "kind": "text" if texts else "image",
            "embed_dim": clip.embed_dim, "normalized": True}  # fmt: skip
    npy, _ = write_embeddings(embeddings.numpy(), items, info, folder)
    print(f"embeddings {tuple(embeddings.shape)}: {npy}")
    return report.finish("texts" if texts else "images", folder)


@verb(app)
def search(args: SearchArgs, common: Common) -> int:
    """Rank images by similarity to a text: table, results.csv and contact_sheet.png."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.clip.api import load
    from lbdl_apps.clip.outputs import write_search
    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder

    if not args.text.strip():
        raise LbdlError("--text: the query is empty")
    folder = batch_folder("clip", "search", args.out, args.exist_ok)
    paths = expand_inputs(args.inputs)
    clip = load(args.checkpoint, common.torch_device(), args, args.act)
    report = BatchReport(strict=args.strict)
    done, images = clip.embed_images(paths, args.batch_size, report)
    report.ok(len(done))
    if not done:
        raise LbdlError(f"{' '.join(args.inputs)}: no readable image to search")
    scores = (images @ clip.encode_text([args.text]).float().cpu().t()).squeeze(1)  # (N, 1) -> (N,)
    order = scores.argsort(descending=True)[: args.top_k].tolist()
    ranked = [(done[i], float(scores[i])) for i in order]
    _, sheet = write_search(ranked, args.text, folder)
    table = Table("rank", "file", "similarity", title=args.text)
    for rank, (path, score) in enumerate(ranked, start=1):
        table.add_row(str(rank), str(path), f"{score:.4f}")
    Console(quiet=common.quiet).print(table)
    print(f"contact sheet: {sheet}")
    return report.finish("images", folder)


@verb(app)
def export(args: ExportArgs, common: Common) -> None:
    """Export both towers (image_encoder, text_encoder) to ONNX (int8 with --quantize),
    TorchScript or ExportedPrograms, checked against PyTorch, with model.json (and the
    tokenizer) beside them."""
    from lbdl_apps.clip.export import run

    run(args, args.act)
