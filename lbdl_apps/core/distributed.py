"""Data-parallel training under `torchrun`: joining the process group and letting rank 0
decide what every rank must agree on (DESIGN.md, "The Trainer")."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from lbdl_apps.core.errors import LbdlError

T = TypeVar("T")


def world_size() -> int:
    """Number of processes launched by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> torch.device:
    """Under torchrun, join the process group (NCCL on CUDA, Gloo on CPU) once and return this
    rank's device (cuda:LOCAL_RANK on GPUs); without torchrun, return `device` unchanged."""
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return device


def is_main_process() -> bool:
    """True on rank 0, and always without a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def decide_on_main(decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and give its result (or its LbdlError) to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return decide()
    holder: list = [None]
    if dist.get_rank() == 0:
        try:
            holder[0] = ("ok", decide())
        except LbdlError as error:
            holder[0] = ("error", str(error))
    dist.broadcast_object_list(holder, src=0)
    status, value = holder[0]
    if status == "error":
        raise LbdlError(value)
    return value


def finish_distributed() -> None:
    """Leave the process group, if this process joined one, once every rank is done with it
    (a rank that leaves while another still talks to it can abort the other's exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def finish_run(run_dir: Path) -> None:
    """End a training command: name its run folder (rank 0; printed also with --quiet, which
    only silences progress), then leave the process group."""
    if is_main_process():
        print(f"run folder: {run_dir}")
    finish_distributed()
