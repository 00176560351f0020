"""Exporting a trained detector for deployment: TorchScript (or ONNX when the onnx package
is installed) of the network and the box decoding; score threshold, per-class NMS and top-k
stay outside the graph, as `boxes.select` does them:

    boxes, probs = exported(images)        # images: (B, 3, S, S), RGB resized to S x S,
                                           #   scaled to [0, 1], normalized with the mean
                                           #   and std of the .json
    # boxes (B, N, 4): x1 y1 x2 y2 in [0, 1]; probs (B, N, C): class probabilities
    for each image: keep (box, class) pairs with prob > conf, torchvision.ops.batched_nms
    (IoU 0.45) per class, keep the max_det best, multiply boxes by the image width/height.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import atomic_path, json_text
from lbdl_apps.detect.api import Detector
from lbdl_apps.detect.boxes import decode
from lbdl_apps.detect.cli import EXPORT_FORMATS


class DecodedSSD(nn.Module):
    """The SSD with its default boxes inside: images -> (boxes, class probabilities)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("priors", model.priors.clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        offsets, logits = self.model(images)
        boxes = decode(offsets, self.priors).clamp(0.0, 1.0)
        return boxes, logits.softmax(-1)[..., 1:]


def sidecar(detector: Detector) -> dict:
    """What a user of the exported file needs beside it (written as <name>.json)."""
    size, pre = detector.image_size, detector.preprocessing
    resize = "with antialiasing" if pre.resize == "square" else "without antialiasing"
    candidates = f"the {detector.pre_nms} best " + ("of each class" if detector.per_class else "")
    return {
        "labels": detector.labels,
        "input": {
            "shape": [None, 3, size, size],
            "color": "RGB",
            "resize": f"square, bilinear {resize}, aspect ratio not kept",
            "scale": "1/255",
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "outputs": {
            "boxes": "(B, N, 4) x1 y1 x2 y2 in [0, 1] of the input",
            "probs": "(B, N, C) class probabilities (no 'no object' column)",
        },
        "postprocess": f"threshold probs (0.25), keep {candidates.strip()}, "
        "torchvision.ops.batched_nms per class (IoU 0.45), top max_det (100), boxes times "
        "(width, height, width, height)",
    }


def export(detector: Detector, out: Path, formats: list[str], batch: int = 1) -> list[Path]:
    """Write <out>/model.pt (TorchScript) and/or <out>/model.onnx, each with its .json."""
    for fmt in formats:
        if fmt not in EXPORT_FORMATS:
            raise LbdlError(f"--format {fmt}: choose {' or '.join(EXPORT_FORMATS)}")
    wrapped = DecodedSSD(detector.model.cpu().eval()).eval()
    example = torch.zeros(batch, 3, detector.image_size, detector.image_size)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out / ("model.pt" if fmt == "torchscript" else "model.onnx")
        if fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit.trace: still supported
                traced = torch.jit.trace(wrapped, example)
            with atomic_path(path) as tmp:
                traced.save(str(tmp))
        else:
            _export_onnx(wrapped, example, path)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json_text(sidecar(detector)))
        written.append(path)
    return written


def _export_onnx(wrapped: nn.Module, example: Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise LbdlError(
            "--format onnx: needs the onnx and onnxscript packages (pip install onnx onnxscript)"
        ) from None
    with atomic_path(path) as tmp:
        torch.onnx.export(
            wrapped,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["boxes", "probs"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        )
