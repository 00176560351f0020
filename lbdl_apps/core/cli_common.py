"""What every verb of every app shares: the common options and the error rule (DESIGN.md)."""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from lbdl_apps.core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, LbdlError, report

PANEL = "Common options"
# The click that typer runs on (recent typer releases vendor their own copy).
click_exceptions = sys.modules[typer.BadParameter.__module__]


Settings = TypeVar("Settings")


def from_options(cls: type[Settings], values: dict[str, Any]) -> Settings:
    """The dataclass `cls` built from a verb's options (its `locals()`): the values whose
    names are fields of `cls`."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Common:
    """The options that come after the verb on every verb."""

    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    quiet: bool = False
    debug: bool = False

    def apply(self) -> None:
        """Set the thread count and seed every random generator."""
        from lbdl_apps.core.device import seed_everything, set_threads

        set_threads(self.threads)
        seed_everything(self.seed)

    def torch_device(self):
        from lbdl_apps.core.device import resolve_device

        return resolve_device(self.device)


COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "device": (
        Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=PANEL)],
        "auto",
    ),
    "threads": (
        Annotated[
            int | None,
            typer.Option(help="CPU threads for torch (default: torch's).", rich_help_panel=PANEL),
        ],
        None,
    ),
    "seed": (Annotated[int, typer.Option(help="Random seed.", rich_help_panel=PANEL)], 0),
    "quiet": (
        Annotated[
            bool, typer.Option("--quiet", "-q", help="No progress bars.", rich_help_panel=PANEL)
        ],
        False,
    ),
    "debug": (
        Annotated[
            bool, typer.Option("--debug", help="Show tracebacks of errors.", rich_help_panel=PANEL)
        ],
        False,
    ),
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a user error."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise LbdlError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise LbdlError(f"{path}: not valid TOML ({error})") from None


def _load_config_defaults(ctx: typer.Context, param: Any, value: Path | None) -> Path | None:
    """`--config FILE.toml`: its keys become the defaults of the verb's options (flags win)."""
    if value is None:
        return value
    try:
        values = read_toml(value)
    except LbdlError as error:
        raise typer.BadParameter(str(error)) from None
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, setting in values.items():
        name = key.replace("-", "_")
        if name not in known or name in ("config", "resume"):
            raise typer.BadParameter(f"{value}: unknown setting '{key}'")
        defaults[name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file of option values (keys are option names); flags given here win.",
        is_eager=True,
        callback=_load_config_defaults,
    ),
]


# Options that every `train` verb offers under the same names (DESIGN.md); defaults are per app.
DataOption = Annotated[
    str | None,
    typer.Option(help="Dataset: a folder, a file or a dataset name (default: built-in data)."),
]
EpochsOption = Annotated[int, typer.Option(min=1, help="Training epochs.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Batch size.")]
LrOption = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")]
NameOption = Annotated[
    str | None, typer.Option(help="Run name under runs/<task>/ (default: train, train2, ...).")
]
RunDirOption = Annotated[Path | None, typer.Option(help="Run folder (instead of --name).")]
ExistOkOption = Annotated[bool, typer.Option(help="Allow writing into an existing run folder.")]
ResumeOption = Annotated[
    Path | None, typer.Option(help="Resume the interrupted run in this folder.")
]
WorkersOption = Annotated[int, typer.Option(min=0, help="Data-loading worker processes.")]
PatienceOption = Annotated[
    int | None, typer.Option(min=1, help="Stop after this many epochs without improvement.")
]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (created if missing).")]
StrictOption = Annotated[bool, typer.Option(help="Stop at the first unreadable input (exit 2).")]
WeightDecayOption = Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")]
WarmupOption = Annotated[float, typer.Option(min=0.0, help="Warm-up epochs.")]
EmaOption = Annotated[float | None, typer.Option(help="EMA decay of the weights, e.g. 0.999.")]
ValFractionOption = Annotated[
    float, typer.Option(min=0.0, max=0.9, help="Share of the data held out for validation.")
]
AmpOption = Annotated[bool, typer.Option(help="Mixed precision on GPU.")]
CompileOption = Annotated[bool, typer.Option(help="torch.compile the model.")]
SavePeriodOption = Annotated[int | None, typer.Option(min=1, help="Save state every N steps.")]


def run_guarded(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a verb body under the error rule: LbdlError -> one line + exit 2, Ctrl-C -> exit 130."""
    try:
        return fn()
    except LbdlError as error:
        if debug:
            traceback.print_exc()
        report(f"error: {error}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        report("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def verb(app: typer.Typer, name: str | None = None, **command_kwargs: Any) -> Callable:
    """Register `fn(..., common: Common)` as a command of `app` with the common options added."""

    def decorate(fn: Callable) -> Callable:
        # eval_str: with `from __future__ import annotations` the hints are strings, and typer
        # would not see the typer.Option(...) inside Annotated (help, min/max, callbacks).
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "common"]
        added = [
            inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
            for key, (hint, default) in COMMON_OPTIONS.items()
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            common = Common(**{key: kwargs.pop(key) for key in COMMON_OPTIONS})

            def body() -> Any:
                common.apply()
                return fn(**kwargs, common=common)

            return run_guarded(body, common.debug)

        command.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        command.__annotations__ = {
            **{p.name: p.annotation for p in own},
            **{key: hint for key, (hint, _) in COMMON_OPTIONS.items()},
        }
        app.command(name, **command_kwargs)(command)
        return fn

    return decorate


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (bad flag value, unknown option) is one line on
    stderr and exit 2, like every other user error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as error:
            print(error.format_message(), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except click_exceptions.ClickException as error:
            where = error.ctx.command_path if getattr(error, "ctx", None) else "lbdl"
            report(f"error: {where}: {error.format_message()} (see --help)")
            sys.exit(error.exit_code)
        except typer.Abort:
            report("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
