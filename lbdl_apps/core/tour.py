"""`lbdl tour`: each app registers a short train -> evaluate -> predict step on built-in data;
the tour runs them all and writes one HTML report."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from lbdl_apps.core.options import Common, RunArgs
from lbdl_apps.core.outputs import write_json


@dataclass
class TourResult:
    """What one app's tour step shows: headline metrics and pictures."""

    metrics: dict[str, float]
    images: list[Path] = field(default_factory=list)
    notes: str = ""


@dataclass
class TourStep:
    name: str
    title: str
    run: Callable[[Path, bool, Common], TourResult]  # (work folder, quick, options) -> result


STEPS: dict[str, TourStep] = {}
A = TypeVar("A", bound=RunArgs)


def train_in(
    workdir: Path, train: Callable[[A, Common], Any], args: A, common: Common
) -> tuple[Path, Any]:
    """Train `args` into workdir/train (a new tour reuses the folder); returns the best
    checkpoint and what `train` returned."""
    run_dir = workdir / "train"
    result = train(replace(args, run_dir=run_dir, exist_ok=True), common)
    return run_dir / "model.safetensors", result


def register_tour_step(name: str, title: str) -> Callable:
    """Decorator an app uses to add its step: `fn(workdir, quick, common) -> TourResult`."""

    def decorate(fn: Callable[[Path, bool, Common], TourResult]) -> Callable:
        STEPS[name] = TourStep(name, title, fn)
        return fn

    return decorate


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def write_report(results: dict[str, tuple[TourStep, TourResult, float]], path: Path) -> None:
    """A self-contained HTML page (pictures embedded) summarising every step."""
    sections = []
    for step, result, seconds in results.values():
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in result.metrics.items()
        )
        images = "".join(_image_tag(p) for p in result.images if p.exists())
        sections.append(
            f"<section><h2>{html.escape(step.title)} <small>({seconds:.0f} s)</small></h2>"
            f"<p>{html.escape(result.notes)}</p><table>{rows}</table>"
            f'<div class="pictures">{images}</div></section>'
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>lbdl tour</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
        "img{max-width:520px;image-rendering:pixelated}figure{display:inline-block;margin:8px}"
        "</style></head><body><h1>lbdl tour</h1>"
        f"<p>{time.strftime('%Y-%m-%d %H:%M')}</p>{''.join(sections)}</body></html>"
    )
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    summary = {name: r.metrics for name, (_, r, _) in results.items()}
    write_json(path.parent / "summary.json", summary)
