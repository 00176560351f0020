"""Resume after a signal at any moment is exact (DESIGN.md): a real `lbdl classify train`
(a CNN with batch norm, on a small image folder) is interrupted by SIGINT or SIGTERM at
random times, resumed with --resume, and its final checkpoints and training state are
compared tensor by tensor (weights, batch-norm buffers, optimizer moments) with those of
the same run left uninterrupted.

    python bench/resume_signals.py           # 20 signal times; bench/results/resume_signals.json
    python bench/resume_signals.py --quick   # 3 signal times, prints only
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

TRAIN = ["classify", "train", "--model", "cnn", "--width", "16", "--depth", "2",
         "--epochs", "4", "--batch-size", "8", "--val-fraction", "0.2", "--workers", "0",
         "--quiet", "--threads", "1"]  # fmt: skip
EPOCHS = 4


def write_folder(root: Path, per_class: int = 150) -> None:
    """Two classes of noisy 32x32 images (dark and light)."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("light", 190)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def lbdl(*args: str | Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lbdl_apps", *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def epochs_logged(run: Path) -> int:
    """Rows of the run's metrics.jsonl (epochs done and saved)."""
    log = run / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor the run leaves: both checkpoints and the state's model and optimizer."""
    found = {f"{n}:{k}": v for n in ("last", "model")
             for k, v in load_file(run / f"{n}.safetensors").items()}  # fmt: skip
    state = torch.load(run / "state.pt", weights_only=True)
    found |= {f"state.model:{k}": v for k, v in state["model"].items()}
    for index, moments in state["optimizer"]["state"].items():
        found |= {f"state.adam:{index}:{k}": v for k, v in moments.items()}
    return found


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    if a.keys() != b.keys():
        return sorted(a.keys() ^ b.keys())
    return [k for k in a if not torch.equal(a[k], b[k])]


def trial(work: Path, reference: dict, delay: float, stop: signal.Signals, name: str) -> dict:
    """One run stopped by `stop` `delay` seconds after training starts, then resumed."""
    run = work / name
    process = lbdl(*TRAIN, "--data", "data", "--run-dir", run, cwd=work)
    while not (run / "config.json").exists() and process.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(stop)
    _, err = process.communicate(timeout=300)
    outcome: dict[str, Any] = {"signal": stop.name, "delay_s": round(delay, 3),
                               "exit": process.returncode}  # fmt: skip
    if process.returncode == 0:
        outcome["result"] = "finished before the signal"
        return outcome
    if process.returncode != 130:
        outcome |= {"result": "failed", "stderr": err[-500:]}
        return outcome
    saved = torch.load(run / "state.pt", weights_only=True)
    outcome["stopped_at"] = {"epoch": saved["epoch"], "batch": saved["batch"],
                             "step": saved["step"]}  # fmt: skip
    if saved["epoch"] == EPOCHS:  # stopped after its last epoch was saved: nothing to resume
        wrong = differences(reference, tensors(run))
        return outcome | {"result": "exact" if not wrong else "different", "different": wrong}
    resumed = lbdl("classify", "train", "--resume", run, "--quiet", "--threads", "1", cwd=work)
    _, err = resumed.communicate(timeout=300)
    if resumed.returncode != 0:
        return outcome | {"result": "resume failed", "stderr": err[-500:]}
    wrong = differences(reference, tensors(run))
    return outcome | {"result": "exact" if not wrong else "different", "different": wrong[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 signal times, prints only")
    parser.add_argument("--times", type=int, help="signal times to try (20; --quick: 3)")
    parser.add_argument("--seed", type=int, default=0, help="of the random signal times")
    args = parser.parse_args()
    times = args.times or (3 if args.quick else 20)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="lbdl-resume-") as folder:
        work = Path(folder)
        write_folder(work / "data")
        start = time.perf_counter()
        process = lbdl(*TRAIN, "--data", "data", "--run-dir", "whole", cwd=work)
        while not (work / "whole" / "config.json").exists():
            time.sleep(0.01)
        begun = time.perf_counter()
        while epochs_logged(work / "whole") < EPOCHS:  # the window signals are sent in
            time.sleep(0.01)
        training_s = time.perf_counter() - begun
        assert process.wait(timeout=300) == 0, process.stderr.read()  # type: ignore[union-attr]
        reference = tensors(work / "whole")
        whole = time.perf_counter() - start
        print(f"uninterrupted: {whole:.1f} s, {training_s:.1f} s from the first step to the last")
        outcomes = []
        for i in range(times):
            stop = rng.choice([signal.SIGINT, signal.SIGTERM])
            delay = rng.uniform(0.0, training_s)
            outcomes.append(trial(work, reference, delay, stop, f"trial{i}"))
            print(i, outcomes[-1])
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["result"]] = counts.get(outcome["result"], 0) + 1
    interrupted = [o for o in outcomes if o["exit"] == 130]
    mid_epoch = sum(1 for o in interrupted if o["stopped_at"]["batch"] > 0)
    print(f"{counts}; {len(interrupted)} interrupted ({mid_epoch} mid-epoch)")
    if not args.quick:
        result = {
            "benchmark": "resume_signals",
            "signal_times": times,
            "results": counts,
            "interrupted": len(interrupted),
            "interrupted_mid_epoch": mid_epoch,
            "exact": counts.get("exact", 0),
            "training_s": round(training_s, 2),
            "run": " ".join(["lbdl", *TRAIN]),
            "trials": outcomes,
            **environment(),
        }
        print(f"wrote {write_result('resume_signals', result)}")


if __name__ == "__main__":
    main()
