"""Data-parallel training under `torchrun` (DESIGN.md, "The Trainer"). Which process this
is comes from torchrun's environment, so that everything before training (data, model, run
folder) needs no communication; the Trainer alone joins and leaves the process group,
around its `fit`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes launched by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (and without torchrun): the process that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for a CUDA device under torchrun, else `device`."""
    if world_size() > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """Join torchrun's process group (NCCL on CUDA, Gloo on CPU) for the block, then leave it
    once every rank is done with it (a rank that leaves while another still talks to it can
    abort the other's exit). Yields whether there is a group; a group someone else made is
    used as it is."""
    if world_size() <= 1:
        yield False
        return
    owned = not dist.is_initialized()
    if owned:
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield True
        if owned:
            dist.barrier()
    finally:
        if owned:
            dist.destroy_process_group()
