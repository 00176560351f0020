"""Architectures of book chapter 5 against torchvision's, and their decoding and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from lbdl_apps.core.backbones import (
    ResNet,
    TransformerDecoder,
    TransformerEncoder,
    UNet,
    VisionTransformer,
    from_torchvision_state_dict,
    load_torchvision_weights,
    resnet18,
    resnet50,
    resnet_small,
)
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import Bottleneck, KVCache


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision(name: str) -> None:
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)().eval()
    for m in ref.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = {"resnet18": resnet18, "resnet50": resnet50}[name]().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert n_params(ours) == n_params(ref)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_resnet_stages_and_dilation() -> None:
    torch.manual_seed(0)
    model = resnet50(num_classes=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert [f.shape[1:] for f in features] == [
            (256, 16, 16),
            (512, 8, 8),
            (1024, 4, 4),
            (2048, 2, 2),
        ]
        assert model.out_channels == [256, 512, 1024, 2048]
        assert model(x).shape == (1, 2048)
        dilated = resnet18(replace_stride_with_dilation=(False, True, True)).eval()
        shapes = [f.shape[-1] for f in dilated.forward_features(x)]
        assert shapes == [16, 8, 8, 8]
        assert dilated.layer4[1].conv1.dilation == (4, 4)
        assert dilated(x).shape == (1, 1000)


def test_resnet_dilation_matches_torchvision() -> None:
    torch.manual_seed(0)
    flags = (False, True, True)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=list(flags)).eval()
    ours = ResNet(Bottleneck, [3, 4, 6, 3], replace_stride_with_dilation=flags).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [28, 32])
def test_small_resnet(size: int) -> None:
    torch.manual_seed(0)
    model = resnet_small(stages=3, width=16, in_channels=1, num_classes=10)
    x = torch.randn(2, 1, size, size)
    assert model(x).shape == (2, 10)
    half = (size + 1) // 2
    assert [f.shape[1:] for f in model.forward_features(x)] == [
        (16, size, size),
        (32, half, half),
        (64, (half + 1) // 2, (half + 1) // 2),
    ]
    assert not hasattr(model, "layer4")
    assert ResNet(Bottleneck, [1], widths=(8,), stem="small")(x.expand(-1, 3, -1, -1)).shape == (
        2,
        1000,
    )
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny")


def test_load_torchvision_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)

    same_head = load_torchvision_weights(resnet18().eval(), path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same_head(x), ref(x), atol=1e-4, rtol=1e-4)

    new_head = resnet18(num_classes=5)
    fc_before = new_head.fc.weight.clone()
    load_torchvision_weights(new_head, path)
    torch.testing.assert_close(new_head.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(new_head.fc.weight, fc_before)  # skipped, not overwritten
    load_torchvision_weights(resnet18(num_classes=None), path)
    old_file = tmp_path / "old.pth"  # saved before PyTorch 0.4.1: no BatchNorm step counters
    torch.save({k: v for k, v in ref.state_dict().items() if "num_batches" not in k}, old_file)
    with torch.no_grad():
        torch.testing.assert_close(load_torchvision_weights(resnet18().eval(), old_file)(x), ref(x))

    with pytest.raises(LbdlError, match="do not fit"):
        load_torchvision_weights(resnet50(), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not weights")
    with pytest.raises(LbdlError, match=r"garbage\.pth"):
        load_torchvision_weights(resnet18(), garbage)
    with pytest.raises(LbdlError, match="neither a file"):
        load_torchvision_weights(resnet18(), tmp_path / "missing.pth")


def test_vit_matches_torchvision() -> None:
    torch.manual_seed(0)
    ref = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    ).eval()
    with torch.no_grad():  # torchvision zero-initializes these
        ref.class_token.normal_()
        ref.heads.head.weight.normal_(0, 0.1)
        ref.heads.head.bias.normal_()
    ours = VisionTransformer(32, 8, dim=64, depth=2, heads=2, mlp_ratio=2.0, num_classes=10)
    ours.load_state_dict(from_torchvision_state_dict(ref.state_dict()), strict=True)
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        assert ours.forward_features(x).shape == (2, 17, 64)
        assert ours(torch.randn(1, 3, 48, 40)).shape == (1, 10)  # interpolated positions
    with pytest.raises(ValueError, match="multiple of patch"):
        ours(torch.randn(1, 3, 30, 32))


def test_vit_clip_options() -> None:
    model = VisionTransformer(
        32,
        8,
        dim=32,
        depth=1,
        heads=2,
        num_classes=None,
        act="quick_gelu",
        pre_norm=True,
        eps=1e-5,
        patch_bias=False,
        proj_dim=24,
    )
    assert model.patch_embed.bias is None and model.proj.bias is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 24)


def test_vit_conv_stem_keeps_the_token_grid() -> None:
    model = VisionTransformer(28, 7, in_channels=1, dim=32, depth=1, heads=2, stem_channels=8)
    assert model.patch_embed.in_channels == 8
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 1 + 16, 32)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 1000)


def test_encoder_shapes_and_padding() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(32, depth=2, heads=4).eval()
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    y = encoder(x, key_padding_mask=padding)
    assert y.shape == (2, 9, 32)
    changed = x.clone()
    changed[0, 6:] = 1.0
    torch.testing.assert_close(encoder(changed, key_padding_mask=padding)[0, :6], y[0, :6])
    assert encoder(x, causal=True).shape == (2, 9, 32)


@pytest.mark.parametrize("cross", [True, False])
def test_decoder_cache_equals_full_forward(cross: bool) -> None:
    torch.manual_seed(0)
    decoder = TransformerDecoder(50, 32, depth=2, heads=4, max_len=16, cross_attention=cross).eval()
    tokens = torch.randint(0, 50, (2, 10))
    context = torch.randn(2, 7, 32) if cross else None
    padding = None
    if cross:
        padding = torch.zeros(2, 7, dtype=torch.bool)
        padding[1, 5:] = True
    with torch.no_grad():
        full = decoder(tokens, context, padding)
        assert full.shape == (2, 10, 50)
        cache = KVCache()
        steps = [decoder(tokens[:, :4], context, padding, cache=cache)]  # the prompt
        for i in range(4, 10):
            steps.append(decoder(tokens[:, i : i + 1], context, padding, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 10
    assert decoder(tokens, context, logits=False).shape == (2, 10, 32)
    with torch.no_grad():  # the logits at some positions alone
        some = decoder(tokens, context, padding, at=torch.tensor([9, 2]))
    torch.testing.assert_close(some, full[:, [9, 2]], atol=1e-6, rtol=1e-6)


def test_reordered_cache_decodes_the_reordered_rows() -> None:
    """KVCache.reorder keeps rows (beam search): decoding on goes on for those rows."""
    torch.manual_seed(0)
    decoder = TransformerDecoder(50, 32, depth=2, heads=4, max_len=16).eval()
    tokens, context = torch.randint(0, 50, (2, 6)), torch.randn(2, 7, 32)
    rows = torch.tensor([1, 1, 0])  # the second row twice, then the first
    with torch.no_grad():
        full = decoder(tokens[rows], context[rows])[:, -1]
        cache = KVCache()
        decoder(tokens[:, :5], context, cache=cache)
        cache.reorder(rows)
        last = decoder(tokens[rows, 5:], context[rows], cache=cache)[:, -1]
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)


def test_a_reorder_among_beams_of_one_input_keeps_the_cross_attention_cache() -> None:
    """Beams of one input share its context: `same_context` moves the self-attention cache
    alone, the cross-attention keys stay the very same tensors, and decoding goes on as
    after a full reorder."""
    torch.manual_seed(0)
    decoder = TransformerDecoder(50, 32, depth=2, heads=4, max_len=16).eval()
    tokens = torch.randint(0, 50, (3, 6))
    context = torch.randn(1, 7, 32).expand(3, 7, 32)  # three beams of one input
    rows = torch.tensor([2, 0, 0])
    with torch.no_grad():
        full = decoder(tokens[rows], context)[:, -1]
        cache = KVCache()
        decoder(tokens[:, :5], context, cache=cache)
        cross = {n: dict(e) for n, e in cache._layers.items() if n.endswith(".cross")}
        selfs = {n: dict(e) for n, e in cache._layers.items() if n.endswith(".self")}
        cache.reorder(rows, same_context=True)
        assert cross and all(cache.layer(n)[k] is t for n, e in cross.items() for k, t in e.items())
        assert all(cache.layer(n)[k] is not t for n, e in selfs.items() for k, t in e.items())
        last = decoder(tokens[rows, 5:], context, cache=cache)[:, -1]
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)


def test_unet_shapes() -> None:
    torch.manual_seed(0)
    plain = UNet(1, 2, base=8, multipliers=(1, 2), attention_levels=(1,), heads=2)
    assert plain(torch.randn(2, 1, 12, 16)).shape == (2, 2, 12, 16)

    diffusion = UNet(3, 3, base=16, multipliers=(1, 2, 2), time_dim=16, cond_dim=12)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 500])
    y = diffusion(x, t)
    assert y.shape == x.shape
    assert not torch.allclose(diffusion(x, t, torch.randn(2, 12)), y)
    assert not torch.allclose(diffusion(x, torch.tensor([4, 500])), y)
    assert diffusion(x, 7).shape == x.shape  # one time step for the whole batch

    with pytest.raises(ValueError, match="divisible by 4"):
        diffusion(torch.randn(1, 3, 18, 16), t)
    with pytest.raises(ValueError, match="time step"):
        diffusion(x)
    with pytest.raises(ValueError, match="multiples"):
        UNet(1, 1, base=12)


def test_load_torchvision_weights_into_gray_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    gray = load_torchvision_weights(resnet18(in_channels=1).eval(), path)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # a gray image is the RGB image with three equal channels
        torch.testing.assert_close(gray(x), ref(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_openai_clip_text_tower_maps_onto_the_decoder() -> None:
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from lbdl_apps.core.backbones import from_openai_clip_text_state_dict

    torch.manual_seed(0)
    text_cfg = CLIPTextCfg(context_length=12, vocab_size=100, width=128, heads=2, layers=2)
    vision_cfg = CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=16)
    ref = open_clip.CLIP(32, vision_cfg, text_cfg, quick_gelu=True).eval()
    ours = TransformerDecoder(100, 128, depth=2, heads=2, max_len=12, cross_attention=False,
                              act="quick_gelu").eval()  # fmt: skip
    ours.load_state_dict(from_openai_clip_text_state_dict(ref.state_dict()), strict=True)
    tokens = torch.randint(1, 98, (2, 12))
    tokens[:, 7], tokens[:, 8:] = 99, 0  # end of text (the highest id), then padding
    with torch.no_grad():
        pooled = ours(tokens, logits=False)[:, 7] @ ref.text_projection
        torch.testing.assert_close(pooled, ref.encode_text(tokens), atol=1e-5, rtol=1e-5)
