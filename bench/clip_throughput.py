"""Training throughput of our CLIP against open_clip's model of the same size, same run.

One training step = forward of both towers, the symmetric contrastive loss, backward and an
AdamW update, on random images and tokens. The two models are built with the same sizes
(QuickGELU, 64-wide heads) and timed in alternating rounds; the figure is pairs per second
of wall time and per second of CPU time (medians over rounds), with the thread count and
the load average (on a busy machine the CPU-time figure is the steadier one).

    python bench/clip_throughput.py --quick          # < 2 minutes: the small size only
    python bench/clip_throughput.py --threads 1      # small and ViT-B/32 sizes, writes JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from lbdl_apps.clip.loss import clip_loss
from lbdl_apps.clip.model import CLIP, ClipConfig

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "clip_throughput"
SIZES = {  # image, patch, width, layers, text width, text layers, embed, context, batch
    "small": (64, 8, 256, 4, 256, 4, 256, 32, 64),
    "vit-b-32": (224, 32, 768, 12, 512, 12, 512, 77, 32),
}
VOCAB = 49408


def our_model(size: tuple) -> CLIP:
    image, patch, width, layers, t_width, t_layers, embed, context, _ = size
    return CLIP(ClipConfig(
        image_size=image, patch_size=patch, vision_width=width, vision_depth=layers,
        vision_heads=width // 64, text_width=t_width, text_depth=t_layers,
        text_heads=t_width // 64, embed_dim=embed, vocab_size=VOCAB, context_length=context,
        eot_id=VOCAB - 1, act="quick_gelu",
    ))  # fmt: skip


def open_clip_model(size: tuple) -> torch.nn.Module:
    image, patch, width, layers, t_width, t_layers, embed, context, _ = size
    vision = CLIPVisionCfg(layers=layers, width=width, patch_size=patch, image_size=image)
    text = CLIPTextCfg(context_length=context, vocab_size=VOCAB, width=t_width,
                       heads=t_width // 64, layers=t_layers)  # fmt: skip
    return open_clip.CLIP(embed, vision, text, quick_gelu=True)


def step_fn(model: torch.nn.Module, ours: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    reference_loss = open_clip.ClipLoss()

    def step(images: torch.Tensor, tokens: torch.Tensor) -> None:
        if ours:
            loss = clip_loss(*model(images, tokens))
        else:
            image_emb, text_emb, scale = model(images, tokens)
            loss = reference_loss(image_emb, text_emb, scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, size: tuple, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    image, *_, context, batch = size
    images = torch.randn(batch, 3, image, image)
    tokens = torch.randint(1, VOCAB - 2, (batch, context))
    tokens[:, context // 2] = VOCAB - 1  # the end-of-text token, highest id as OpenAI's
    tokens[:, context // 2 + 1 :] = 0
    steps_of = {"lbdl": step_fn(our_model(size).train(), True),
                "open_clip": step_fn(open_clip_model(size).train(), False)}  # fmt: skip
    walls: dict[str, list[float]] = {k: [] for k in steps_of}
    cpus: dict[str, list[float]] = {k: [] for k in steps_of}
    for step in steps_of.values():
        step(images, tokens)  # warm-up
    for _ in range(rounds):
        for key, step in steps_of.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step(images, tokens)
            walls[key].append((time.perf_counter() - wall) / steps)
            cpus[key].append((time.process_time() - cpu) / steps)
    result = {
        key: {
            "pairs_per_s": round(batch / statistics.median(walls[key]), 2),
            "cpu_s_per_step": round(statistics.median(cpus[key]), 3),
            "pairs_per_cpu_s": round(batch / statistics.median(cpus[key]), 2),
            "params_m": round(sum(p.numel() for p in model_params(key, size)) / 1e6, 2),
        }
        for key in steps_of
    }
    result["ratio_lbdl_over_open_clip"] = round(
        result["lbdl"]["pairs_per_s"] / result["open_clip"]["pairs_per_s"], 3
    )
    result["batch"] = batch
    print(name, json.dumps(result), flush=True)
    return result


def model_params(key: str, size: tuple):
    return (our_model(size) if key == "lbdl" else open_clip_model(size)).parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check that it runs")
    parser.add_argument("--threads", type=int, default=1)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    env = environment()
    sizes = ["small"] if cli.quick else list(SIZES)
    results = {}
    for name in sizes:
        rounds, steps = (1, 2) if cli.quick else (3, 3) if name == "small" else (2, 1)
        results[name] = measure(name, SIZES[name], rounds, steps)
    fields = ("image", "patch", "width", "layers", "text_width", "text_layers", "embed",
              "context", "batch")  # fmt: skip
    output = {
        "sizes": {k: dict(zip(fields, SIZES[k], strict=True)) for k in sizes},
        "results": results,
        "quick": cli.quick,
        "open_clip": open_clip.__version__,
        "loadavg_after": os.getloadavg(),
        **env,
    }
    if not cli.quick:
        print(f"wrote {write_result(NAME, output)}")


if __name__ == "__main__":
    main()
