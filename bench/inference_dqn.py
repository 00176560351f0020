"""bench/inference_speed.py's dqn case: the tour's CartPole-v1 agent (the environment's
default MLP 256-256, 20k steps, about a minute; --quick: 2500 steps of a 64-64 MLP, seconds),
scored by its mean greedy return through `lbdl dqn evaluate` (20 episodes; --quick: 3) in
each variant, the share of fp32's greedy actions that int8 keeps on 1000 states the agent
meets beside it, timed on a batch of 32 states (a vectorised act or a replay minibatch).
The MLP's int8 is dynamic (linear layers), without calibration; such a small network gains
nothing from it. Beside it, in `atari_nature_cnn`, the four variants' throughput on a batch
of 32 stacked frames of the Nature CNN (Pong's 6 actions, untrained: no Atari agent trains
in the budget), whose int8 is static, calibrated on frames it plays."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from inference_common import Case, found_or_trained, repeated

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.dqn.api import load
from lbdl_apps.dqn.cli import EvaluateArgs, TrainArgs
from lbdl_apps.dqn.data import EnvSettings
from lbdl_apps.dqn.export import deployment, rollout
from lbdl_apps.dqn.model import build_q_network, q_network_config
from lbdl_apps.dqn.task import evaluate, train

TOLERANCE = 25.0  # mean return: 5% of CartPole's 500
STATES = 1000  # states of the fp32 agent (epsilon 0.05) on which int8's actions are compared


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)

    def train_here(folder: Path) -> Path:
        sizes = {"total_steps": 2500, "learning_starts": 500, "eval_every": 1250,
                 "eval_episodes": 3, "hidden": "64,64"} if quick else {
                 "total_steps": 20_000, "learning_starts": 1000, "eval_every": 2000,
                 "eval_episodes": 10}  # fmt: skip
        train(TrainArgs(env="CartPole-v1", run_dir=folder / "run", **sizes), common)
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("dqn", checkpoints, train_here, workdir)
    episodes = 3 if quick else 20

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(
            checkpoint=str(checkpoint), episodes=episodes, greedy=True, exist_ok=True,
            out=workdir / "evaluate", **asdict(inference),
        )  # fmt: skip
        return evaluate(args, common).mean

    return Case(
        "dqn", checkpoint, f"CartPole-v1 mean greedy return ({episodes} episodes)",
        lambda: deployment(load(checkpoint)), accuracy, batch=32, tolerance=TOLERANCE,
        notes={"int8_greedy_agreement": agreement(checkpoint),
               "atari_nature_cnn": atari(workdir / "pong.safetensors", 0.5 if quick else 3.0)},
    )  # fmt: skip


def agreement(checkpoint: Path) -> dict[str, float]:
    """Per int8 variant: the share of STATES states (met by the fp32 agent) where its
    greedy action is fp32's."""
    fp32 = load(checkpoint)
    seen = rollout(fp32.q_network, fp32.settings, STATES, 0.05, fp32.device, seed=1)
    states = torch.from_numpy(seen)  # (STATES, obs_dim)
    with torch.no_grad():
        wanted = fp32.q_network(states).argmax(1)
        shares = {}
        for runtime in ("torch", "onnxruntime"):
            int8 = load(checkpoint, inference=Inference(runtime=runtime, quantize="int8"))
            chosen = int8.q_network(states).argmax(1)
            shares[f"{runtime}_int8"] = float((chosen == wanted).float().mean())
    return shares


def atari(path: Path, seconds: float) -> dict[str, Any]:
    """Frames per second of each variant of an untrained Nature CNN for Pong on a batch of
    32 (inference_speed's runner and timer), and int8 over fp32 in ONNX Runtime."""
    import inference_speed

    torch.manual_seed(0)
    config = q_network_config((4, 84, 84), 6, [512], dueling=False)
    meta = {"task": "dqn", "config": asdict(config),
            "env": EnvSettings.for_env("ALE/Pong-v5").to_dict()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_q_network(config).state_dict(), meta)
    deployed = deployment(load(path), describe=False)
    graph = deployed.graphs[0]
    inputs = repeated(graph, 32)
    rates: dict[str, Any] = {"batch": 32}
    for name, variant in inference_speed.VARIANTS.items():
        try:
            module = inference_speed.runner(graph, deployed.source, variant)
        except LbdlError as error:
            rates[name] = {"unavailable": str(error)}
            continue
        per_s = inference_speed.throughput(module, inputs, 32, seconds)
        rates[name] = {"per_s": per_s}
        print(f"  Atari Nature CNN, {name}: {per_s:.4g}/s", flush=True)
    fp32, int8 = rates["onnxruntime_fp32"], rates["onnxruntime_int8"]
    if "per_s" in fp32 and "per_s" in int8:
        rates["onnxruntime_int8_speedup"] = int8["per_s"] / fp32["per_s"]
    return rates
