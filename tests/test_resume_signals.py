"""Resume after SIGINT or SIGTERM at a random moment of a real `lbdl classify train` (a CNN
with batch norm) ends with the same tensors, batch-norm buffers and optimizer moments
included, as the run left alone (bench/resume_signals.py does it 20 times)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

TRAIN = ["classify", "train", "--data", "data", "--model", "cnn", "--width", "16", "--depth",
         "2", "--epochs", "3", "--batch-size", "8", "--quiet", "--threads", "1"]  # fmt: skip


def start(*args: str | Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "lbdl_apps", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def every_tensor(run: Path) -> dict[str, torch.Tensor]:
    found = {f"{n}:{k}": v for n in ("last", "model")
             for k, v in load_file(run / f"{n}.safetensors").items()}  # fmt: skip
    state = torch.load(run / "state.pt", weights_only=True)
    found |= {f"model:{k}": v for k, v in state["model"].items()}
    for index, moments in state["optimizer"]["state"].items():
        found |= {f"adam:{index}:{k}": v for k, v in moments.items()}
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-class image folder and the run left alone."""
    root = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("light", 190)):
        (root / "data" / name).mkdir(parents=True)
        for i in range(100):
            pixels = np.clip(rng.normal(level, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    whole = start(*TRAIN, "--run-dir", "whole", cwd=root)
    assert whole.wait(timeout=120) == 0, whole.stderr.read()  # type: ignore[union-attr]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_resume_after_a_signal_at_a_random_moment_is_exact(work: Path, trial: int) -> None:
    rng = random.Random(trial)
    stop = (signal.SIGINT, signal.SIGTERM)[trial % 2]
    run = work / f"trial{trial}"
    process = start(*TRAIN, "--run-dir", run, cwd=work)
    while not (run / "metrics.csv").exists() and process.poll() is None:
        time.sleep(0.005)  # the first epoch is done: the signal lands in the second or third
    time.sleep(rng.uniform(0.0, 0.5))
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal")  # a very slow or very fast machine
    assert process.returncode == 130, err
    assert err.strip().splitlines() == [
        f"lbdl: interrupted: training state saved in {run / 'state.pt'} (continue with "
        f"--resume {run})"
    ]
    resumed = start("classify", "train", "--resume", run, "--quiet", "--threads", "1", cwd=work)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    reference, found = every_tensor(work / "whole"), every_tensor(run)
    assert reference.keys() == found.keys()
    different = [k for k in reference if not torch.equal(reference[k], found[k])]
    assert not different, different
