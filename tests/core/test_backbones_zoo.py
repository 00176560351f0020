"""The backbones of the field's pretrained models against torchvision's own, with random
weights: MobileNetV3-Large (classifier, reduced tail, dilated; the maps SSDLite and
LR-ASPP read) and VGG-16 with SSD300's changes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16

from lbdl_apps.core.backbones import SSDVGG16, MobileNetV3, from_torchvision_vgg16


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics and affine parameters away from their identity initialisation."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def features_only(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the classifier (for a model built with num_classes=None)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


@pytest.mark.parametrize(
    "options", [{}, {"reduced_tail": True}, {"dilated": True}], ids=["plain", "reduced", "dilated"]
)
def test_mobilenet_v3_large_matches_torchvision(options: dict) -> None:
    torch.manual_seed(0)
    ref = randomize(torchvision.models.mobilenet_v3_large(weights=None, **options))
    with torch.no_grad():
        ref.classifier[-1].weight.normal_(0, 1)  # logits of a useful size
    ours = MobileNetV3(**options).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # key for key
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)


def test_mobilenet_taps_are_torchvisions_maps() -> None:
    """SSDLite's two maps (C4's expansion and the last layer of the reduced-tail network)
    and LR-ASPP's (stride 8 and the dilated stride-16 last layer)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    ref = randomize(torchvision.models.mobilenet_v3_large(weights=None, dilated=True))
    ours = MobileNetV3(num_classes=None, dilated=True, taps=(4, 16)).eval()
    ours.load_state_dict(features_only(ref), strict=True)
    ref = ref.features
    with torch.no_grad():
        low, high = ours.forward_features(x)
        torch.testing.assert_close(low, ref[:5](x), atol=1e-5, rtol=0)
        torch.testing.assert_close(high, ref(x), atol=1e-5, rtol=0)
    assert ours.out_channels == [40, 960] and (low.shape[-1], high.shape[-1]) == (8, 4)
    ref = randomize(torchvision.models.mobilenet_v3_large(weights=None, reduced_tail=True))
    ours = MobileNetV3(num_classes=None, reduced_tail=True, taps=("13.expand", 16)).eval()
    ours.load_state_dict(features_only(ref), strict=True)
    with torch.no_grad():
        c4, last = ours.forward_features(x)
        expected = ref.features[13].block[0](ref.features[:13](x))
        torch.testing.assert_close(c4, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(last, ref.features(x), atol=1e-5, rtol=0)
    assert ours.out_channels == [672, 480] and (c4.shape[-1], last.shape[-1]) == (4, 2)
    assert MobileNetV3(num_classes=None).out_channels == [16, 24, 40, 112, 960]
    with pytest.raises(ValueError, match="no expansion"):
        MobileNetV3(taps=("1.expand",))


def test_ssd_vgg16_matches_torchvisions_ssd300_backbone() -> None:
    """conv4_3 normalized and rescaled, and fc7: torchvision's SSD300 feature extractor
    spreads the same parameters over `features` and `extra.0`."""
    torch.manual_seed(0)
    ref = ssd300_vgg16(weights=None, weights_backbone=None).backbone.eval()
    with torch.no_grad():
        ref.scale_weight.uniform_(5.0, 25.0)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("extra.")}
    for k, v in ref.extra[0].state_dict().items():  # 1, 3, 5: conv5_x; 7.1, 7.3: fc6, fc7
        index, rest = k.split(".", 1)
        if index == "7":
            state[rest.replace("1.", "fc6.", 1).replace("3.", "fc7.", 1)] = v
        else:
            state[f"features.{23 + int(index)}.{rest}"] = v
    ours = SSDVGG16().eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        maps = ours.forward_features(x)
        expected = list(ref(x).values())[:2]
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 38, 38), (1024, 19, 19)]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_vgg16_imagenet_features_load() -> None:
    state = torchvision.models.vgg16(weights=None).state_dict()
    missing, unexpected = SSDVGG16().load_state_dict(from_torchvision_vgg16(state), strict=False)
    assert sorted(missing) == ["fc6.bias", "fc6.weight", "fc7.bias", "fc7.weight", "scale_weight"]
    assert unexpected == []
