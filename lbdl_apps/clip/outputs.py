"""What the clip batch verbs write (book 6.6): zero-shot CSV/JSON, embeddings as .npy plus
JSON metadata, and a contact sheet of search results."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from lbdl_apps.clip.api import ZeroShotPrediction
from lbdl_apps.core.data import load_image, save_image
from lbdl_apps.core.outputs import atomic_path, json_text

THUMB = 160  # contact sheet cell size in pixels


def write_zero_shot(predictions: Sequence[ZeroShotPrediction], folder: Path) -> Path:
    """zero_shot.csv (path, best label, its probability, every label ranked) and .json."""
    with atomic_path(folder / "zero_shot.json") as tmp:
        tmp.write_text(json_text([asdict(p) for p in predictions], indent=1))
    path = folder / "zero_shot.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability", "ranked_labels", "ranked_probabilities"])
        for p in predictions:
            writer.writerow([p.path, p.labels[0], p.probabilities[0], "|".join(p.labels),
                             "|".join(f"{q:.6f}" for q in p.probabilities)])  # fmt: skip
    return path


def write_embeddings(
    embeddings: np.ndarray, items: list[dict[str, Any]], info: dict[str, Any], folder: Path
) -> tuple[Path, Path]:
    """embeddings.npy (N, D) float32, row i described by items[i] in embeddings.json."""
    npy, meta = folder / "embeddings.npy", folder / "embeddings.json"
    with atomic_path(npy) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings.astype(np.float32))
    with atomic_path(meta) as tmp:
        tmp.write_text(json_text({**info, "shape": list(embeddings.shape), "items": items},
                                  indent=1))  # fmt: skip
    return npy, meta


def write_search(ranked: list[tuple[Path, float]], query: str, folder: Path) -> tuple[Path, Path]:
    """results.csv (rank, path, similarity) and contact_sheet.png of the ranked images."""
    table = folder / "results.csv"
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "similarity"])
        for rank, (path, score) in enumerate(ranked, start=1):
            writer.writerow([rank, path, f"{score:.6f}"])
    return table, save_image(contact_sheet(ranked, query), folder / "contact_sheet.png")


def contact_sheet(ranked: list[tuple[Path, float]], title: str, columns: int = 4) -> Image.Image:
    """The ranked images as thumbnails in a grid, each labelled with its rank and score."""
    rows = max(1, -(-len(ranked) // columns))
    header, label = 28, 18
    sheet = Image.new("RGB", (columns * THUMB, header + rows * (THUMB + label)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), title[:120], fill="black")
    for i, (path, score) in enumerate(ranked):
        x, y = (i % columns) * THUMB, header + (i // columns) * (THUMB + label)
        thumb = ImageOps.pad(load_image(path, "RGB"), (THUMB - 8, THUMB - 8), color="white")
        sheet.paste(thumb, (x + 4, y + 4))
        draw.text((x + 6, y + THUMB), f"{i + 1}. {score:.3f} {path.name}"[:26], fill="black")
    return sheet
