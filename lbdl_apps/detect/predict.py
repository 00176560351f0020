"""`lbdl detect predict`: images and videos in, drawn boxes, COCO-results JSON and YOLO txt
out (book 6.3)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.data import expand_inputs, find_images, save_image
from lbdl_apps.core.errors import BatchReport
from lbdl_apps.detect.api import (
    VIDEO_EXTENSIONS,
    Detections,
    coco_results,
    draw,
    load,
    video_fps,
    yolo_lines,
)

TASK = "detect"


class VideoOut:
    """Drawn frames of one input video, written to <out>/<stem>.mp4 (temporary name, then
    renamed when the video ends)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        self.writer: cv2.VideoWriter | None = None

    def add(self, frame: np.ndarray) -> None:
        if self.writer is None:
            size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size
            )
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.tmp.replace(self.path)


def expand_media(inputs: list[str]) -> list[Path]:
    """Image files, folders and globs as `core.data.expand_inputs` finds them, plus the
    videos inside the given folders."""
    videos: list[Path] = []
    rest: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
            videos += found
            if found and not find_images(path):
                continue
        rest.append(item)
    return (expand_inputs(rest) if rest else []) + videos


def _unique_stem(path: str, used: set[str]) -> str:
    stem = Path(path).stem
    while stem in used:  # same name in two folders
        stem += "_"
    used.add(stem)
    return stem


def run_prediction(
    checkpoint: Path,
    inputs: list[str],
    out: Path | None,
    conf: float,
    iou: float,
    max_det: int,
    classes: list[str] | None,
    save_txt: bool,
    save_images: bool,
    strict: bool,
    common: Common,
) -> int:
    """Detect objects in every input; returns the batch exit code (3 if a file failed)."""
    detector = load(checkpoint, common.torch_device())
    chosen = detector.class_indices(classes)
    paths = expand_media(inputs)
    report = BatchReport(strict=strict)
    folder = out or Path("runs") / TASK / "predict"
    folder.mkdir(parents=True, exist_ok=True)
    console = Console(quiet=common.quiet)
    results: list[dict] = []
    images: list[dict] = []
    used: set[str] = set()
    video: VideoOut | None = None
    stems: dict[str, str] = {}
    for found, image in detector.iter_predict(paths, report, conf, iou, max_det, chosen):
        if found.path not in stems:
            stems[found.path] = _unique_stem(found.path, used)
            if video is not None:
                video.close()
                video = None
            if found.frame is not None:
                video = VideoOut(folder / f"{stems[found.path]}.mp4", video_fps(Path(found.path)))
            report.ok()
        stem = stems[found.path]
        image_id = len(images)
        images.append(
            {
                "id": image_id,
                "file_name": found.path,
                "width": found.width,
                "height": found.height,
                **({"frame": found.frame} if found.frame is not None else {}),
            }
        )
        results += coco_results(found, image_id)
        name = stem if found.frame is None else f"{stem}_{found.frame}"
        if save_images:
            drawn = draw(image, found, len(detector.labels))
            if video is not None:
                video.add(drawn)
            else:
                save_image(drawn, folder / f"{name}.jpg")
        if save_txt:
            with atomic_path(folder / "labels" / f"{name}.txt") as tmp:
                tmp.write_text(yolo_lines(found))
        _say(console, found)
    if video is not None:
        video.close()
    _write_json(folder, results, images, detector.labels)
    print(f"{report.summary('files')}; {len(results)} objects; results: {folder}")
    return report.exit_code


def _say(console: Console, found: Detections) -> None:
    where = found.path if found.frame is None else f"{found.path} frame {found.frame}"
    counts: dict[str, int] = {}
    for name in found.names:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"
    console.print(f"{where}: {listed}", highlight=False)


def _write_json(folder: Path, results: list[dict], images: list[dict], labels: list[str]) -> None:
    """predictions.json (COCO results: a list of detections) and images.json (the image ids,
    files and class names they refer to)."""
    with atomic_path(folder / "predictions.json") as tmp:
        tmp.write_text(json.dumps(results))
    index = {"images": images, "categories": [{"id": i, "name": n} for i, n in enumerate(labels)]}
    with atomic_path(folder / "images.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1))
