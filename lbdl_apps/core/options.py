"""Options declared once (DESIGN.md): the options of a verb are the fields of one dataclass.
A field gives the option's type and default, its bounds in the field's metadata (`option`),
and its help in the docstring written under it, as CleanRL's `Args`. `core.verbs` turns the
dataclass into the typer command; the Python API builds the same dataclass, checked the same
way. This module imports neither torch nor typer, so that `lbdl --help` starts fast."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError

COMMON_PANEL = "Common options"


def option(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    min: float | None = None,
    max: float | None = None,
    flags: tuple[str, ...] = (),
    argument: bool = False,
    panel: str | None = None,
) -> Any:
    """A field of an options dataclass with its command-line details: `min` / `max` bounds
    (checked on the command line and in the Python API alike), `flags` instead of the
    field's own --name (e.g. ("--format",)), `argument` for a positional argument, `panel`
    for the help screen's grouping. `factory` makes a mutable default (a list)."""
    metadata = {"min": min, "max": max, "flags": flags, "argument": argument, "panel": panel}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """The command-line flag of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


@functools.cache
def help_texts(cls: type) -> dict[str, str]:
    """The docstring under each field of `cls` and of its dataclass bases (the nearest wins):
    the help of its options."""
    texts: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (a frozen app): options without help
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                texts[node.target.id] = " ".join(after.value.value.split())
    return texts


def check_bounds(options: Any) -> None:
    """An LbdlError naming the first field outside its `min` / `max` (or not finite)."""
    for f in fields(options):
        value = getattr(options, f.name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise LbdlError(f"{flag_name(f.name)} {value}: must be a finite number")
        if low is not None and value < low:
            raise LbdlError(f"{flag_name(f.name)} {value}: must be at least {low}")
        if high is not None and value > high:
            raise LbdlError(f"{flag_name(f.name)} {value}: must be at most {high}")


@dataclass(kw_only=True)
class Options:
    """Base of every options dataclass: the bounds are checked when it is made. A subclass
    changes an inherited option's default by assigning it (`batch_size: int = 128`); its
    bounds and help stay those of the base."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in inspect.get_annotations(cls):
            value = cls.__dict__.get(name, MISSING)
            base = _inherited_field(cls, name)
            if base is None or value is MISSING or isinstance(value, dataclasses.Field):
                continue
            if isinstance(value, list):
                field = dataclasses.field(default_factory=lambda v=value: list(v))
            else:
                field = dataclasses.field(default=value)
            field.metadata = base.metadata  # type: ignore[misc]
            setattr(cls, name, field)

    def __post_init__(self) -> None:
        check_bounds(self)

    def changed(self) -> list[str]:
        """The flags whose values differ from their defaults (for a --resume warning)."""
        defaults = {f.name: _default(f) for f in fields(self) if _default(f) is not MISSING}
        return [flag_name(k) for k, v in vars(self).items() if k in defaults and v != defaults[k]]


def _inherited_field(cls: type, name: str) -> dataclasses.Field | None:
    """The field `name` of the nearest dataclass base of `cls` that has it."""
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            found = {f.name: f for f in fields(base)}.get(name)
            if found is not None:
                return found
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (MISSING for a required one)."""
    return _default(f)


@dataclass(kw_only=True)
class Common(Options):
    """The options that come after the verb on every verb."""

    device: str = option("auto", panel=COMMON_PANEL)
    """auto, cpu, cuda, cuda:N or mps."""
    threads: int | None = option(None, panel=COMMON_PANEL)
    """CPU threads for torch (default: torch's)."""
    seed: int = option(0, panel=COMMON_PANEL)
    """Random seed."""
    quiet: bool = option(False, flags=("--quiet", "-q"), panel=COMMON_PANEL)
    """No progress bars."""
    debug: bool = option(False, flags=("--debug",), panel=COMMON_PANEL)
    """Show tracebacks of errors."""

    def apply(self) -> None:
        """Set the thread count and seed every random generator."""
        from lbdl_apps.core.device import seed_everything, set_threads

        set_threads(self.threads)
        seed_everything(self.seed)

    def torch_device(self) -> Any:
        """The torch.device of --device (LbdlError when it is not available)."""
        from lbdl_apps.core.device import resolve_device

        return resolve_device(self.device)


@dataclass(kw_only=True)
class RunArgs(Options):
    """Where a training run writes: the options of every `train` verb, RL included."""

    name: str | None = None
    """Run name under runs/<task>/ (default: train, train2, ...)."""
    run_dir: Path | None = None
    """Run folder (instead of --name)."""
    exist_ok: bool = False
    """Allow writing into an existing run folder."""
    resume: Path | None = None
    """Resume the interrupted run in this folder."""


@dataclass(kw_only=True)
class TrainArgs(RunArgs):
    """The `train` options of every supervised app (DESIGN.md) and what the Trainer does
    with them; an app's TrainArgs adds its own and may change these defaults. Saved in the
    run's config.json."""

    data: str | None = None
    """Dataset: a folder, a file or a dataset name (default: built-in data)."""
    epochs: int = option(10, min=1)
    """Training epochs."""
    batch_size: int = option(64, min=1)
    """Batch size."""
    lr: float = option(1e-3, min=0.0)
    """Peak learning rate (AdamW; linear warm-up, then cosine decay to 0)."""
    weight_decay: float = option(1e-4, min=0.0)
    """AdamW weight decay (on weight matrices and kernels, not on biases and norms)."""
    warmup: float = option(1.0, min=0.0)
    """Warm-up epochs."""
    grad_clip: float = option(1.0, min=0.0)
    """Clip the gradient norm to this (0: no clipping)."""
    accumulate: int = option(1, min=1)
    """Batches whose gradients are summed before each optimizer step."""
    ema: float | None = option(None, min=0.0, max=1.0)
    """EMA decay of the weights, e.g. 0.999 (the EMA weights are evaluated and saved)."""
    patience: int | None = option(None, min=1)
    """Stop after this many epochs without improvement."""
    val_fraction: float = option(0.1, min=0.0, max=0.9)
    """Share of the data held out for validation."""
    workers: int = option(0, min=0)
    """Data-loading worker processes."""
    amp: bool = True
    """Mixed precision on GPU (bf16 where supported, else fp16 with loss scaling)."""
    compile: bool = False
    """torch.compile the model."""
    save_period: int | None = option(None, min=1)
    """Also save the training state every N optimizer steps."""
    skip_bad: bool = False
    """Warn about bad records and train on the rest."""


SPLITS = ("all", "train", "val", "test")


@dataclass(kw_only=True)
class OutputArgs(Options):
    """The options of every verb that writes results into a folder."""

    out: Path | None = None
    """Output folder (default: a new numbered folder: predict, predict2, ...)."""
    exist_ok: bool = False
    """Allow writing into an --out folder that already holds results."""


@dataclass(kw_only=True)
class EvaluateArgs(OutputArgs):
    """The options of every `evaluate` verb."""

    checkpoint: str = option(argument=True)
    """A checkpoint of this app: a .safetensors file or a run folder."""
    data: str | None = None
    """Data to evaluate on (default: the checkpoint's own held-out split)."""
    split: str | None = None
    """all, train, val or test. Default: with --data, the data's test split if it has one,
    else its val split, else all of it; without --data, the checkpoint's own test split if
    its data had one, else its val split."""
    out: Path | None = None
    """Output folder (default: a new evaluate, evaluate2, ... in the checkpoint's run
    folder)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split is not None and self.split not in SPLITS:
            raise LbdlError(f"--split {self.split}: choose {', '.join(SPLITS)}")


@dataclass(kw_only=True)
class BatchArgs(OutputArgs):
    """The options of every verb that works through a batch of the user's files."""

    out: Path | None = None
    """Output folder (default: a new runs/<app>/<verb>, <verb>2, ... folder)."""
    strict: bool = False
    """Stop at the first unreadable input (exit 2)."""


@dataclass(kw_only=True)
class PredictArgs(BatchArgs):
    """The options of every `predict` verb: a checkpoint and the files to run it on."""

    checkpoint: str = option(argument=True)
    """A checkpoint of this app: a .safetensors file or a run folder."""
    inputs: list[str] = option(argument=True)
    """Input files, folders or globs."""


RUNTIMES = ("torch", "onnxruntime")
EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")


@dataclass(kw_only=True)
class Quantization(Options):
    """int8 (book 8.2), for `export` and for the verbs that run a checkpoint."""

    quantize: str | None = option(None, panel="Inference")
    """int8: static with calibration for convolutional networks, dynamic for linear layers."""
    calibrate: str | None = option(None, panel="Inference")
    """Data whose inputs calibrate static int8 (default: built-in data)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantize not in (None, "int8"):
            raise LbdlError(f"--quantize {self.quantize}: the one quantization is int8")
        if self.calibrate is not None and not self.quantize:
            raise LbdlError("--calibrate: it calibrates int8, so only with --quantize int8")


@dataclass(kw_only=True)
class Inference(Quantization):
    """How a verb that runs a checkpoint runs its networks (core.runtime)."""

    runtime: str | None = option(None, panel="Inference")
    """torch or onnxruntime (exported on first use, cached beside the checkpoint). Default:
    torch, or onnxruntime with --quantize int8."""
    amp: bool = option(True, panel="Inference")
    """Mixed precision on GPU (bf16 where supported, else fp16)."""
    compile: bool = option(False, panel="Inference")
    """torch.compile the networks (PyTorch runtime)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.runtime not in (None, *RUNTIMES):
            raise LbdlError(f"--runtime {self.runtime}: choose {' or '.join(RUNTIMES)}")
        if self.compile and self.runtime == "onnxruntime":
            raise LbdlError("--compile: compiles PyTorch, so not with --runtime onnxruntime")


@dataclass(kw_only=True)
class ExportArgs(Quantization, OutputArgs):
    """The options of every `export` verb."""

    checkpoint: str = option(argument=True)
    """A checkpoint of this app: a .safetensors file, a run folder or a model name."""
    format: str = "onnx"
    """onnx, torchscript or exported-program (int8: onnx only)."""
    out: Path | None = None
    """Output folder (default: a new export, export2, ... in the checkpoint's run folder)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in EXPORT_FORMATS:
            raise LbdlError(f"--format {self.format}: choose {', '.join(EXPORT_FORMATS)}")
        if self.quantize and self.format != "onnx":
            raise LbdlError(
                f"--quantize int8: written by ONNX Runtime, so --format onnx, not {self.format}"
            )
