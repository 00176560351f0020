"""The root `lbdl` command: mounts every task app, plus `lbdl doctor` and `lbdl tour`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import lbdl_apps
from lbdl_apps.core.options import Common, Options, option
from lbdl_apps.core.tour import STEPS, TourResult, write_report
from lbdl_apps.core.verbs import OneLineErrors, verb

# OpenCV and the FFmpeg inside it print their own warnings on stderr (a video they cannot
# read is reported by lbdl, in one line): keep them quiet unless the user chose otherwise.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

app = typer.Typer(
    name="lbdl",
    cls=OneLineErrors,
    help="The applications of The Little Book of Deep Learning as command-line tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
APP_ORDER = ["classify", "denoise", "segment", "detect", "asr", "clip", "dqn", "diffusion"]


def discover_apps() -> list[str]:
    """Task apps are the subpackages of lbdl_apps that have a `cli` module, in the book's order."""
    found = {
        m.name
        for m in pkgutil.iter_modules(lbdl_apps.__path__)
        if m.ispkg and m.name != "core" and importlib.util.find_spec(f"lbdl_apps.{m.name}.cli")
    }
    return sorted(found, key=lambda n: (APP_ORDER.index(n) if n in APP_ORDER else 99, n))


for _name in discover_apps():
    _module = importlib.import_module(f"lbdl_apps.{_name}.cli")
    app.add_typer(_module.app, name=_name)


def _version(value: bool) -> None:
    if value:
        print(f"lbdl {lbdl_apps.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """lbdl: train, evaluate and run the book's models on your own data."""


@dataclass(kw_only=True)
class DoctorArgs(Options):
    """`lbdl doctor` has only the common options."""


@dataclass(kw_only=True)
class TourArgs(Options):
    """The options of `lbdl tour`."""

    quick: bool = False
    """Tiny sizes: checks that every app runs."""
    out: Path = Path("runs/tour")
    """Folder of the tour's runs and report."""
    only: list[str] | None = option(None)
    """Run only these apps (repeatable)."""


models_app = typer.Typer(
    help="The pretrained models of the field, by name: `lbdl models` lists them, "
    "`lbdl models pull NAME` downloads and converts one.",
    no_args_is_help=False,
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context) -> None:
    """List the pretrained models (name, task, size, license, whether it is cached)."""
    if ctx.invoked_subcommand is not None:
        return
    from lbdl_apps.core import zoo

    zoo.load_registries()
    table = Table("name", "task", "size", "license", "cached", "what it is")
    for entry in sorted(zoo.REGISTRY.values(), key=lambda e: (e.task, e.name)):
        cached = "yes" if zoo.is_cached(entry) else "no"
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "?"
        table.add_row(entry.name, entry.task, size, entry.license, cached, entry.description)
    Console(width=max(Console().width, 140)).print(table)
    print(f"cache: {zoo.home()}")


@dataclass(kw_only=True)
class PullArgs(Options):
    """The options of `lbdl models pull`."""

    name: str = option(argument=True)
    """A model name, e.g. coco:ssd300 (lbdl models lists them)."""


@verb(models_app)
def pull(args: PullArgs, common: Common) -> None:
    """Download a named model from its publisher (resuming a cut download, checking its
    sha256) and convert it into an lbdl checkpoint, cached under $LBDL_HOME."""
    from lbdl_apps.core import zoo

    print(f"{args.name}: {zoo.ensure(args.name)}")


@verb(app)
def doctor(args: DoctorArgs, common: Common) -> None:
    """Versions, devices, threads and the optional data folders."""
    import torch

    console = Console()
    table = Table("component", "status", show_header=False)
    table.add_row("lbdl", lbdl_apps.__version__)
    table.add_row("python", platform.python_version())
    for package in ["torch", "torchvision", "torchaudio", "gymnasium", "ale_py", "cv2"]:
        try:
            module = importlib.import_module(package)
            table.add_row(package, getattr(module, "__version__", "installed"))
        except Exception as error:  # a broken optional install is worth showing, not fatal
            table.add_row(package, f"[red]unavailable: {error}[/red]")
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    table.add_row("cuda", ", ".join(cuda) if cuda else "no CUDA device")
    table.add_row("mps", "available" if torch.backends.mps.is_available() else "no")
    table.add_row("torch threads", f"{torch.get_num_threads()} (cpu cores: {os.cpu_count()})")
    data_root = Path(os.environ.get("LBDL_SHARED_DATA", Path.cwd().parent / "shared" / "data"))
    for name in ["fashion-mnist", "fsdd", "denoise", "membrane", "raccoon"]:
        folder = data_root / name
        table.add_row(f"data {name}", str(folder) if folder.is_dir() else "absent")
    table.add_row("apps", ", ".join(discover_apps()))
    console.print(table)


@verb(app)
def tour(args: TourArgs, common: Common) -> None:
    """Train, evaluate and predict with every app on built-in data; write report.html."""
    for name in discover_apps():
        importlib.import_module(f"lbdl_apps.{name}.tour")
    steps = [s for s in STEPS.values() if not args.only or s.name in args.only]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    results: dict[str, tuple] = {}
    for step in steps:
        console.rule(f"[bold]{step.title}")
        start = time.perf_counter()
        common.apply()  # each step starts from the same seed
        result: TourResult = step.run(out / step.name, args.quick, common)
        results[step.name] = (step, result, time.perf_counter() - start)
    table = Table("app", "metrics", "time")
    for step, result, seconds in results.values():
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        table.add_row(step.name, metrics, f"{seconds:.0f} s")
    console.print(table)
    report = out / "report.html"
    write_report(results, report)
    console.print(f"report: {report}")
