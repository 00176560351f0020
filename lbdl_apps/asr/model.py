"""The Whisper-style speech recognizer (book 6.5): a convolutional front end and a
transformer encoder over the log-mel spectrogram, and a causal transformer decoder that
cross-attends to it and writes BPE tokens one at a time. With `architecture="whisper"` it is
OpenAI's Whisper itself, layer for layer (its checkpoints load into it: whisper_import.py):
key projections without bias, Whisper's sinusoids (kept in the state dict, as Whisper's
checkpoints hold them), no masking of padded frames (Whisper always sees 30-s windows)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class RecognizerConfig:
    """Everything `build_model` needs, stored in the checkpoint (the keys of the dicts that
    checkpoints from before this class hold; those without `frontend` have Whisper's)."""

    name: str
    dim: int
    encoder_depth: int
    decoder_depth: int
    heads: int
    vocab_size: int
    n_mels: int = N_MELS
    max_frames: int = MAX_FRAMES
    max_tokens: int = 128
    dropout: float = 0.0
    frontend: str = "conv1d"
    architecture: str = "lbdl"  # or "whisper": OpenAI's Whisper (its weights load as they are)
    encoder_window: float | None = None  # seconds the encoder sees (None: all; Whisper: 30)
    lora_rank: int = 0  # low-rank adapters on the projections (lora.py, book 8.3); 0: none
    lora_alpha: float = 0.0  # the adapters' update is scaled by lora_alpha / lora_rank


def default_config(
    name: str, vocab_size: int, max_tokens: int = 128, frontend: str = "conv1d"
) -> RecognizerConfig:
    """The config of model `name` for a tokenizer of `vocab_size` tokens."""
    if name not in MODELS:
        raise LbdlError(f"--model {name}: unknown; choose from {', '.join(MODELS)}")
    if frontend not in FRONTENDS:
        raise LbdlError(f"--frontend {frontend}: choose {' or '.join(FRONTENDS)}")
    return RecognizerConfig(
        name=name, **MODELS[name], vocab_size=vocab_size, max_tokens=max_tokens, frontend=frontend
    )


class Conv1dFrontEnd(nn.Module):
    """Whisper's front end: two 1D convolutions over time with GELU, the second with stride 2
    (book 6.5). (B, n_mels, T) -> (B, dim, ceil(T / 2))."""

    stride = 2

    def __init__(self, n_mels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2):  # He initialisation: audio features of unit
            nn.init.kaiming_normal_(conv.weight)  # scale, not drowned by the positions
            nn.init.zeros_(conv.bias)

    def forward(self, mel: Tensor, valid: Tensor | None) -> Tensor:
        """(B, n_mels, T) and the valid frames (B, T) -> (B, dim, ceil(T / 2))."""
        # valid (B, T) -> (B, 1, T): zero the padded frames of every channel
        x = F.gelu(self.conv1(mel if valid is None else mel * valid[:, None, :]))
        return F.gelu(self.conv2(x if valid is None else x * valid[:, None, :]))


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm (book 5.2) whose training statistics leave out the padded frames, so that
    they are those of the audio alone, as at inference."""

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if not self.training or valid is None:
            return super().forward(x)
        # x (B, C, F, T); valid (B, T) -> (B, 1, 1, T) -> weight (B, 1, F, T)
        weight = valid[:, None, None, :].to(x.dtype).expand(-1, 1, x.shape[2], -1)
        count = weight.sum()
        mean = (x * weight).sum(dim=(0, 2, 3)) / count
        var = ((x - mean[:, None, None]) ** 2 * weight).sum(dim=(0, 2, 3)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * count / (count - 1).clamp(min=1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)  # (C,), broadcast as (C, 1, 1)
        return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]


class Conv2dFrontEnd(nn.Module):
    """A VGG-style stack of 2D convolutions over (mel band, time) (book 4.2, 5.2): four stages
    of two 3x3 convolutions with batch norm and ReLU, each stage halving the bands (the first
    two also the frames), then the maximum over the remaining bands. A formant moved a few
    bands up or down, as by another speaker's vocal tract, moves the activations, and their
    maximum over bands changes little. (B, n_mels, T) -> (B, dim, ceil(T / 4))."""

    stride = 4
    channels = (16, 32, 64, 96)

    def __init__(self, n_mels: int, dim: int) -> None:
        super().__init__()
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        inputs = 1
        for channels in self.channels:
            for _ in range(2):
                self.convs.append(nn.Conv2d(inputs, channels, 3, padding=1, bias=False))
                self.norms.append(MaskedBatchNorm2d(channels))
                inputs = channels
        self.project = nn.Conv1d(inputs, dim, kernel_size=1)

    def forward(self, mel: Tensor, valid: Tensor | None) -> Tensor:
        """(B, n_mels, T) and the valid frames (B, T) -> (B, dim, ceil(T / 4))."""

        def masked(x: Tensor) -> Tensor:  # padding kept at zero: it then acts as the
            # border does; valid (B, T') -> (B, 1, 1, T') over x (B, C, F, T')
            return x if valid is None else x * valid[:, None, None, :]

        x = masked(mel[:, None])  # (B, n_mels, T) -> (B, 1, n_mels, T): one input channel
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = masked(F.relu(norm(conv(x), valid)))
            if index % 2:  # the end of a stage: after ReLU, a window half in the padding
                time_step = 2 if index < 4 else 1  # takes its valid maximum
                x = F.max_pool2d(x, (2, time_step), ceil_mode=True)
                if valid is not None and time_step == 2:
                    valid = valid[:, ::2]  # (B, T') -> (B, ceil(T' / 2))
        # (B, 96, n_mels / 16, T / 4) -> max over bands (B, 96, T / 4) -> (B, dim, T / 4)
        return self.project(x.amax(dim=2))


FRONTENDS = {"conv1d": Conv1dFrontEnd, "conv2d": Conv2dFrontEnd}


class AudioEncoder(nn.Module):
    """A convolutional front end (Whisper's 1D convolutions, or a 2D CNN), sinusoidal
    positions, then pre-LN transformer blocks (book 6.5, 4.10, 5.3)."""

    def __init__(
        self,
        n_mels: int,
        dim: int,
        depth: int,
        heads: int,
        max_frames: int,
        dropout: float = 0.0,
        frontend: str = "conv1d",
        whisper: bool = False,
    ) -> None:
        super().__init__()
        self.frontend = FRONTENDS[frontend](n_mels, dim)
        positions = -(-max_frames // self.frontend.stride)
        if whisper:  # Whisper's sinusoids, in the state dict as in its checkpoints
            self.positions = SinusoidalPositionalEncoding(
                dim, positions, layout="halves", persistent=True
            )
        else:
            self.positions = SinusoidalPositionalEncoding(dim, positions)
        self.transformer = TransformerEncoder(dim, depth, heads, dropout=dropout,
                                              key_bias=not whisper)  # fmt: skip

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, n_mels, T) -> (B, ceil(T / stride), dim) features and their padding mask (True
        at padding; None when `frames`, the true lengths, is None). Padded frames are zeroed
        before each convolution, so an utterance gives the same features in any batch."""
        if frames is None:
            x = self.frontend(mel, None)  # (B, dim, T / stride)
            # (B, dim, T / stride) -> (B, T / stride, dim): one position per output frame
            return self.transformer(self.positions(x.transpose(1, 2))), None
        frames = frames.to(mel.device)
        # (1, T) < (B, 1) -> valid (B, T): True at the frames of the audio
        valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]
        # (B, dim, T / stride) -> (B, T / stride, dim)
        x = self.positions(self.frontend(mel, valid).transpose(1, 2))
        padding = ~valid[:, :: self.frontend.stride]  # (B, T) -> (B, ceil(T / stride))
        return self.transformer(x, key_padding_mask=padding if padding.any() else None), padding


class SpeechRecognizer(nn.Module):
    """Encoder-decoder transformer from log-mel spectrograms to token logits (book 6.5)."""

    def __init__(self, config: RecognizerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        whisper = c.architecture == "whisper"
        self.encoder = AudioEncoder(
            c.n_mels, c.dim, c.encoder_depth, c.heads, c.max_frames, c.dropout, c.frontend, whisper
        )
        self.decoder = TransformerDecoder(
            c.vocab_size, c.dim, c.decoder_depth, c.heads, c.max_tokens, dropout=c.dropout,
            key_bias=not whisper,
        )  # fmt: skip
        # PyTorch's default (fan-in) initialisation of the decoder's linear layers instead of
        # GPT's N(0, 0.02): at small widths the latter makes the cross-attention path
        # (a product of two such matrices) so weak that training long ignores the audio.
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def encode(self, mel: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Audio features and their padding mask (None when nothing is padded). A model
        trained on a shortened window (`encoder_window`) sees the first frames of it."""
        if self.config.encoder_window is not None and frames is None:
            mel = shorten_window(mel, self.config.encoder_window, strict=True)
        whisper = self.config.architecture == "whisper" and frames is None
        if whisper and mel.device.type == "cpu" and not torch.is_grad_enabled():
            # Whisper's 30-s windows one at a time: on a CPU a batch of them is no faster
            # per window, and slower once its activations leave the cache (1.3-2.5x at 16 here)
            return torch.cat([self.encoder(window)[0] for window in mel.split(1)]), None
        audio, padding = self.encoder(mel, frames)
        return audio, padding if padding is not None and padding.any() else None

    def forward(self, mel: Tensor, frames: Tensor | None, tokens: Tensor) -> Tensor:
        """Teacher forcing: (B, n_mels, T) spectrograms and (B, L) input tokens -> (B, L, vocab)."""
        audio, mask = self.encode(mel, frames)
        return self.decoder(tokens, audio, mask)


ARCHITECTURES = ("lbdl", "whisper")
FRAMES_PER_SECOND = 100  # 10 ms log-mel frames


def window_frames(seconds: float) -> int:
    """The log-mel frames of an encoder window of `seconds`: an even count (the conv1d front
    end halves it), at least 2."""
    return max(2, 2 * round(seconds * FRAMES_PER_SECOND / 2))


def shorten_window(mel: Tensor, seconds: float, strict: bool = False) -> Tensor:
    """A shortened encoder window (issue 25): the first `seconds` of (..., n_mels, T) log-mel
    windows (30-s Whisper windows, zero-padded as Whisper pads them), zero-padded up to that
    length when shorter. The encoder slices its positional embedding to the frames it is
    given, so a short clip costs ~seconds / 30 of the 30-s encoder. `strict`: an LbdlError
    when audio (frames not zero) lies beyond the window, rather than dropping it."""
    frames = window_frames(seconds)
    if strict and mel.shape[-1] > frames and bool(mel[..., frames:].abs().amax() > 0):
        raise LbdlError(f"audio longer than the model's {seconds:g}-s encoder window (it "
                        "was fine-tuned on short clips: cut the audio to that length)")  # fmt: skip
    mel = mel[..., :frames]
    return F.pad(mel, (0, frames - mel.shape[-1])) if mel.shape[-1] < frames else mel


def build_model(config: RecognizerConfig) -> SpeechRecognizer:
    """The recognizer of a config (as stored in a checkpoint)."""
    if config.architecture not in ARCHITECTURES:
        raise LbdlError(f"architecture {config.architecture!r}: not one this lbdl knows")
    if config.architecture == "whisper" and config.frontend != "conv1d":
        raise LbdlError(f"a Whisper model has the conv1d front end, not {config.frontend}")
    model = SpeechRecognizer(config)
    if config.lora_rank:
        from lbdl_apps.asr.lora import add_lora

        add_lora(model, config.lora_rank, config.lora_alpha)
    return model
