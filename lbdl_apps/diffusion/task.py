"""`lbdl diffusion` as tasks of core's run (book 7.2): the denoiser of `train` (data,
conditioning, model, loss, a preview grid at the end) and the noised CLIP of `train-guide`,
each a `SupervisedTask` without validation (every image is trained on; the last epoch is
kept, with the EMA weights for the denoiser)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from lbdl_apps.clip.api import MODEL_SIZES, ClipConfig, TextEncoderSpec, TextTokenizer, new_config
from lbdl_apps.clip.api import load as load_clip
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common
from lbdl_apps.core.run import Finished, SupervisedTask, TrainingSets, run_training
from lbdl_apps.core.train_state import Monitor
from lbdl_apps.diffusion.api import MODEL_KIND, TASK, load, save_samples
from lbdl_apps.diffusion.cli import GuideArgs, TrainArgs
from lbdl_apps.diffusion.data import (
    SCENE_LABELS,
    Captioned,
    DiffusionData,
    collate_images,
    embed_captions,
    load_diffusion_data,
)
from lbdl_apps.diffusion.guide import GUIDE_KIND, GuideConfig, NoisedClip
from lbdl_apps.diffusion.loss import diffusion_loss, noised_clip_loss
from lbdl_apps.diffusion.model import (
    CONDITIONS,
    DiffusionConfig,
    build_model,
    check_settings,
    default_config,
)
from lbdl_apps.diffusion.schedule import NoiseSchedule

NEEDS_CLIP = (
    "--condition text: needs --clip CKPT, the CLIP model whose text embeddings condition the model"
)


@dataclass
class DenoiserData:
    """A run's data, the condition chosen and the training set (captions embedded once by
    the CLIP text encoder of a text-conditional model)."""

    data: DiffusionData
    condition: str
    train: Dataset
    clip: TextEncoderSpec | None = None
    encoder: nn.Module | None = None  # the CLIP text encoder, with its weights


def choose_condition(args: TrainArgs, data: DiffusionData) -> str:
    """auto: text with --clip, class when the data has classes, otherwise none."""
    wanted = args.condition
    if wanted == "auto":
        wanted = "text" if args.clip else data.kind
    if wanted == "text" and not args.clip:
        raise LbdlError(NEEDS_CLIP)
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


class DiffusionTask(SupervisedTask[TrainArgs, DenoiserData]):
    """The denoiser: the MSE of its noise (or v) estimate at a random step."""

    name = TASK
    monitor = Monitor("train_loss", "min")

    def check(self, args: TrainArgs) -> None:
        if args.condition not in (*CONDITIONS, "auto"):
            raise LbdlError(f"--condition {args.condition}: choose auto, {', '.join(CONDITIONS)}")
        if args.condition == "text" and not args.clip:
            raise LbdlError(NEEDS_CLIP)
        if args.clip is not None and args.condition in ("none", "class"):
            raise LbdlError(f"--clip: only for text conditioning, not --condition {args.condition}")
        if args.scene_label not in SCENE_LABELS:
            raise LbdlError(
                f"--scene-label {args.scene_label}: choose one of {', '.join(SCENE_LABELS)}"
            )
        check_settings(args.schedule, args.timesteps, args.prediction)
        if not 0.0 <= args.cond_drop < 1.0:
            raise LbdlError(f"--cond-drop {args.cond_drop}: must be in [0, 1)")
        if args.width < 8 or args.width % 8:
            raise LbdlError(f"--width {args.width}: must be a multiple of 8")
        if args.fraction <= 0.0:
            raise LbdlError(f"--fraction {args.fraction}: must be in (0, 1]")

    def load_data(self, args: TrainArgs, seed: int) -> DenoiserData:
        text_wanted = args.condition == "text" or (args.condition == "auto" and args.clip)
        data = load_diffusion_data(
            args.data, args.image_size, args.channels, seed, args.skip_bad,
            args.builtin_count, captions=bool(text_wanted), scene_label=args.scene_label,
            hflip=args.hflip,
        )  # fmt: skip
        condition = choose_condition(args, data)
        run = DenoiserData(data, condition, data.train)
        if condition == "text":
            clip = load_clip(args.clip)  # type: ignore[arg-type]
            run.encoder, run.clip = clip.text_encoder(), clip.text_encoder_spec()
            assert isinstance(data.train, Captioned)
            run.train = embed_captions(data.train, run.encoder)
        if args.fraction < 1.0:  # the readers shuffle with the seed: a prefix is a fair sample
            run.train = Subset(run.train, range(max(1, int(len(run.train) * args.fraction))))
        return run

    def model_config(self, args: TrainArgs, data: DenoiserData) -> DiffusionConfig:
        found = data.data
        return default_config(
            found.image_size, found.channels, data.condition, len(found.labels),
            data.encoder.embed_dim if data.encoder is not None else 0, args.width,
            blocks=args.blocks, schedule=args.schedule, timesteps=args.timesteps,
            prediction=args.prediction, clip=data.clip,
        )  # fmt: skip

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: DenoiserData) -> None:
        if data.encoder is not None:
            model.clip.load_state_dict(data.encoder.state_dict())
        if args.init is not None:
            previous, config = load(args.init), self.model_config(args, data)
            if previous.config != config:
                old, new = asdict(previous.config), asdict(config)
                changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
                raise LbdlError(f"--init {args.init}: its model differs ({', '.join(changed)})")
            model.load_state_dict(previous.model.state_dict())

    def datasets(self, args: TrainArgs, data: DenoiserData, model: nn.Module) -> TrainingSets:
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.say(
            f"data: {data.data.source}; {len(data.train)} images; {data.condition} "  # type: ignore[arg-type]
            f"conditioning; U-Net {trained / 1e6:.2f} M parameters; {args.schedule} "
            f"schedule, T = {args.timesteps}, {args.prediction}-prediction"
        )
        return TrainingSets(data.train, None, collate_images)

    def loss(self, args: TrainArgs, data: DenoiserData):
        schedule = NoiseSchedule(args.schedule, args.timesteps)
        conditional = data.condition != "none"
        return partial(diffusion_loss, schedule=schedule, prediction=args.prediction,
                       conditional=conditional, cond_drop=args.cond_drop)  # fmt: skip

    def metadata(self, args: TrainArgs, data: DenoiserData) -> dict[str, Any]:
        return {
            "kind": MODEL_KIND,
            "labels": data.data.labels,
            "builtin_count": args.builtin_count,
            "scene_label": args.scene_label,
        }

    def finish(self, args: TrainArgs, data: DenoiserData, run: Finished) -> dict[str, float]:
        """A preview grid of --preview samples in samples/."""
        if args.preview > 0:
            diffuser = load(run.run_dir / "model.safetensors", run.device)
            seed = diffuser.meta.get("seed", 0)
            samples = diffuser.sample(args.preview, steps=50, seed=seed, quiet=run.quiet)
            save_samples(samples, run.run_dir / "samples")
            self.say(f"preview: {run.run_dir / 'samples' / 'grid.png'}")
        return {}


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train a denoiser (EMA weights saved every epoch), then write a preview grid; return
    the last epoch's metrics."""
    return run_training(DiffusionTask(), args, common)


@dataclass
class GuideData:
    """The captioned images a noised CLIP trains on, and the CLIP it starts as."""

    data: DiffusionData
    clip: ClipConfig
    tokenizer: TextTokenizer
    weights: dict[str, Any] | None = None  # --clip's, to start from


class GuideTask(SupervisedTask[GuideArgs, GuideData]):
    """The noised CLIP: the contrastive loss of captions and their images noised to a
    random step, starting from --clip's encoders or a fresh --model-size CLIP."""

    name = TASK
    monitor = Monitor("train_loss", "min")

    def check(self, args: GuideArgs) -> None:
        check_settings(args.schedule, args.timesteps, "eps")
        if args.clip is None and args.model_size not in MODEL_SIZES:
            raise LbdlError(f"--model-size {args.model_size}: choose {', '.join(MODEL_SIZES)}")

    def load_data(self, args: GuideArgs, seed: int) -> GuideData:
        data = load_diffusion_data(
            args.data, args.image_size, 3, seed, args.skip_bad, args.builtin_count, captions=True
        )
        if not isinstance(data.train, Captioned):
            raise LbdlError(
                f"{args.data}: has no captions (use a manifest, image + .txt pairs, or "
                "the built-in scenes)"
            )
        if args.clip is not None:
            clip = load_clip(args.clip)
            return GuideData(data, clip.config, clip.tokenizer, clip.model.state_dict())
        config, tokenizer = new_config(
            args.model_size, data.image_size, data.train.captions, args.vocab_size
        )
        return GuideData(data, config, tokenizer)

    def model_config(self, args: GuideArgs, data: GuideData) -> GuideConfig:
        return GuideConfig(data.clip, args.schedule, args.timesteps)

    build_model = staticmethod(NoisedClip)

    def initialize(self, model: nn.Module, args: GuideArgs, data: GuideData) -> None:
        if data.weights is not None:
            model.load_clip(data.weights)  # type: ignore[operator]

    def datasets(self, args: GuideArgs, data: GuideData, model: nn.Module) -> TrainingSets:
        self.say(
            f"data: {data.data.source}; {len(data.data.train)} captioned images; noised CLIP "  # type: ignore[arg-type]
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
            f"{args.schedule} schedule, T = {args.timesteps}"
        )
        return TrainingSets(data.data.train, None, collate_images)

    def loss(self, args: GuideArgs, data: GuideData):
        schedule = NoiseSchedule(args.schedule, args.timesteps)
        return partial(noised_clip_loss, schedule=schedule, tokenizer=data.tokenizer)

    def metadata(self, args: GuideArgs, data: GuideData) -> dict[str, Any]:
        return {"kind": GUIDE_KIND, "tokenizer": data.tokenizer.to_meta()}


def train_guide(args: GuideArgs, common: Common) -> dict[str, float]:
    """Train a noised CLIP on captioned images (the built-in scenes by default) for
    `sample --clip-guide`; return the last epoch's metrics."""
    return run_training(GuideTask(), args, common)
