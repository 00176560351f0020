"""Device choice, seeding and threads."""

from __future__ import annotations

import random

import pytest
import torch

from lbdl_apps.core.device import amp_dtype, resolve_device, seed_everything, set_threads
from lbdl_apps.core.errors import LbdlError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert amp_dtype(torch.device("cpu")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_unavailable_is_a_user_error(spec: str) -> None:
    with pytest.raises(LbdlError, match="CUDA is not available"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["banana", "cpu:0", "cuda:x", ""])
def test_bad_spec_is_a_user_error(spec: str) -> None:
    with pytest.raises(LbdlError, match="--device"):
        resolve_device(spec)


def test_seed_everything_repeats() -> None:
    seed_everything(3)
    first = (random.random(), torch.rand(3))
    seed_everything(3)
    assert random.random() == first[0]
    assert torch.equal(torch.rand(3), first[1])


def test_set_threads() -> None:
    before = torch.get_num_threads()
    set_threads(None)
    assert torch.get_num_threads() == before
    with pytest.raises(LbdlError):
        set_threads(0)
