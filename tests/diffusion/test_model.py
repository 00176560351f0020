"""The denoiser, its conditioning and the sampling API (book 7.2)."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lbdl_apps.clip.api import make_scenes
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common
from lbdl_apps.diffusion.api import load, save_samples
from lbdl_apps.diffusion.cli import GuideArgs
from lbdl_apps.diffusion.guide import load_guide
from lbdl_apps.diffusion.loss import diffusion_loss
from lbdl_apps.diffusion.model import build_model, default_config
from lbdl_apps.diffusion.schedule import NoiseSchedule
from lbdl_apps.diffusion.task import train_guide

from .conftest import train_tiny


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_tiny_model_lowers_its_loss(prediction: str) -> None:
    torch.manual_seed(0)
    model = build_model(default_config(8, 3, base=8, blocks=1, prediction=prediction))
    schedule = NoiseSchedule("cosine", 100)
    scenes = torch.from_numpy(make_scenes(32, 8, seed=0).images)
    x0 = scenes.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, H, W, 3) -> (N, 3, H, W)
    batch = (x0, torch.zeros(32, dtype=torch.long))

    def loss() -> float:
        torch.manual_seed(1)  # the same t and noise each time
        return diffusion_loss(model, batch, schedule, prediction, False, 0.0)[0].item()

    before = loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        diffusion_loss(model, batch, schedule, prediction, False, 0.0)[0].backward()
        optimizer.step()
    assert loss() < 0.7 * before


def test_the_null_condition_is_the_unconditional_estimate() -> None:
    torch.manual_seed(0)
    model = build_model(default_config(8, 3, "class", num_classes=4, base=8, blocks=1)).eval()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 50, 900])
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        null = model(x, t, None)
        dropped = model(x, t, labels, torch.ones(3, dtype=torch.bool))
        kept = model(x, t, labels)
        mixed = model(x, t, labels, torch.tensor([True, False, True]))
    assert torch.allclose(null, dropped)
    assert not torch.allclose(kept, null)
    assert torch.allclose(mixed[1], kept[1]) and torch.allclose(mixed[0], null[0])


def test_guidance_scale_1_is_the_plain_conditional_estimate(class_model: Path) -> None:
    diffuser = load(class_model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 40])
    cond = torch.tensor([0, 3])
    with torch.no_grad():
        eps_1, _ = diffuser.predictor(cond, 1.0)(x, t)
        eps_3, _ = diffuser.predictor(cond, 3.0)(x, t)
        direct = diffuser.model(x, t, cond)
        null = diffuser.model(x, t, None)
    assert torch.allclose(eps_1, direct, atol=1e-6)
    assert torch.allclose(eps_3, null + 3 * (direct - null), atol=1e-5)


def test_same_seed_gives_the_same_samples(class_model: Path, tmp_path: Path) -> None:
    diffuser = load(class_model)
    a = diffuser.sample(5, classes=["red", "blue"], steps=4, seed=7, batch_size=2)
    b = diffuser.sample(5, classes=["red", "blue"], steps=4, seed=7, batch_size=2)
    c = diffuser.sample(5, classes=["red", "blue"], steps=4, seed=8, batch_size=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.conditions == ["red", "blue", "red", "blue", "red"]
    assert a.images.shape == (5, 3, 8, 8) and a.images.min() >= 0 and a.images.max() <= 1
    paths = save_samples(a, tmp_path)
    assert (tmp_path / "grid.png").is_file() and paths[1].name == "001_blue.png"
    ddpm = diffuser.sample(2, classes=["red"], steps=4, sampler="ddpm", seed=7)
    assert ddpm.images.shape == (2, 3, 8, 8)


def test_bad_sampling_requests(class_model: Path, unconditional_model: Path) -> None:
    diffuser, plain = load(class_model), load(unconditional_model)
    cases = [
        (lambda: diffuser.sample(2, classes=["magenta"]), "--class magenta"),
        (lambda: diffuser.sample(2, steps=0), "--steps 0"),
        (lambda: diffuser.sample(2, prompts=["a red circle"]), "--prompt"),
        (lambda: plain.sample(2, guidance=3.0), "--guidance"),
        (lambda: plain.sample(2, classes=["red"]), "--class"),
        (lambda: diffuser.sample(2, sampler="euler"), "--sampler euler"),
    ]
    for call, text in cases:
        with pytest.raises(LbdlError, match=text.replace("-", r"\-")):
            call()


def test_text_conditioning_stores_the_clip_text_encoder(
    tmp_path: Path, clip_checkpoint: Path
) -> None:
    from lbdl_apps.clip.api import load as load_clip

    path = train_tiny(tmp_path / "run", clip=str(clip_checkpoint))
    with safe_open(str(path), framework="pt") as f:
        assert any(key.startswith("clip.text.") for key in f.keys())  # noqa: SIM118
    diffuser = load(path)
    assert diffuser.condition == "text"
    prompts = ["a red circle.", "a blue square."]
    expected = load_clip(clip_checkpoint).encode_text(prompts)
    assert torch.allclose(diffuser.encode_text(prompts), expected, atol=1e-5)
    samples = diffuser.sample(4, prompts=prompts, steps=3, guidance=2.0)
    assert samples.conditions == prompts * 2 and samples.images.shape == (4, 3, 8, 8)
    with pytest.raises(LbdlError, match="--class"):
        diffuser.sample(2, classes=["red"])


def test_clip_guidance_steers_an_unconditional_model(
    tmp_path: Path, unconditional_model: Path, clip_checkpoint: Path
) -> None:
    args = GuideArgs(
        clip=str(clip_checkpoint),
        image_size=8,
        timesteps=50,
        builtin_count=64,
        epochs=1,
        batch_size=32,
        run_dir=tmp_path / "guide",
    )
    train_guide(args, Common(quiet=True))
    guide = load_guide(tmp_path / "guide" / "model.safetensors")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 45])
    grad = guide.gradient_fn(guide.encode_text(["a red circle."] * 2), 10.0)(x, t)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    plain = load(unconditional_model)
    prompts = ["a red circle."]
    free = plain.sample(2, steps=4, seed=1)
    steered = plain.sample(2, prompts=prompts, steps=4, seed=1, clip_guide=guide, clip_scale=50)
    assert not torch.allclose(free.images, steered.images)
    with pytest.raises(LbdlError, match="not a noised CLIP"):
        load_guide(unconditional_model)
    with pytest.raises(LbdlError, match="'clip' checkpoint"):
        load_guide(clip_checkpoint)
    mismatched = train_tiny(tmp_path / "other", condition="none", timesteps=60)
    with pytest.raises(LbdlError, match="schedule"):
        load(mismatched).sample(1, prompts=prompts, clip_guide=guide)


def test_init_starts_from_a_checkpoint_of_the_same_model(tmp_path: Path, class_model: Path) -> None:
    with pytest.raises(LbdlError, match=r"--init .*base"):
        train_tiny(tmp_path / "wider", scene_label="color", width=16, init=str(class_model))
    path = train_tiny(
        tmp_path / "b", scene_label="color", init=str(class_model), lr=1e-12, ema=None, warmup=0.0
    )
    before, after = load(class_model).model.state_dict(), load(path).model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
