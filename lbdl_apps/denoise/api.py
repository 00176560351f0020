"""The denoise Python API: `load(checkpoint).restore(image)`; the CLI uses it too."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lbdl_apps.core.batch import BatchReport, read_each
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.data import convert_image, load_image, save_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.options import Inference
from lbdl_apps.core.outputs import OutputNames
from lbdl_apps.core.runtime import deploy
from lbdl_apps.core.tiles import tiled_apply
from lbdl_apps.denoise.degrade import (
    Degradation,
    apply_all,
    from_uint8,
    parse_spec,
    scale_factor,
    to_uint8,
)
from lbdl_apps.denoise.model import RestorerConfig, build_model, size_multiple

TASK = "denoise"


@dataclass
class Restored:
    """One restored file: where it came from and the files written."""

    path: str
    output: str
    compare: str | None = None


class Restorer:
    """A trained restoration model with its degradations, ready for inference."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.config: RestorerConfig = meta["config"]
        self.channels: int = self.config.channels
        self.degradations = [parse_spec(s) for s in meta["degradations"]]
        self.multiple: int = size_multiple(self.config)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @torch.no_grad()
    def _net(self, batch: Tensor) -> Tensor:
        return self.model(batch.to(self.device)).float().cpu()

    def restore_tensor(
        self, image: Tensor, tile: int = 256, overlap: int = 32, batch_size: int = 1
    ) -> Tensor:
        """Restore a float (C, H, W) image in [0, 1] (any size: overlapping tiles); the output
        is clamped to [0, 1]."""
        tile = max(self.multiple, tile - tile % self.multiple)
        out = tiled_apply(self._net, image, tile, overlap, self.multiple, batch_size)
        return out.clamp_(0, 1)

    def restore_array(self, image: np.ndarray, tile: int = 256, overlap: int = 32) -> np.ndarray:
        """Restore a float (H, W, C) array in [0, 1]; returns float32 (H, W, C)."""
        # (H, W, C) -> (C, H, W) -> restored -> (H, W, C)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))
        return self.restore_tensor(tensor, tile, overlap).permute(1, 2, 0).numpy()

    def prepare(
        self,
        image: Image.Image | str | Path,
        degrade: Sequence[Degradation | str] | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """The model's input for an image: read in the model's mode, then degraded (seeded)
        when `degrade` is given; without it, the image of a super-resolution model is first
        enlarged by its factor (bicubic)."""
        if isinstance(image, (str, Path)):
            picture = load_image(image, self.mode)
        else:
            picture = convert_image(image, self.mode)
        factor = scale_factor(self.degradations)
        if not degrade and factor > 1:
            picture = picture.resize(
                (picture.width * factor, picture.height * factor), Image.Resampling.BICUBIC
            )
        array = from_uint8(np.asarray(picture))
        if degrade:
            specs = [d if isinstance(d, Degradation) else parse_spec(d) for d in degrade]
            array, _ = apply_all(array, specs, np.random.RandomState(seed))
        return array

    def restore(
        self,
        image: Image.Image | str | Path,
        degrade: Sequence[Degradation | str] | None = None,
        seed: int = 0,
        tile: int = 256,
        overlap: int = 32,
    ) -> Image.Image:
        """Restore a PIL image or an image file; returns a PIL image ("L" or "RGB")."""
        restored = self.restore_array(self.prepare(image, degrade, seed), tile, overlap)
        return Image.fromarray(to_uint8(restored))

    def predict(
        self,
        paths: Iterable[str | Path],
        out: str | Path,
        degrade: Sequence[Degradation | str] | None = None,
        compare: bool = False,
        tile: int = 256,
        overlap: int = 32,
        seed: int = 0,
        report: BatchReport | None = None,
    ) -> list[Restored]:
        """Restore image files into `out` (name_restored.png, and name_compare.png with the
        input beside the output; a second name.png from another folder is name_2);
        unreadable files go to `report` (or raise)."""
        folder, names = Path(out), OutputNames()
        read = functools.partial(self.prepare, degrade=degrade, seed=seed)
        results = []
        for path, prepared in read_each(paths, read, report):
            restored = to_uint8(self.restore_array(prepared, tile, overlap))
            output = save_image(restored, folder / f"{names(path)}_restored.png")
            side = None
            if compare:
                before = to_uint8(prepared)
                gap = np.full((before.shape[0], 8, *before.shape[2:]), 255, np.uint8)
                side = save_image(
                    np.concatenate([before, gap, restored], axis=1),
                    folder / f"{names(path)}_compare.png",
                )
            if report is not None:
                report.ok()
            results.append(Restored(str(path), str(output), str(side) if side else None))
        return results


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", inference: Inference | None = None
) -> Restorer:
    """Load a `lbdl denoise` checkpoint (a .safetensors file, a run folder or a model name),
    its network run as `inference` says (default: PyTorch)."""
    from lbdl_apps.denoise.export import deployment

    model, meta = load_model(checkpoint, TASK, build_model, RestorerConfig)
    restorer = Restorer(model, meta, resolve_device(device))
    deploy(deployment(restorer), inference, restorer.device)
    return restorer
