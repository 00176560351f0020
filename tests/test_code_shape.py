"""The shape the code keeps (issue 23, DESIGN.md): small modules, short functions, options
declared once (no `locals()`), every app with the folder contract and a `predict` verb."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lbdl_apps.cli import app, discover_apps

PACKAGE = Path(__file__).resolve().parents[1] / "lbdl_apps"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
CONTRACT = ("cli.py", "data.py", "model.py", "loss.py", "api.py")


def test_modules_are_small() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert not long, long


def test_functions_are_short() -> None:
    long = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {lines}")
    assert not long, long


def test_no_locals() -> None:
    calls = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "locals"
    ]
    assert not calls, calls


@pytest.mark.parametrize("name", discover_apps())
def test_every_app_keeps_the_folder_contract(name: str) -> None:
    missing = [f for f in CONTRACT if not (PACKAGE / name / f).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("name", discover_apps())
def test_every_app_has_predict(name: str) -> None:
    result = CliRunner().invoke(app, [name, "predict", "--help"])
    assert result.exit_code == 0, result.output
    assert "--device" in result.output and "checkpoint" in result.output
