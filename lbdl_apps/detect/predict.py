"""`lbdl detect predict`: images and videos in, drawn boxes, COCO-results JSON and YOLO txt
out (book 6.3)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rich.console import Console

from lbdl_apps.core.batch import BatchReport
from lbdl_apps.core.data import expand_inputs, find_images, save_image
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import OutputNames, atomic_path, batch_folder, json_text
from lbdl_apps.detect.api import (
    TASK,
    VIDEO_EXTENSIONS,
    Detections,
    coco_results,
    draw,
    load,
    video_fps,
    yolo_lines,
)
from lbdl_apps.detect.cli import PredictArgs


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


class Outputs:
    """What predict writes for each detected image or frame: the drawn image (a video's
    frames into its drawn video), its YOLO txt with --save-txt, and its entries of
    predictions.json / images.json."""

    def __init__(self, folder: Path, labels: list[str], args: PredictArgs) -> None:
        self.folder, self.labels, self.args = folder, labels, args
        self.results: list[dict] = []
        self.images: list[dict] = []
        self.stems: dict[str, str] = {}
        self.names = OutputNames()
        self.video: VideoOut | None = None

    def add(self, found: Detections, image: np.ndarray) -> bool:
        """Write the outputs of one image or frame; True for the first one of its file."""
        first = found.path not in self.stems
        if first:
            self.stems[found.path] = self.names(found.path)
            self.close()
            if found.frame is not None:
                path = self.folder / f"{self.stems[found.path]}.mp4"
                self.video = VideoOut(path, video_fps(Path(found.path)))
        image_id = len(self.images)
        entry = {"id": image_id, "file_name": found.path, "width": found.width}
        entry["height"] = found.height
        if found.frame is not None:
            entry["frame"] = found.frame
        self.images.append(entry)
        self.results += coco_results(found, image_id)
        stem = self.stems[found.path]
        name = stem if found.frame is None else f"{stem}_{found.frame}"
        if self.args.save_images:
            drawn = draw(image, found, len(self.labels))
            if self.video is not None:
                self.video.add(drawn)
            else:
                save_image(drawn, self.folder / f"{name}.jpg")
        if self.args.save_txt:
            with atomic_path(self.folder / "labels" / f"{name}.txt") as tmp:
                tmp.write_text(yolo_lines(found))
        return first

    def close(self) -> None:
        """Finish the video being written, if any."""
        if self.video is not None:
            self.video.close()
            self.video = None

    def write_json(self) -> None:
        """predictions.json (COCO results: a list of detections) and images.json (the image
        ids, files and class names they refer to)."""
        with atomic_path(self.folder / "predictions.json") as tmp:
            tmp.write_text(json_text(self.results, indent=None))
        categories = [{"id": i, "name": n} for i, n in enumerate(self.labels)]
        index = {"images": self.images, "categories": categories}
        with atomic_path(self.folder / "images.json") as tmp:
            tmp.write_text(json_text(index, indent=1))


def run_prediction(args: PredictArgs, common: Common) -> int:
    """Detect objects in every input; returns the batch exit code (3 if a file failed)."""
    folder = batch_folder(TASK, "predict", args.out, args.exist_ok)
    detector = load(args.checkpoint, common.torch_device(), args)
    listed = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    chosen = detector.class_indices(None if listed is None else [c for c in listed if c])
    paths = expand_media(args.inputs)
    report = BatchReport(strict=args.strict)
    console = Console(quiet=common.quiet)
    outputs = Outputs(folder, detector.labels, args)
    found_all = detector.iter_predict(paths, report, args.conf, args.iou, args.max_det, chosen)
    for found, image in found_all:
        if outputs.add(found, image):
            report.ok()
        _say(console, found)
    outputs.close()
    outputs.write_json()
    print(f"{len(outputs.results)} objects found")
    return report.finish("files", folder)


def _say(console: Console, found: Detections) -> None:
    where = found.path if found.frame is None else f"{found.path} frame {found.frame}"
    counts: dict[str, int] = {}
    for name in found.names:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"
    console.print(f"{where}: {listed}", highlight=False)
