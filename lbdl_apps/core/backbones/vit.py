"""Vision Transformer (book 5.3), plus key mappings from torchvision's and OpenAI CLIP's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.layers import ConvNormAct, TransformerBlock


class VisionTransformer(nn.Module):
    """Image patches as tokens, a CLS token, learned positions, transformer blocks (book 5.3).

    The CLS token's final state goes through the optional projection `proj` (proj_dim, no
    bias, as CLIP's) and the optional classifier `head` (num_classes). OpenAI CLIP's image
    encoder is `patch_bias=False, pre_norm=True, act="quick_gelu", eps=1e-5, proj_dim=...`.
    `stem_channels > 0` puts two 3x3 conv-BN-ReLU layers before the patch embedding (the
    "early convolutions" of Xiao et al. 2021), which helps small ViTs trained from scratch.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int = 3,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int | None = 1000,
        dropout: float = 0.0,
        act: str = "gelu",
        pre_norm: bool = False,
        eps: float = 1e-6,
        patch_bias: bool = True,
        proj_dim: int | None = None,
        stem_channels: int = 0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.stem = None
        if stem_channels:
            self.stem = nn.Sequential(
                ConvNormAct(in_channels, stem_channels), ConvNormAct(stem_channels, stem_channels)
            )
            in_channels = stem_channels
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2 + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.ln_pre = nn.LayerNorm(dim, eps=eps) if pre_norm else None
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, norm_eps=eps, act=act)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, proj_dim, bias=False) if proj_dim else None
        out_dim = proj_dim or dim
        self.head = nn.Linear(out_dim, num_classes) if num_classes else None
        self.num_features = out_dim

    def _positions(self, h: int, w: int) -> Tensor:
        """The positional embedding, resized by bicubic interpolation for an h x w grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + patches, dim): every token after the final norm."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of patch {self.patch_size}"
            )
        if self.stem is not None:
            x = self.stem(x)
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.drop(x + self._positions(h, w))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, or the (projected) CLS embedding when the model has no head."""
        x = self.forward_features(x)[:, 0]
        if self.proj is not None:
            x = self.proj(x)
        return x if self.head is None else self.head(x)


def _split_in_proj(out: dict[str, Tensor], prefix: str, weight: Tensor, bias: Tensor) -> None:
    """nn.MultiheadAttention's packed in_proj -> our q_proj, k_proj, v_proj."""
    for name, w, b in zip(("q", "k", "v"), weight.chunk(3), bias.chunk(3), strict=True):
        out[f"{prefix}.{name}_proj.weight"] = w
        out[f"{prefix}.{name}_proj.bias"] = b


def _map_blocks(
    sd: dict[str, Tensor], layer_prefix: str, names: dict[str, str]
) -> dict[str, Tensor]:
    """Map the transformer layers `layer_prefix<i>.` of `sd` onto our `blocks.<i>.`."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(layer_prefix):
            continue
        index, rest = key[len(layer_prefix) :].split(".", 1)
        prefix = f"blocks.{index}"
        if rest.endswith("in_proj_weight"):
            bias = sd[key.removesuffix("weight") + "bias"]
            _split_in_proj(out, f"{prefix}.attn", value, bias)
        elif not rest.endswith("in_proj_bias"):
            module, param = rest.rsplit(".", 1)
            out[f"{prefix}.{names[module]}.{param}"] = value
    return out


def from_torchvision_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision.models.VisionTransformer keys -> ours (same model, eps 1e-6, GELU)."""
    names = {
        "ln_1": "ln1",
        "self_attention.out_proj": "attn.out_proj",
        "ln_2": "ln2",
        "mlp.0": "mlp.fc1",
        "mlp.3": "mlp.fc2",
    }
    out = _map_blocks(sd, "encoder.layers.encoder_layer_", names)
    out["patch_embed.weight"] = sd["conv_proj.weight"]
    out["patch_embed.bias"] = sd["conv_proj.bias"]
    out["cls_token"] = sd["class_token"]
    out["pos_embed"] = sd["encoder.pos_embedding"]
    out["norm.weight"] = sd["encoder.ln.weight"]
    out["norm.bias"] = sd["encoder.ln.bias"]
    if "heads.head.weight" in sd:
        out["head.weight"] = sd["heads.head.weight"]
        out["head.bias"] = sd["heads.head.bias"]
    return out


def from_openai_clip_visual_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP's `visual.*` keys -> ours, for
    VisionTransformer(..., patch_bias=False, pre_norm=True, act="quick_gelu", eps=1e-5,
    proj_dim=..., num_classes=None). A whole CLIP state dict, or its `visual.` part."""
    if any(k.startswith("visual.") for k in sd):
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    names = {
        "ln_1": "ln1",
        "attn.out_proj": "attn.out_proj",
        "ln_2": "ln2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out = _map_blocks(sd, "transformer.resblocks.", names)
    out["patch_embed.weight"] = sd["conv1.weight"]
    out["cls_token"] = sd["class_embedding"].reshape(1, 1, -1)
    out["pos_embed"] = sd["positional_embedding"].unsqueeze(0)
    for ours, theirs in (("ln_pre", "ln_pre"), ("norm", "ln_post")):
        out[f"{ours}.weight"] = sd[f"{theirs}.weight"]
        out[f"{ours}.bias"] = sd[f"{theirs}.bias"]
    out["proj.weight"] = sd["proj"].t()
    return out


def from_openai_clip_text_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP's text tower (token_embedding, positional_embedding, transformer.*,
    ln_final) -> the keys of TransformerDecoder(vocab, width, layers, width // 64, context,
    cross_attention=False, act="quick_gelu"). CLIP's `text_projection` is not part of the
    decoder: its transpose is the weight of a bias-free Linear(width, embed_dim)."""
    names = {
        "ln_1": "ln1",
        "attn.out_proj": "attn.out_proj",
        "ln_2": "ln2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    text = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    out = _map_blocks(text, "transformer.resblocks.", names)
    out["token_embed.weight"] = sd["token_embedding.weight"]
    out["pos_embed.weight"] = sd["positional_embedding"]
    out["norm.weight"] = sd["ln_final.weight"]
    out["norm.bias"] = sd["ln_final.bias"]
    return out
