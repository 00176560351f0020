"""The Whisper-style speech recognizer (book 6.5): a convolutional front end and a
transformer encoder over the log-mel spectrogram, and a causal transformer decoder that
cross-attends to it and writes BPE tokens one at a time."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.asr.audio import N_MELS
from lbdl_apps.core.backbones.transformer import TransformerDecoder, TransformerEncoder
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import SinusoidalPositionalEncoding

MAX_FRAMES = 3000  # 30 s of 10 ms frames: the encoder sees at most 1500 positions
# width, encoder blocks, decoder blocks, heads. "tiny" has the dimensions of Whisper tiny.
MODELS: dict[str, dict[str, int]] = {
    "nano": {"dim": 128, "encoder_depth": 2, "decoder_depth": 2, "heads": 4},
    "mini": {"dim": 256, "encoder_depth": 4, "decoder_depth": 4, "heads": 4},
    "tiny": {"dim": 384, "encoder_depth": 4, "decoder_depth": 4, "heads": 6},
}


def default_config(name: str, vocab_size: int, max_tokens: int = 128) -> dict[str, Any]:
    """The config of model `name` for a tokenizer of `vocab_size` tokens."""
    if name not in MODELS:
        raise LbdlError(f"--model {name}: unknown; choose from {', '.join(MODELS)}")
    return {
        "name": name,
        **MODELS[name],
        "vocab_size": vocab_size,
        "n_mels": N_MELS,
        "max_frames": MAX_FRAMES,
        "max_tokens": max_tokens,
        "dropout": 0.0,
    }


class AudioEncoder(nn.Module):
    """Two 1D convolutions with GELU (the second with stride 2, halving the frame rate),
    sinusoidal positions, then pre-LN transformer blocks (book 6.5, 4.10, 5.3)."""

    def __init__(
        self, n_mels: int, dim: int, depth: int, heads: int, max_frames: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.positions = SinusoidalPositionalEncoding(dim, (max_frames + 1) // 2)
        self.transformer = TransformerEncoder(dim, depth, heads, dropout=dropout)
        for conv in (self.conv1, self.conv2):  # He initialisation: audio features of unit
            nn.init.kaiming_normal_(conv.weight)  # scale, not drowned by the positions
            nn.init.zeros_(conv.bias)

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, n_mels, T) -> (B, ceil(T / 2), dim) features and their padding mask (True at
        padding; None when `frames`, the true lengths, is None). Padded frames are zeroed
        before each convolution, so an utterance gives the same features in any batch."""
        if frames is None:
            x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))
            return self.transformer(self.positions(x.transpose(1, 2))), None
        frames = frames.to(mel.device)
        valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]
        x = F.gelu(self.conv1(mel * valid[:, None, :]))
        x = F.gelu(self.conv2(x * valid[:, None, :]))
        padding = ~valid[:, ::2]
        x = self.positions(x.transpose(1, 2))
        return self.transformer(x, key_padding_mask=padding if padding.any() else None), padding


class SpeechRecognizer(nn.Module):
    """Encoder-decoder transformer from log-mel spectrograms to token logits (book 6.5)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(
            config["n_mels"],
            config["dim"],
            config["encoder_depth"],
            config["heads"],
            config["max_frames"],
            config["dropout"],
        )
        self.decoder = TransformerDecoder(
            config["vocab_size"],
            config["dim"],
            config["decoder_depth"],
            config["heads"],
            config["max_tokens"],
            dropout=config["dropout"],
        )
        # PyTorch's default (fan-in) initialisation of the decoder's linear layers instead of
        # GPT's N(0, 0.02): at small widths the latter makes the cross-attention path
        # (a product of two such matrices) so weak that training long ignores the audio.
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def encode(self, mel: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Audio features and their padding mask (None when nothing is padded)."""
        audio, padding = self.encoder(mel, frames)
        return audio, padding if padding is not None and padding.any() else None

    def forward(self, mel: Tensor, frames: Tensor | None, tokens: Tensor) -> Tensor:
        """Teacher forcing: (B, n_mels, T) spectrograms and (B, L) input tokens -> (B, L, vocab)."""
        audio, mask = self.encode(mel, frames)
        return self.decoder(tokens, audio, mask)


def build_model(config: dict[str, Any]) -> SpeechRecognizer:
    return SpeechRecognizer(config)
