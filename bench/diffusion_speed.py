"""Sampling speed: our U-Net + DDIM (`lbdl diffusion sample`'s code path) against diffusers'
`UNet2DModel` + `DDIMScheduler` of about the same parameter count, random weights, the same
image size, batch and number of steps, measured alternately in the same run (the machine is
shared: each side's best of the repeats is kept). Goal: ratio ours / diffusers >= 1.

    python bench/diffusion_speed.py --quick --threads 1   # < 1 minute
    python bench/diffusion_speed.py --threads 1           # bench/results/diffusion_speed.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel

from lbdl_apps.diffusion.api import Diffuser
from lbdl_apps.diffusion.model import build_model, default_config

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "diffusion_speed"


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ours(size: int, width: int) -> Diffuser:
    """Three residual blocks per level, as diffusers' decoder (its encoder has two)."""
    config = default_config(size, 3, base=width, blocks=3)
    torch.manual_seed(0)
    return Diffuser(build_model(config), {"config": config, "labels": []}, torch.device("cpu"))


def peer(size: int, width: int) -> UNet2DModel:
    """diffusers' DDPM U-Net with the same widths, blocks and attention placement."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


@torch.no_grad()
def run_peer(unet: UNet2DModel, batch: int, size: int, steps: int) -> float:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return time.perf_counter() - start


def run_ours(diffuser: Diffuser, batch: int, steps: int) -> float:
    start = time.perf_counter()
    diffuser.sample(batch, steps=steps, batch_size=batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    batch, steps = (4, 10) if options.quick else (options.batch, options.steps)
    repeats = 1 if options.quick else options.repeats
    mine, theirs = ours(options.size, options.width), peer(options.size, options.width)
    record: dict[str, Any] = {"environment_start": environment()}
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    run_ours(mine, 2, 2)  # warm-up
    run_peer(theirs, 2, options.size, 2)
    for _ in range(repeats):
        times["ours"].append(run_ours(mine, batch, steps))
        times["diffusers"].append(run_peer(theirs, batch, options.size, steps))
    speed = {k: batch / min(v) for k, v in times.items()}
    record.update(
        workload=f"{options.size}x{options.size} RGB, batch {batch}, DDIM {steps} steps, "
        f"no guidance, random weights, best of {repeats}",
        params={"ours": count(mine.model), "diffusers": count(theirs)},
        images_per_s={k: round(v, 3) for k, v in speed.items()},
        seconds={k: [round(s, 2) for s in v] for k, v in times.items()},
        ratio=round(speed["ours"] / speed["diffusers"], 3),
        goal_ratio=1.0,
        environment_end=environment(),
    )
    for key, value in record.items():
        print(f"{key}: {value}")
    if not options.quick:
        print(f"wrote {write_result(NAME, record)}")


if __name__ == "__main__":
    main()
