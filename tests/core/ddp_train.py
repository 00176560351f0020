"""Trains the test MLP with the Trainer under torchrun (2 processes) for test_train.py;
each rank writes a checksum of its final weights to SUMS_DIR/rank<R>.

    torchrun --standalone --nproc_per_node 2 tests/core/ddp_train.py RUN_DIR SUMS_DIR
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lbdl_apps.core.train import Trainer
from tests.core.test_train import CONFIG, CPU, META, SEED, Blobs, evaluate, loss_fn, mlp

torch.set_num_threads(1)
model = mlp()
config = replace(CONFIG, epochs=2, ema=0.9)
Trainer(
    model,
    Blobs(192, 1),
    Blobs(96, 2),
    loss_fn,
    evaluate,
    config,
    sys.argv[1],
    CPU,
    META,
    quiet=True,
    seed=SEED,
).fit()
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values()))
sums = Path(sys.argv[2])
sums.mkdir(exist_ok=True)
(sums / f"rank{os.environ['RANK']}").write_text(digest.hexdigest())
