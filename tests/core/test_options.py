"""Options declared once: a verb's dataclass is its command line (help from the field
docstrings, bounds from the metadata, defaults changed by subclasses), the same checks in the
Python API, --config TOML files, aliases and the error rule of the built command."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, EvaluateArgs, Options, RunArgs, help_texts, option
from lbdl_apps.core.verbs import OneLineErrors, verb
from tests.cli_helpers import assert_user_error


@dataclass(kw_only=True)
class Base(RunArgs):
    count: int = option(3, min=1, max=9)
    """How many (1 to 9)."""
    rate: float = option(0.5, min=0.0)
    """A rate."""
    words: list[str] = option(factory=lambda: ["a"])
    """Words, repeatable."""


@dataclass(kw_only=True)
class Child(Base):
    count: int = 5
    label: str = option(argument=True)
    """The label."""


def test_help_is_the_docstring_under_each_field_and_subclasses_inherit_it() -> None:
    texts = help_texts(Child)
    assert texts["count"] == "How many (1 to 9)."
    assert texts["label"] == "The label."
    assert texts["resume"] == "Resume the interrupted run in this folder."


def test_a_changed_default_keeps_the_bounds() -> None:
    assert Child(label="x").count == 5
    bounds = {f.name: (f.metadata.get("min"), f.metadata.get("max")) for f in fields(Child)}
    assert bounds["count"] == (1, 9)
    with pytest.raises(LbdlError, match=r"--count 10: must be at most 9"):
        Child(label="x", count=10)
    with pytest.raises(LbdlError, match=r"--rate nan: must be a finite number"):
        Child(label="x", rate=float("nan"))
    assert Child(label="x").words == ["a"] and Child(label="x").words is not Base().words


def test_changed_names_the_flags_off_their_defaults() -> None:
    assert Child(label="x", count=4, resume=Path("r")).changed() == ["--resume", "--count"]


def test_evaluate_split_is_checked() -> None:
    with pytest.raises(LbdlError, match=r"--split tset: choose all, train, val, test"):
        EvaluateArgs(checkpoint="c", split="tset")


app = typer.Typer(cls=OneLineErrors)
seen: list[tuple[Child, Common]] = []


@verb(app, "go", aliases=("run",))
def go(args: Child, common: Common) -> int:
    """Do it."""
    if args.label == "bad":
        raise LbdlError("bad: not a label")
    if args.label == "swallowed":
        try:  # a library that swallows the KeyboardInterrupt, as C code clearing errors does
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
        except BaseException:
            pass
    seen.append((args, common))
    return 3 if args.label == "three" else 0


@dataclass(kw_only=True)
class Nothing(Options):
    """No options of its own."""


@verb(app)
def other(args: Nothing, common: Common) -> None:
    """Another command (a group needs two)."""


def run(*argv: str) -> object:
    seen.clear()
    return CliRunner().invoke(app, list(argv))


def test_the_dataclass_is_the_command_line() -> None:
    result = run("go", "hello", "--count", "7", "--words", "x", "--words", "y", "--seed", "4")
    assert result.exit_code == 0, result.output
    args, common = seen[0]
    assert (args.label, args.count, args.words, args.rate) == ("hello", 7, ["x", "y"], 0.5)
    assert common.seed == 4 and common.device == "auto"
    help_text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["go", "--help"]).output
    for expected in ("How many (1 to 9).", "The label.", "--resume", "--config", "--seed"):
        assert expected in help_text, expected


def test_alias_runs_the_same_command_and_the_return_value_is_the_exit_code() -> None:
    assert run("run", "three").exit_code == 3
    assert seen[0][0].label == "three"


def test_a_signal_that_a_library_swallowed_still_ends_the_command_with_130() -> None:
    result = run("go", "swallowed")
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == ["lbdl: interrupted"]
    assert run("go", "after").exit_code == 0  # the next command in this process runs


def test_errors_are_one_line_and_exit_2() -> None:
    assert_user_error(run("go", "x", "--count", "0"), "--count")
    assert_user_error(run("go", "bad"), "bad: not a label")
    assert_user_error(run("go", "x", "--rate", "-1"), "--rate")


def test_config_file_gives_defaults_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('count = 8\nrate = 0.25\nwords = ["p", "q"]\n')
    assert run("go", "x", "--config", str(config), "--count", "2").exit_code == 0
    args, _ = seen[0]
    assert (args.count, args.rate, args.words) == (2, 0.25, ["p", "q"])
    config.write_text("colour = 1\n")
    assert_user_error(run("go", "x", "--config", str(config)), "unknown setting 'colour'")
    config.write_text("count = \n")
    assert_user_error(run("go", "x", "--config", str(config)), "not valid TOML")
