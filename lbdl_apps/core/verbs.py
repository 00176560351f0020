"""Verbs built from their options dataclass (DESIGN.md): `@verb(app)` on a function
`fn(args: SomeArgs, common: Common) -> int | None` registers a typer command whose options
are the fields of SomeArgs and of Common, with their defaults, bounds and help, so a verb's
options are declared once. The command applies the error rule: a user error is one line on
stderr and exit 2, Ctrl-C exit 130; the function's return value is the exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
import traceback
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lbdl_apps.core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, LbdlError, report
from lbdl_apps.core.options import (
    Common,
    RunArgs,
    default_of,
    help_texts,
)
from lbdl_apps.core.signals import StopSignals, raise_if_received

# The click that typer runs on (recent typer releases vendor their own copy).
click_exceptions = sys.modules[typer.BadParameter.__module__]


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


CONFIG_PARAMETER = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file of option values (keys are option names); flags given here win.",
            is_eager=True,
            callback=_load_config_defaults,
        ),
    ],
)


def parameters(cls: type) -> list[inspect.Parameter]:
    """The typer parameters of an options dataclass: one per field, its help the docstring
    under the field, its bounds and flags from the field's metadata."""
    hints = typing.get_type_hints(cls)
    texts = help_texts(cls)
    result = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        details: dict[str, Any] = {"help": texts.get(f.name, "")}
        if meta.get("min") is not None:
            details["min"] = meta["min"]
        if meta.get("max") is not None:
            details["max"] = meta["max"]
        if meta.get("panel"):
            details["rich_help_panel"] = meta["panel"]
        if meta.get("argument"):
            info = typer.Argument(**details)
        else:
            info = typer.Option(*(meta.get("flags") or ()), **details)
        default = default_of(f)
        result.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
                annotation=Annotated[hints[f.name], info],
            )
        )
    return result


def one_line_warnings(debug: bool) -> contextlib.AbstractContextManager:
    """Python warnings of the libraries (PIL, torch, ...) shown as one line of ours each,
    once per message (all of them, as Python shows them, with --debug)."""
    if debug:
        return contextlib.nullcontext()
    shown: set[tuple[type, str]] = set()

    def show(message: Any, category: type, *_: Any, **__: Any) -> None:
        lines = str(message).strip().splitlines()
        text = lines[0] if lines else category.__name__
        if (category, text) not in shown:
            shown.add((category, text))
            report(f"warning: {text}")

    patched = contextlib.ExitStack()
    patched.enter_context(warnings.catch_warnings())
    warnings.showwarning = show
    return patched


def run_guarded(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a verb body under the error rule: LbdlError -> one line + exit 2, Ctrl-C -> exit 130."""
    from lbdl_apps.core.outputs import forget_made_folders, remove_unused_folders

    forget_made_folders()
    try:
        result = fn()
        raise_if_received()  # a Ctrl-C that a library swallowed still gives exit 130
        return result
    except LbdlError as error:
        remove_unused_folders()
        if debug:
            traceback.print_exc()
        report(f"error: {error}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        remove_unused_folders()
        report("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as error:  # the file system refused (read-only, full, not a folder)
        remove_unused_folders()
        if debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename else ""
        report(f"error: {where}{error.strerror or error}")
        raise typer.Exit(EXIT_USER_ERROR) from None


def verb(
    app: typer.Typer, name: str | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Register `fn(args, common)` as the command `name` of `app` (and under each alias):
    its options are the fields of the dataclass `args` is annotated with, then --config for a
    training verb, then the common options."""

    def decorate(fn: Callable) -> Callable:
        cls = typing.get_type_hints(fn)["args"]
        own = parameters(cls)
        config = [CONFIG_PARAMETER] if issubclass(cls, RunArgs) else []
        common_names = [f.name for f in dataclasses.fields(Common)]

        def command(**values: Any) -> None:
            values.pop("config", None)
            common = Common(**{key: values.pop(key) for key in common_names})

            def body() -> Any:
                args = cls(**values)
                common.apply()
                return fn(args, common)

            # SIGTERM, like Ctrl-C: exit 130 with one line
            with StopSignals().installed(), one_line_warnings(common.debug):
                code = run_guarded(body, common.debug)
            if code:
                raise typer.Exit(code)

        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        command.__signature__ = inspect.Signature([*own, *config, *parameters(Common)])  # type: ignore[attr-defined]
        verb_name = name or fn.__name__.replace("_", "-")
        app.command(verb_name)(command)
        for alias in aliases:
            app.command(alias, help=f"The same as {verb_name}.")(command)
        return fn

    return decorate


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (bad flag value, unknown option) is one line on
    stderr and exit 2, like every other user error; Ctrl-C while the command line is read
    (which typer would end silently) is one line and exit 130."""

    def make_context(self, *args: Any, **extra: Any) -> typer.Context:
        try:
            return super().make_context(*args, **extra)
        except KeyboardInterrupt as interrupt:
            raise typer.Abort from interrupt

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:
            raise typer.Abort from interrupt

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
        except typer.Abort:  # Ctrl-C (or SIGTERM) outside a verb's body, e.g. while parsing
            report("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)
