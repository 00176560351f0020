"""Each app's network on a GPU against its peer's own model of the same architecture (issue
27): train samples/s (forward, backward, AdamW step) and inference samples/s, lbdl and the
peer in alternating rounds in the same run, under autocast (bf16 where the GPU has it, else
fp16) and optionally torch.compile. lbdl's models come by name from lbdl's registry, fed the
peer's own random weights (nothing is downloaded), so both compute the same function.

A peer whose package is missing is skipped with the reason (a GPU machine may carry only
torch); so is an app whose lbdl imports are missing.

    python bench/gpu.py --quick            # under 5 minutes on a GPU, writes bench/results/gpu.json
    python bench/gpu.py                    # longer rounds, larger batches
    python bench/gpu.py --device cpu --quick --only dqn   # the same code on a CPU (a check)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, write_result


@dataclass
class Pair:
    """lbdl's module and the peer's, with the inputs each takes for a batch of n."""

    name: str
    peer: str
    ours: nn.Module
    theirs: nn.Module
    ours_inputs: Callable[[int], tuple[Tensor, ...]]
    theirs_inputs: Callable[[int], tuple[Tensor, ...]]
    batch: int


@contextlib.contextmanager
def lbdl_home() -> Iterator[Path]:
    """A scratch $LBDL_HOME whose downloads/ the peers' random-weight files go into."""
    previous = os.environ.get("LBDL_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["LBDL_HOME"] = home
        (Path(home) / "downloads").mkdir()
        try:
            yield Path(home)
        finally:
            os.environ.pop("LBDL_HOME") if previous is None else os.environ.update(
                LBDL_HOME=previous
            )


def publish(name: str, state: dict[str, Tensor]) -> None:
    """Put a peer's state dict where lbdl's registry looks for `name`'s file."""
    from lbdl_apps.core import zoo

    file = zoo.find(name).sources[0].file
    torch.save(state, Path(os.environ["LBDL_HOME"]) / "downloads" / file)


def images(n: int, side: int, channels: int = 3) -> tuple[Tensor]:
    return (torch.randn(n, channels, side, side),)


def classify_pair(quick: bool) -> Pair:
    import torchvision

    from lbdl_apps.classify import load

    theirs = torchvision.models.resnet50(weights=None)
    publish("imagenet:resnet50", theirs.state_dict())
    take = lambda n: images(n, 224)  # noqa: E731
    return Pair("imagenet:resnet50", "torchvision resnet50", load("imagenet:resnet50").model,
                theirs, take, take, 32 if quick else 128)  # fmt: skip


class Out(nn.Module):
    """torchvision segmentation models answer a dict: its "out"."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def segment_pair(quick: bool) -> Pair:
    import torchvision

    from lbdl_apps.segment import load

    theirs = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    )
    publish("voc:deeplabv3", theirs.state_dict())
    take = lambda n: images(n, 520)  # noqa: E731
    return Pair("voc:deeplabv3", "torchvision deeplabv3_resnet50", load("voc:deeplabv3").model,
                Out(theirs), take, take, 4 if quick else 16)  # fmt: skip


class CleanRLQNetwork(nn.Module):
    """cleanrl/dqn_atari.py's QNetwork, as published (CleanRL is a script, not a package)."""

    def __init__(self, n_actions: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512),
            nn.ReLU(), nn.Linear(512, n_actions),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x / 255.0)


def dqn_pair(quick: bool) -> Pair:
    from lbdl_apps.dqn.api import load

    theirs = CleanRLQNetwork(6)
    file = "PongNoFrameskip-v4-dqn_atari-seed1.cleanrl_model"
    torch.save(theirs.state_dict(), Path(os.environ["LBDL_HOME"]) / "downloads" / file)
    frames = lambda n: (torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8),)  # noqa: E731
    floats = lambda n: (torch.randint(0, 256, (n, 4, 84, 84)).float(),)  # noqa: E731
    return Pair("cleanrl:Pong", "CleanRL QNetwork", load("cleanrl:Pong").q_network, theirs,
                frames, floats, 32 if quick else 256)  # fmt: skip


def clip_pair(quick: bool) -> Pair:
    import open_clip
    from safetensors.torch import save_file

    from lbdl_apps.clip.api import load

    theirs = open_clip.create_model("ViT-B-32", pretrained=None)
    file = Path(os.environ["LBDL_HOME"]) / "downloads" / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, file)

    def pairs(n: int) -> tuple[Tensor, Tensor]:
        return torch.randn(n, 3, 224, 224), torch.randint(0, 49407, (n, 77))

    return Pair("laion:ViT-B-32", "open_clip ViT-B-32", load("laion:ViT-B-32").model, theirs,
                pairs, pairs, 32 if quick else 128)  # fmt: skip


class Sample(nn.Module):
    """diffusers' U-Net answers an output object: its sample."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t).sample


def diffusion_pair(quick: bool) -> Pair:
    """The U-Nets of bench/diffusion_speed.py: the same widths, blocks and attention levels
    (no published model lbdl's U-Net holds exactly: docs/diffusion.md)."""
    from diffusion_speed import ours, peer

    noised = lambda n: (torch.randn(n, 3, 32, 32), torch.randint(0, 1000, (n,)))  # noqa: E731
    return Pair("U-Net 32 px, width 64", "diffusers UNet2DModel", ours(32, 64).model,
                Sample(peer(32, 64)), noised, noised, 64 if quick else 256)  # fmt: skip


PAIRS: dict[str, Callable[[bool], Pair]] = {
    "classify": classify_pair,
    "segment": segment_pair,
    "clip": clip_pair,
    "dqn": dqn_pair,
    "diffusion": diffusion_pair,
}


def surrogate_loss(output: Any) -> Tensor:
    """A scalar of every floating output (the same for both sides: speed, not learning)."""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return sum(surrogate_loss(o) for o in output)  # type: ignore[return-value]
    return output.float().pow(2).mean()


def rate(step: Callable[[], Any], n: int, rounds: int, device: torch.device) -> float:
    """Samples per second of the best of `rounds` timed calls (after one warm-up)."""
    step()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n / best


def steps(
    module: nn.Module, inputs: tuple[Tensor, ...], device: torch.device, compile: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train step, inference call) of one module on fixed inputs, under autocast."""
    from lbdl_apps.core.device import amp_dtype

    module = module.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    dtype = amp_dtype(device)
    run = torch.compile(module) if compile else module
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    autocast = (lambda: torch.autocast(device.type, dtype)) if dtype else contextlib.nullcontext

    def train() -> None:
        module.train()
        with autocast():
            loss = surrogate_loss(run(*inputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer() -> None:
        module.eval()
        with autocast():
            run(*inputs)

    return train, infer


def measure(pair: Pair, device: torch.device, rounds: int, compile: bool) -> dict[str, Any]:
    ours = steps(pair.ours, pair.ours_inputs(pair.batch), device, compile)
    theirs = steps(pair.theirs, pair.theirs_inputs(pair.batch), device, compile)
    figures: dict[str, Any] = {"model": pair.name, "peer": pair.peer, "batch": pair.batch}
    for index, what in enumerate(("train", "inference")):
        best = [0.0, 0.0]
        for _ in range(rounds):  # alternating, so that a slow moment hits both
            best[0] = max(best[0], rate(ours[index], pair.batch, 2, device))
            best[1] = max(best[1], rate(theirs[index], pair.batch, 2, device))
        figures[f"{what}_per_s"] = best[0]
        figures[f"peer_{what}_per_s"] = best[1]
        figures[f"{what}_ratio"] = best[0] / best[1]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under 5 minutes on a GPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="apps to measure (default: all)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--batch", type=int, help="instead of each app's batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {card}", flush=True)
    apps: dict[str, Any] = {}
    with lbdl_home():
        for app in args.only or PAIRS:
            try:
                pair = PAIRS[app](args.quick)
            except ImportError as error:
                apps[app] = {"skipped": f"not installed: {error.name}"}
                print(f"{app}: skipped ({error.name} not installed)", flush=True)
                continue
            pair.batch = args.batch or pair.batch
            apps[app] = measure(pair, device, 2 if args.quick else 5, args.compile)
            row = apps[app]
            print(f"{app}: train {row['train_per_s']:.4g}/s ({row['train_ratio']:.2f}x "
                  f"{pair.peer}), inference {row['inference_per_s']:.4g}/s "
                  f"({row['inference_ratio']:.2f}x)", flush=True)  # fmt: skip
            del pair
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result = {"benchmark": "gpu", "device": card, "compile": args.compile, "quick": args.quick,
              "apps": apps, **environment()}  # fmt: skip
    if device.type == "cuda":
        print(f"wrote {write_result('gpu', result)}")


if __name__ == "__main__":
    main()
