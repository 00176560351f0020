"""Training runs of `lbdl diffusion` (book 7.2), shared by the CLI, the tour and the benchmark:
draw t and the noise, make x_t in closed form, regress the noise (or v) with the MSE; the
condition is replaced by the null one at random (probability --cond-drop) so that the
model also learns the unconditional estimate that classifier-free guidance needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import Subset

from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions
from lbdl_apps.diffusion.api import MODEL_KIND, TASK, load, save_samples
from lbdl_apps.diffusion.data import (
    SCENE_LABELS,
    Captioned,
    DiffusionData,
    EmbeddedCaptions,
    collate_images,
    load_diffusion_data,
)
from lbdl_apps.diffusion.model import CONDITIONS, build_model, default_config
from lbdl_apps.diffusion.schedule import NoiseSchedule


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl diffusion train` was asked for; saved as the run's config.json."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.5
    ema: float | None = 0.999
    val_fraction: float = 0.0
    condition: str = "auto"
    clip: str | None = None
    image_size: int | None = None
    channels: int | None = None
    width: int = 32
    blocks: int = 2
    schedule: str = "cosine"
    timesteps: int = 1000
    prediction: str = "eps"
    cond_drop: float = 0.1
    hflip: bool = False
    scene_label: str = "color-shape"
    builtin_count: int = 6000
    fraction: float = 1.0
    preview: int = 16
    init: str | None = None


def diffusion_loss(
    model: nn.Module,
    batch: tuple[Tensor, Any],
    schedule: NoiseSchedule,
    prediction: str,
    conditional: bool,
    cond_drop: float,
) -> tuple[Tensor, dict[str, Any]]:
    """MSE between the network's output on x_t and the noise (or v), t uniform in [0, T)."""
    x0, cond = batch
    t = torch.randint(0, schedule.steps, (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    if conditional:
        drop = torch.rand(len(x0), device=x0.device) < cond_drop
        output = model(x_t, t, cond, drop)
    else:
        output = model(x_t, t)
    loss = F.mse_loss(output.float(), schedule.target(prediction, x0, t, noise))
    return loss, {}


def choose_condition(args: TrainArgs, data: DiffusionData) -> str:
    """auto: text with --clip, class when the data has classes, otherwise none."""
    if args.condition not in (*CONDITIONS, "auto"):
        raise LbdlError(f"--condition {args.condition}: choose auto, {', '.join(CONDITIONS)}")
    wanted = args.condition
    if wanted == "auto":
        wanted = "text" if args.clip else data.kind
    if wanted == "text" and not args.clip:
        raise LbdlError(
            "--condition text: needs --clip CKPT, the CLIP model whose text "
            "embeddings condition the model"
        )
    if wanted != "text" and args.clip:
        raise LbdlError(f"--clip: only for text conditioning, not --condition {wanted}")
    if wanted == "text" and data.kind != "text":
        raise LbdlError(
            f"{args.data}: has no captions for text conditioning (use a "
            "manifest, image + .txt pairs, or the built-in scenes)"
        )
    if wanted == "class" and data.kind != "class":
        raise LbdlError(f"{args.data}: has no classes (use class folders or idx files)")
    return wanted


def _check(args: TrainArgs) -> None:
    """The option values that need no data, checked before any data is read."""
    if args.condition not in (*CONDITIONS, "auto"):
        raise LbdlError(f"--condition {args.condition}: choose auto, {', '.join(CONDITIONS)}")
    if args.condition == "text" and not args.clip:
        raise LbdlError(
            "--condition text: needs --clip CKPT, the CLIP model whose text "
            "embeddings condition the model"
        )
    if args.clip is not None and args.condition in ("none", "class"):
        raise LbdlError(f"--clip: only for text conditioning, not --condition {args.condition}")
    if args.scene_label not in SCENE_LABELS:
        raise LbdlError(
            f"--scene-label {args.scene_label}: choose one of {', '.join(SCENE_LABELS)}"
        )
    default_config(
        8, 3, schedule=args.schedule, timesteps=args.timesteps, prediction=args.prediction
    )  # checks these three
    if not 0.0 <= args.cond_drop < 1.0:
        raise LbdlError(f"--cond-drop {args.cond_drop}: must be in [0, 1)")
    if args.width < 8 or args.width % 8:
        raise LbdlError(f"--width {args.width}: must be a multiple of 8")
    if args.blocks < 1:
        raise LbdlError(f"--blocks {args.blocks}: must be at least 1")
    if not 0.0 < args.fraction <= 1.0:
        raise LbdlError(f"--fraction {args.fraction}: must be in (0, 1]")
    if args.builtin_count < 1:
        raise LbdlError(f"--builtin-count {args.builtin_count}: must be at least 1")


def prepare(args: TrainArgs, seed: int) -> tuple[DiffusionData, dict[str, Any], Any, Any]:
    """The data, the model config, the training set (captions embedded once) and the CLIP
    text encoder of a text-conditional model (None otherwise)."""
    _check(args)
    text_wanted = args.condition == "text" or (args.condition == "auto" and args.clip)
    data = load_diffusion_data(
        args.data,
        args.image_size,
        args.channels,
        seed,
        args.skip_bad,
        args.builtin_count,
        captions=bool(text_wanted),
        scene_label=args.scene_label,
        hflip=args.hflip,
    )
    condition = choose_condition(args, data)
    text_dim, stored, train_set, encoder = 0, None, data.train, None
    if condition == "text":
        from lbdl_apps.diffusion.text import embed_captions, load_clip_text

        encoder, stored = load_clip_text(args.clip)  # type: ignore[arg-type]
        assert isinstance(data.train, Captioned)
        embeddings, index = embed_captions(encoder, data.train.captions)
        train_set = EmbeddedCaptions(data.train, embeddings, index)
        text_dim = encoder.embed_dim
    if args.fraction < 1.0:  # the readers shuffle with the seed, so a prefix is a fair sample
        train_set = Subset(train_set, range(max(1, int(len(train_set) * args.fraction))))
    config = default_config(
        data.image_size,
        data.channels,
        condition,
        len(data.labels),
        text_dim,
        args.width,
        blocks=args.blocks,
        schedule=args.schedule,
        timesteps=args.timesteps,
        prediction=args.prediction,
    )
    if stored is not None:
        config["clip"] = stored
    return data, config, train_set, encoder


def start_from(model: nn.Module, config: dict[str, Any], checkpoint: str) -> None:
    """`--init CKPT`: start from the weights of a diffusion model of the same config."""
    previous = load(checkpoint)
    if previous.config != config:
        changed = sorted(
            k for k in {*config, *previous.config} if config.get(k) != previous.config.get(k)
        )
        raise LbdlError(f"--init {checkpoint}: its model differs ({', '.join(changed)})")
    model.load_state_dict(previous.model.state_dict())


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train (EMA weights saved every epoch), then write a preview grid; return the last
    epoch's metrics."""
    args, common = start_run(args, common, TASK)
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data, config, train_set, encoder = prepare(args, common.seed)
    model = build_model(config)
    if encoder is not None:
        model.clip.load_state_dict(encoder.state_dict())
    if args.init is not None and args.resume is None:
        start_from(model, config, args.init)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(
        f"data: {data.source}; {len(train_set)} images; {config['condition']} "  # type: ignore[arg-type]
        f"conditioning; U-Net {trained / 1e6:.2f} M parameters; {config['schedule']} "
        f"schedule, T = {config['timesteps']}, {config['prediction']}-prediction"
    )
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "kind": MODEL_KIND,
        "config": config,
        "labels": data.labels,
        "data": args.data,
        "seed": common.seed,
        "builtin_count": args.builtin_count,
        "scene_label": args.scene_label,
    }
    schedule = NoiseSchedule(config["schedule"], config["timesteps"])
    loss_fn = partial(
        diffusion_loss,
        schedule=schedule,
        prediction=config["prediction"],
        conditional=config["condition"] != "none",
        cond_drop=args.cond_drop,
    )
    trainer = Trainer(
        model,
        train_set,
        None,
        loss_fn=loss_fn,
        evaluate_fn=None,
        config=TrainConfig.from_args(args, common.seed, monitor="train_loss", mode="min"),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        collate_fn=collate_images,
        quiet=common.quiet,
    )
    last = trainer.fit(resume=args.resume is not None)
    if is_main_process() and args.preview > 0:
        diffuser = load(run_dir / "model.safetensors", device)
        samples = diffuser.sample(args.preview, steps=50, seed=common.seed, quiet=common.quiet)
        save_samples(samples, run_dir / "samples")
        console.print(f"preview: {run_dir / 'samples' / 'grid.png'}")
    finish_run(run_dir)
    return last
