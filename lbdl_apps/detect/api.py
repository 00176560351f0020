"""The detect Python API: `load(checkpoint).detect(image)` and `.predict(paths)`; the CLI
uses it too. Boxes come back in pixels of the original image."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from lbdl_apps.core.batch import BatchReport, read_each
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.data import convert_image, load_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import deploy
from lbdl_apps.detect.boxes import select
from lbdl_apps.detect.data import Preprocessing
from lbdl_apps.detect.model import DecodedSSD, SSDConfig, build_model

TASK = "detect"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Detections:
    """The objects found in one image (or video frame): boxes (K, 4) x1 y1 x2 y2 in pixels,
    scores (K,), class indices (K,) and names; `frame` is the video frame index."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: list[str] = field(default_factory=list)
    frame: int | None = None


def _colors(n: int) -> list[tuple[int, int, int]]:
    hues = np.linspace(0, 179, max(n, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], 1)[None]
    return [tuple(int(v) for v in c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]


def draw(image: np.ndarray, found: Detections, num_classes: int) -> np.ndarray:
    """The RGB image (H, W, 3) uint8 with each box, its class name and score drawn."""
    canvas = np.ascontiguousarray(image.copy())
    colors = _colors(num_classes)
    thickness = max(1, round(max(canvas.shape[:2]) / 300))
    scale = max(0.35, max(canvas.shape[:2]) / 900)
    for box, score, cls, name in zip(
        found.boxes, found.scores, found.classes, found.names, strict=True
    ):
        x1, y1, x2, y2 = np.rint(box).astype(int).tolist()
        color = colors[int(cls) % len(colors)]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - base - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            text,
            (x1 + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


class Detector:
    """A trained SSD with its classes, preprocessing and candidate selection (the best 1000
    pairs of all classes before NMS, or as the checkpoint's "postprocessing" says: the best
    `pre_nms` of each class for torchvision's models). `network` is what inference runs:
    images -> (boxes, probabilities), the SSD with its box decoding (`DecodedSSD`) or what
    `core.runtime.deploy` put in its place (ONNX Runtime, int8)."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.network: nn.Module = DecodedSSD(self.model).eval()
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.config: SSDConfig = meta["config"]
        self.preprocessing = Preprocessing.of(meta, self.config.image_size)
        self.image_size: int = self.preprocessing.image_size
        self.postprocessing: dict = meta.get("postprocessing") or {}
        self.pre_nms = int(self.postprocessing.get("pre_nms", 1000))
        self.per_class = bool(self.postprocessing.get("per_class", False))
        self.device = device

    def class_indices(self, classes: Sequence[str] | None) -> list[int] | None:
        """Class names (or indices as text) -> indices; LbdlError for an unknown one."""
        if classes is None:
            return None
        chosen = []
        for item in classes:
            if item in self.labels:
                chosen.append(self.labels.index(item))
            elif item.isdigit() and int(item) < len(self.labels):
                chosen.append(int(item))
            else:
                raise LbdlError(
                    f"--classes {item}: not a class of this model ({', '.join(self.labels[:10])})"
                )
        return chosen

    def _input(self, image: np.ndarray) -> torch.Tensor:
        """An RGB uint8 array resized to the square input and normalized as the model was
        trained."""
        tensor = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)  # HWC -> CHW
        return self.preprocessing(tensor)

    @torch.no_grad()
    def detect_arrays(
        self,
        images: Sequence[np.ndarray],
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 100,
        classes: Sequence[int] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(boxes in pixels, scores, classes) of RGB uint8 arrays (H, W, 3)."""
        batch = torch.stack([self._input(image) for image in images]).to(self.device)
        boxes, probs = self.network(batch)
        found_all = select(boxes, probs, conf, iou, max_det, classes, self.pre_nms, self.per_class)
        results = []
        for image, found in zip(images, found_all, strict=True):
            height, width = image.shape[:2]
            scale = torch.tensor([width, height, width, height], device=found["boxes"].device)
            results.append(
                (
                    (found["boxes"] * scale).cpu().numpy(),
                    found["scores"].cpu().numpy(),
                    found["labels"].cpu().numpy(),
                )
            )
        return results

    def detect(
        self,
        image: Image.Image | str | Path | np.ndarray,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 100,
        classes: Sequence[int] | None = None,
    ) -> Detections:
        """Objects in a PIL image, an RGB array or an image file."""
        path = str(image) if isinstance(image, (str, Path)) else ""
        array = self._array(image)
        return self._wrap(path, array, *self.detect_arrays([array], conf, iou, max_det, classes)[0])

    def _array(self, image: Image.Image | str | Path | np.ndarray) -> np.ndarray:
        if isinstance(image, (str, Path)):
            image = load_image(image, "RGB")
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return np.asarray(convert_image(image, "RGB"))

    def _wrap(self, path: str, array: np.ndarray, boxes, scores, classes, frame=None) -> Detections:
        names = [self.labels[int(c)] for c in classes]
        height, width = array.shape[:2]
        return Detections(path, width, height, boxes, scores, classes, names, frame)

    def iter_predict(
        self,
        paths: Iterable[str | Path],
        report: BatchReport | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 100,
        classes: Sequence[int] | None = None,
    ) -> Iterator[tuple[Detections, np.ndarray]]:
        """(detections, RGB image) of image files, and of every frame of video files;
        unreadable files go to `report` (or raise)."""
        for path, media in read_each(paths, read_media, report):
            video = not isinstance(media, np.ndarray)
            for frame, array in enumerate(media if video else [media]):
                found = self.detect_arrays([array], conf, iou, max_det, classes)[0]
                yield self._wrap(str(path), array, *found, frame=frame if video else None), array

    def predict(self, paths: Iterable[str | Path], **kw) -> list[Detections]:
        return [found for found, _ in self.iter_predict(paths, **kw)]


def read_media(path: Path) -> np.ndarray | Iterator[np.ndarray]:
    """An image file as an RGB array (H, W, 3), or a video file as its RGB frames."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return read_video(path)
    return np.asarray(load_image(path, "RGB"))


def read_video(path: Path) -> Iterator[np.ndarray]:
    """RGB frames of a video file (OpenCV); LbdlError at once if it cannot be opened or its
    first frame cannot be read."""
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        opened = capture.isOpened()
        capture.release()
        raise LbdlError(
            f"{path}: no frames could be read" if opened else f"{path}: cannot open video"
        )
    return _frames(capture, first)


def _frames(capture: cv2.VideoCapture, frame: np.ndarray) -> Iterator[np.ndarray]:
    try:
        ok = True
        while ok:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = capture.read()
    finally:
        capture.release()


def video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if fps and fps > 0 else 25.0


def coco_results(found: Detections, image_id: int) -> list[dict]:
    """COCO results format: one {image_id, category_id, bbox [x, y, w, h], score} per box
    (category ids are the class indices; file_name and frame say where the image came from)."""
    rows = []
    for box, score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        row = {
            "image_id": image_id,
            "category_id": int(cls),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(score), 5),
            "file_name": found.path,
        }
        if found.frame is not None:
            row["frame"] = found.frame
        rows.append(row)
    return rows


def yolo_lines(found: Detections) -> str:
    """YOLO txt: `class cx cy w h score` per box, normalized by the image size."""
    lines = []
    for box, score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy = (x1 + x2) / 2 / found.width, (y1 + y2) / 2 / found.height
        w, h = (x2 - x1) / found.width, (y2 - y1) / found.height
        lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {float(score):.5f}")
    return "".join(line + "\n" for line in lines)


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", inference: Inference | None = None
) -> Detector:
    """Load a `lbdl detect` checkpoint: a .safetensors file, a run folder, a registry name
    (coco:ssd300, coco:ssdlite320) or a torchvision SSD state dict (.pth); its network run
    as `inference` says (default: PyTorch)."""
    from lbdl_apps.detect.export import deployment

    model, meta = load_model(checkpoint, TASK, build_model, SSDConfig)
    detector = Detector(model, meta, resolve_device(device))
    deploy(deployment(detector), inference, detector.device)
    return detector
