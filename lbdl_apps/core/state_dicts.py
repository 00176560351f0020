"""Publishers' state-dict files: recognised by their first bytes and their keys (never by
their names), read with weights_only (a file with Python objects is refused, never
unpickled), and loaded into lbdl's models whole, or all but the layers a fine-tuning run
makes new (`--init`). Imported by the apps' zoo.py, so torch is imported only when used."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.zoo import PublisherFormat

if TYPE_CHECKING:
    from torch import nn

Converted = tuple[dict[str, Any], dict[str, Any]]


def file_kind(path: Path) -> str | None:
    """What a weights file is by its first bytes: "torch" for a zip archive (torch.save) or
    a pickle (its legacy format), "safetensors" for an 8-byte header length then JSON."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return "safetensors" if len(head) == 9 and head[8:9] == b"{" else None


@functools.lru_cache(maxsize=1)
def _read(path: Path, stamp: tuple[int, int]) -> dict[str, Any]:
    """The tensors of a file, cached so that recognising and converting it read it once."""
    from lbdl_apps.core.checkpoint import load_tensors

    if file_kind(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise LbdlError(f"{path}: unreadable safetensors file ({error})") from None
    state = load_tensors(path, "PyTorch weights file")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise LbdlError(f"{path}: does not hold a state dict")
    return state


def read_state_dict(path: Path) -> dict[str, Any]:
    """The state dict of a safetensors or torch file (one line for anything else)."""
    stat = path.stat()
    return _read(path.resolve(), (stat.st_mtime_ns, stat.st_size))


def load_exactly(model: nn.Module, state: dict[str, Any], source: str | Path) -> None:
    """Load every weight; a missing, unexpected or misshapen one is one line naming it.
    Files saved before BatchNorm counted its batches lack `num_batches_tracked`: zero, as
    nn.BatchNorm2d itself fills it in."""
    import torch

    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise LbdlError(f"{source}: weights do not fit the model ({detail})") from None


def keep_all_but(model: nn.Module, state: dict, final: tuple[str, ...], source: str) -> None:
    """Load `state` into `model` but for the modules `final` (new for a fine-tuning run's
    classes): every other weight must fit, one line naming the first that does not."""
    drop = tuple(f"{name}." for name in final)
    kept = {k: v for k, v in state.items() if not k.startswith(drop)}
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as error:
        raise LbdlError(f"--init {source}: its weights do not fit ({error})") from None
    if unexpected or any(not k.startswith(drop) for k in missing):
        raise LbdlError(f"--init {source}: its weights do not fit ({(unexpected or missing)[0]})")


def state_dict_format(
    name: str,
    task: str,
    identify: Callable[[dict[str, Any]], str | None],
    convert: Callable[[dict[str, Any], Path], Converted],
) -> PublisherFormat:
    """The format of a publisher's single state-dict file for `task`. Every torch file is
    claimed, so that `convert` can say in one line what it holds when `identify` does not
    know it; a safetensors file only when `identify` names it (one without lbdl metadata
    may be anyone's)."""

    def matches(path: Path) -> bool:
        kind = file_kind(path)
        if kind == "safetensors":
            try:
                return identify(read_state_dict(path)) is not None
            except LbdlError:  # unreadable: read_checkpoint says so
                return False
        if kind == "torch":
            read_state_dict(path)  # a file with Python objects, or unreadable: its one line
            return True
        return False

    return PublisherFormat(name, task, matches, lambda path: convert(read_state_dict(path), path))
