"""Trainer overhead: images/s of lbdl's Trainer against a minimal hand-written PyTorch loop.

Same model (torchvision resnet18, 10 classes), same in-memory data (random 3x32x32 images),
same batch size, AdamW with the same gradient clipping, same number of timed steps, same
thread count, in the same process. The two are measured in turn (A B A B ...) and the best
of each is kept; warm-up steps and the Trainer's end-of-epoch work (checkpoint files) are
outside the timed window. Goal: Trainer / plain >= 0.95.

    python bench/trainer_overhead.py --quick   # under a minute, prints only
    python bench/trainer_overhead.py           # full: writes bench/results/trainer_overhead.json
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lbdl_apps.core.device import amp_dtype, resolve_device
from lbdl_apps.core.options import TrainArgs
from lbdl_apps.core.train import Trainer

try:  # python bench/trainer_overhead.py puts bench/ first on sys.path; python -m bench.... does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


class StepClock:
    """Timestamps the start of every step; the images/s of steps [warmup, warmup + steps)."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.times: list[float] = []

    def tick(self) -> None:
        if (
            len(self.times) in (self.warmup, self.warmup + self.steps)
            and self.device.type == "cuda"
        ):
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def images_per_s(self, batch: int) -> float:
        elapsed = self.times[self.warmup + self.steps] - self.times[self.warmup]
        return self.steps * batch / elapsed


def run_trainer(data: TensorDataset, args: argparse.Namespace, device: torch.device) -> float:
    clock = StepClock(device, args.warmup, args.steps)

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        clock.tick()
        x, y = batch
        return F.cross_entropy(model(x), y), {}

    config = TrainArgs(epochs=1, batch_size=args.batch_size, lr=1e-3, weight_decay=0.05)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            make_model(),
            data,
            None,
            loss_fn,
            None,
            config,
            run_dir,
            device,
            {"task": "bench"},
            quiet=True,
        )
        trainer.fit()
    return clock.images_per_s(args.batch_size)


def run_plain(data: TensorDataset, args: argparse.Namespace, device: torch.device) -> float:
    clock = StepClock(device, args.warmup, args.steps)
    model = make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    dtype = amp_dtype(device)
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        clock.tick()
        with torch.autocast(device.type, dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return clock.images_per_s(args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check that it runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 8, full 30)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.warmup, steps, args.rounds = 32, 2, 8, 2
    else:
        args.batch_size, args.warmup, steps, args.rounds = 64, 5, 30, 3
    args.steps = args.steps or steps
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = (args.warmup + args.steps + 1) * args.batch_size
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )

    trainer_runs: list[float] = []
    plain_runs: list[float] = []
    for r in range(args.rounds):
        trainer_runs.append(run_trainer(data, args, device))
        plain_runs.append(run_plain(data, args, device))
        print(
            f"round {r + 1}: trainer {trainer_runs[-1]:.1f} img/s, plain {plain_runs[-1]:.1f} img/s"
        )
    ratio = max(trainer_runs) / max(plain_runs)
    print(
        f"best: trainer {max(trainer_runs):.1f} img/s, plain {max(plain_runs):.1f} img/s, "
        f"ratio trainer/plain {ratio:.3f} (goal >= 0.95)"
    )
    if args.quick:
        return
    result = {
        "benchmark": "trainer_overhead",
        "ratio_trainer_over_plain": round(ratio, 4),
        "trainer_images_per_s": [round(v, 2) for v in trainer_runs],
        "plain_images_per_s": [round(v, 2) for v in plain_runs],
        "model": "torchvision resnet18, 10 classes, 3x32x32 random data",
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "device": str(device),
        **environment(),
    }
    print(f"wrote {write_result('trainer_overhead', result)}")


if __name__ == "__main__":
    main()
