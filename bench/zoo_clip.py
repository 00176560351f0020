"""lbdl's CLIP models by name against open_clip's own models (issue 26): for openai:ViT-B-32,
openai:ViT-B-16 and laion:ViT-B-32, open_clip builds the architecture with random weights
(QuickGELU for OpenAI's, GELU for LAION's), its state dict is put where lbdl looks for the
publisher's file, and lbdl loads it by name; both then embed the same images. Throughput in
images/s (best of alternating rounds, one thread), their ratio and the largest difference of
the unit-norm image and text embeddings.

    python bench/zoo_clip.py [--quick]      (bench/zoo_speed.py gathers the rows)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

NAMES = {  # name: (open_clip architecture, quick_gelu, publisher file)
    "openai:ViT-B-32": ("ViT-B-32", True, "ViT-B-32.pt"),
    "openai:ViT-B-16": ("ViT-B-16", True, "ViT-B-16.pt"),
    "laion:ViT-B-32": ("ViT-B-32", False, "open_clip_model.safetensors"),
}
TEXTS = ["a photo of a dog.", "a photo of a cat.", "a diagram.", "a red car on a road."]


def best_rates(ours: Callable[[], Any], theirs: Callable[[], Any], items: int, rounds: int):
    """Items per second of each, best of `rounds` alternating timed calls (after a warm-up)."""
    ours()
    theirs()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, run in enumerate((ours, theirs)):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return items / best[0], items / best[1]


def publisher_file(model: torch.nn.Module, path: Path) -> None:
    """The publisher's file, as lbdl's converter reads it (a state dict; OpenAI's own release
    is a TorchScript archive, read the same way: tests/clip/test_zoo.py)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)


def measure_one(name: str, quick: bool) -> dict[str, Any]:
    import open_clip

    from lbdl_apps.clip import load

    arch, quick_gelu, file = NAMES[name]
    torch.manual_seed(0)
    theirs = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu).eval()
    publisher_file(theirs, Path(os.environ["LBDL_HOME"]) / "downloads" / file)
    clip = load(name)
    batch = 2 if quick else 8
    images = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        ours_img = clip.encode_image(images)
        theirs_img = theirs.encode_image(images, normalize=True)
        ours_txt = clip.encode_text(TEXTS)
        theirs_txt = theirs.encode_text(open_clip.tokenize(TEXTS), normalize=True)
        diff = max(float((ours_img - theirs_img).abs().max()),
                   float((ours_txt - theirs_txt).abs().max()))  # fmt: skip
        ours_rate, theirs_rate = best_rates(
            lambda: clip.encode_image(images),
            lambda: theirs.encode_image(images, normalize=True),
            batch,
            2 if quick else 5,
        )
    return {
        "name": name,
        "ours_per_s": ours_rate,
        "theirs_per_s": theirs_rate,
        "ratio": ours_rate / theirs_rate,
        "max_abs_diff": diff,
        "input": f"{batch} images 3x224x224 (image encoder; texts for the difference)",
        "publisher": f"open_clip {arch} (quick_gelu={quick_gelu}), random weights",
    }


def measure(quick: bool) -> list[dict[str, Any]]:
    """One row per named CLIP model (quick: ViT-B/32 by OpenAI and LAION, small batches)."""
    torch.set_num_threads(1)
    names = ["openai:ViT-B-32", "laion:ViT-B-32"] if quick else list(NAMES)
    rows = []
    previous = os.environ.get("LBDL_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["LBDL_HOME"] = home
        (Path(home) / "downloads").mkdir()
        try:
            rows = [measure_one(name, quick) for name in names]
        finally:
            if previous is None:
                os.environ.pop("LBDL_HOME")
            else:
                os.environ["LBDL_HOME"] = previous
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in measure(parser.parse_args().quick):
        print(f"{row['name']}: ours {row['ours_per_s']:.3g}/s, theirs {row['theirs_per_s']:.3g}/s,"
              f" ratio {row['ratio']:.2f}, max diff {row['max_abs_diff']:.2g} ({row['input']})")
