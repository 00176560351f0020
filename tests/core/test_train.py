"""The Trainer: it learns, resumes bit for bit, guards against NaN, stops early, uses EMA,
accumulates gradients, and trains data-parallel under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

from lbdl_apps.core.checkpoint import load_state, read_checkpoint
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.optim import ema_with_warmup
from lbdl_apps.core.options import TrainArgs
from lbdl_apps.core.runs import MetricsLog
from lbdl_apps.core.train import Trainer
from lbdl_apps.core.train_state import Monitor, batch_size, to_device

CPU = torch.device("cpu")
META = {"task": "toy", "config": {"hidden": 32}}


class Blobs(Dataset):
    """Two Gaussian blobs in 8-D, with random jitter added on every read (an augmentation)."""

    def __init__(self, n: int, seed: int, jitter: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) * 0.7 + (self.y[:, None] * 2 - 1) * 1.0
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + self.jitter * torch.randn(8), self.y[i]


def mlp(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 2))


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    logits = model(x)
    accuracy = (logits.argmax(1) == y).float().mean()
    return F.cross_entropy(logits, y), {"accuracy": accuracy}


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    losses, correct, n = 0.0, 0, 0
    for x, y in loader:
        logits = model(x.to(device))
        losses += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
        correct += int((logits.argmax(1) == y.to(device)).sum())
        n += len(y)
    return {"loss": losses / n, "accuracy": correct / n}


def trainer(run_dir: Path, config: TrainArgs, *, model=None, loss=loss_fn, val=True, **kw):
    return Trainer(
        model if model is not None else mlp(),
        Blobs(192, seed=1),
        Blobs(96, seed=2) if val else None,
        loss,
        kw.pop("evaluate_fn", evaluate),
        config,
        run_dir,
        CPU,
        META,
        quiet=True,
        seed=SEED,
        **kw,
    )


def interrupt_at(call: int, fn=loss_fn):
    """A loss function that raises KeyboardInterrupt (as Ctrl-C would) on its `call`-th call."""
    calls = [0]

    def loss(model, batch):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return fn(model, batch)

    return loss


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path, task="toy")[0]


CONFIG = TrainArgs(epochs=4, batch_size=16, lr=5e-3, warmup=0.5)
SEED = 7


def test_trainer_learns_and_writes_the_run_folder(tmp_path: Path) -> None:
    best = trainer(tmp_path, replace(CONFIG, epochs=5), monitor=Monitor("accuracy", "max")).fit()
    rows = MetricsLog(tmp_path).rows()
    assert len(rows) == 5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] * 0.5
    assert best["val_accuracy"] > 0.9
    for name in ["metrics.csv", "loss.png", "train_config.json", "last.safetensors", "state.pt"]:
        assert (tmp_path / name).is_file(), name
    _, meta = read_checkpoint(tmp_path / "model.safetensors", task="toy")
    assert meta["config"] == META["config"]
    assert meta["metrics"]["val_accuracy"] == best["val_accuracy"]
    assert {"lr", "step", "time_s", "samples_per_s", "train_accuracy"} <= rows[0].keys()


@pytest.mark.parametrize(
    ("stop_call", "workers"),
    [(2 * 12 + 1, 0), (2 * 12 + 4, 0), (2 * 12 + 1, 2)],
    ids=["epoch-end", "mid-epoch", "epoch-end-workers"],
)
def test_resume_is_bit_identical(tmp_path: Path, stop_call: int, workers: int) -> None:
    # 192 samples / 16 = 12 batches an epoch; the interruption comes in epoch 3.
    config = replace(CONFIG, accumulate=2, ema=0.9, save_period=5, workers=workers)
    whole = trainer(tmp_path / "a", config)
    whole.fit()

    with pytest.raises(SystemExit) as exit_info:
        trainer(tmp_path / "b", config, loss=interrupt_at(stop_call)).fit()
    assert exit_info.value.code == 130
    assert (tmp_path / "b" / "state.pt").is_file()
    assert weights(tmp_path / "b" / "model.safetensors")  # the best so far is intact
    assert len(MetricsLog(tmp_path / "b").rows()) == 2

    resumed = trainer(tmp_path / "b", config, model=mlp(seed=123))
    resumed.fit(resume=True)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    for file in ["model.safetensors", "last.safetensors"]:
        a, b = weights(tmp_path / "a" / file), weights(tmp_path / "b" / file)
        assert all(torch.equal(a[k], b[k]) for k in a), file
    rows_a, rows_b = MetricsLog(tmp_path / "a").rows(), MetricsLog(tmp_path / "b").rows()
    assert [r["val_loss"] for r in rows_a] == [r["val_loss"] for r in rows_b]


def test_sigterm_saves_state_and_restores_handlers(tmp_path: Path) -> None:
    def loss(model, batch):
        if calls.append(1) or len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_fn(model, batch)

    calls: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        trainer(tmp_path, CONFIG, loss=loss).fit()
    assert exit_info.value.code == 130
    assert (tmp_path / "state.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is before


class SwallowingBlobs(Blobs):
    """Blobs read by a library that swallows a KeyboardInterrupt (as C code that clears the
    errors it gets back does); SIGTERM comes during the 20th read."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.reads = 0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        try:
            if self.reads == 20:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1.0)
        except BaseException:
            pass
        return super().__getitem__(i)


def test_a_swallowed_sigterm_stops_at_the_end_of_the_step(tmp_path: Path) -> None:
    model = mlp()
    run = Trainer(
        model, SwallowingBlobs(192, seed=1), Blobs(96, seed=2), loss_fn, evaluate, CONFIG,
        tmp_path, CPU, META, quiet=True, seed=SEED,
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run.fit()
    assert exit_info.value.code == 130
    assert load_state(tmp_path / "state.pt")["step"] == 2  # reads 17 to 32 are step 2's batch


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def loss(model, batch):
        value, metrics = loss_fn(model, batch)
        calls.append(1)
        return (value * float("nan") if len(calls) >= 15 else value), metrics

    calls: list[int] = []
    with pytest.raises(LbdlError, match=r"loss became nan at epoch 2, step 15") as err:
        trainer(tmp_path, CONFIG, loss=loss).fit()
    assert str(tmp_path) in str(err.value)
    tensors, meta = read_checkpoint(tmp_path / "last.safetensors")
    assert meta["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_early_stopping(tmp_path: Path) -> None:
    def flat(model, loader, device):
        return {"loss": 1.0}

    config = replace(CONFIG, epochs=20, patience=2)
    best = trainer(tmp_path, config, evaluate_fn=flat).fit()
    assert len(MetricsLog(tmp_path).rows()) == 3
    assert best["epoch"] == 1


def test_a_tie_of_the_monitor_goes_to_the_lower_validation_loss(tmp_path: Path) -> None:
    losses = iter([0.9, 0.5, 0.7, 0.6])

    def coarse(model, loader, device):  # a saturated metric over a decreasing, noisy loss
        return {"loss": next(losses), "wer": 0.0}

    best = trainer(tmp_path, CONFIG, monitor=Monitor("wer"), evaluate_fn=coarse).fit()
    assert (best["epoch"], best["val_loss"]) == (2, 0.5)
    assert read_checkpoint(tmp_path / "model.safetensors", task="toy")[1]["epoch"] == 2


def test_ema_weights_are_the_saved_ones(tmp_path: Path) -> None:
    t = trainer(tmp_path, replace(CONFIG, epochs=2, ema=0.9), val=False)
    t.fit()
    saved = weights(tmp_path / "model.safetensors")
    ema = t.ema.module.state_dict()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert not torch.equal(saved["0.weight"], t.model.state_dict()["0.weight"])


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path: Path) -> None:
    def one_step(batch: int, accumulate: int, name: str) -> nn.Module:
        config = replace(CONFIG, epochs=1, batch_size=batch, accumulate=accumulate, grad_clip=0)
        model = mlp(dropout=0.0)
        data = Blobs(16, seed=1, jitter=0.0)
        Trainer(
            model,
            data,
            None,
            loss_fn,
            None,
            config,
            tmp_path / name,
            CPU,
            META,
            quiet=True,
            seed=SEED,
        ).fit()
        return model

    big, accumulated = one_step(16, 1, "big"), one_step(8, 2, "acc")
    for p, q in zip(big.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert not torch.equal(big[0].weight, mlp(dropout=0.0)[0].weight)


def test_batches_of_any_shape_go_to_the_device() -> None:
    batch = {"image": torch.zeros(5, 3), "meta": [torch.ones(5), ("a", torch.ones(2))], "id": 7}
    moved = to_device(batch, CPU)
    assert moved["id"] == 7 and moved["meta"][1][0] == "a"
    assert batch_size(batch) == 5
    assert batch_size((["a.png", "b.png"], torch.zeros(2, 1))) == 2


def test_resume_without_state_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(LbdlError, match=r"state.pt: no such file"):
        trainer(tmp_path, CONFIG).fit(resume=True)


DDP_SCRIPT = Path(__file__).with_name("ddp_train.py")


def test_data_parallel_under_torchrun(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])  # the script imports tests.core.test_train
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(DDP_SCRIPT),
            str(tmp_path / "run"),
            str(tmp_path / "sums"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sums = {p.name: p.read_text() for p in (tmp_path / "sums").iterdir()}
    assert sums.keys() == {"rank0", "rank1"}
    assert sums["rank0"] == sums["rank1"]
    rows = MetricsLog(tmp_path / "run").rows()
    assert len(rows) == 2  # one writer: rank 0
    assert rows[-1]["val_accuracy"] > 0.9
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_ema_decay_warms_up() -> None:
    """A 0.999 EMA follows the first updates closely: decay min(0.999, (1 + n) / (10 + n))."""
    model = nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.update_parameters(model)  # the first update copies
        model.weight.fill_(2.0)
        ema.update_parameters(model)  # n = 1: decay 2/11
    expected = 1.0 + (2.0 - 1.0) * (1 - 2 / 11)
    assert ema.module.weight.item() == pytest.approx(expected)
    for _ in range(5000):
        ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(2.0, abs=1e-2)
