"""Checkpoints: one self-describing safetensors file (weights + JSON metadata), atomic writes.

The metadata key "lbdl" holds JSON: format version, task, model config, labels,
preprocessing and whatever else the app needs to rebuild and use the model.
"""

from __future__ import annotations

import json
import pickle
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import atomic_path, finite, write_error
from lbdl_apps.core.zoo import ensure, looks_like_name, publisher_format

FORMAT_VERSION = 1
META_KEY = "lbdl"


def _storable(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing memory (tied weights) are cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    return out


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Write weights and `meta` (JSON-serialisable) to a safetensors file, atomically."""
    info = {"format_version": FORMAT_VERSION, **meta}
    with atomic_path(path) as tmp:
        metadata = {META_KEY: json.dumps(finite(info), allow_nan=False)}
        try:
            save_file(_storable(state_dict), str(tmp), metadata=metadata)
        except (SafetensorError, RuntimeError, OSError) as error:
            raise write_error(Path(path), error) from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise LbdlError(f"{path}: no such file")
    if path.is_dir():
        raise LbdlError(f"{path}: is a folder, not a checkpoint file")


def _raw_meta(path: Path) -> str | None:
    """The lbdl metadata of a safetensors file, as stored (None: a file without it)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise LbdlError(f"{path}: not a safetensors file (truncated or corrupt)") from e


def read_meta(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """The metadata of a checkpoint alone (the weights are not read); LbdlError naming the
    file if it is not a usable checkpoint, or, with `task`, one of another app."""
    path = Path(path)
    _check_file(path)
    raw = _raw_meta(path)
    if raw is None:
        raise LbdlError(f"{path}: a safetensors file without lbdl metadata, not a checkpoint")
    return _parse_meta(path, raw, task)


def is_lbdl_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a .safetensors file with lbdl metadata (a corrupt one counts, so
    that reading it gives its error); False for a file in another format."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return False
    try:
        return _raw_meta(path) is not None
    except LbdlError:
        return True


def read_checkpoint(
    path: str | Path, task: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights and metadata; LbdlError naming the file if it is not a usable checkpoint.

    With `task`, a checkpoint made by another task's app is rejected.
    """
    meta = read_meta(path, task)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise LbdlError(f"{path}: not a safetensors file (truncated or corrupt)") from e
    return tensors, meta


def _parse_meta(path: Path, raw: str, task: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LbdlError(f"{path}: unreadable lbdl metadata ({e})") from e
    if not isinstance(meta, dict):
        raise LbdlError(f"{path}: unreadable lbdl metadata (not a JSON object)")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise LbdlError(f"{path}: lbdl metadata without a format version")
    if version > FORMAT_VERSION:
        raise LbdlError(
            f"{path}: checkpoint format {version} is newer than this lbdl ({FORMAT_VERSION}); "
            "upgrade lbdl"
        )
    if task is not None and meta.get("task") != task:
        raise LbdlError(f"{path}: is a '{meta.get('task')}' checkpoint, not a '{task}' one")
    return meta


def save_state(path: str | Path, state: dict) -> None:
    """Write the trainer state (tensors, numbers, strings, containers) atomically."""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except (RuntimeError, OSError) as error:
            raise write_error(Path(path), error) from None


def load_tensors(path: str | Path, what: str) -> Any:
    """A torch file read with weights_only=True: tensors, numbers, strings and containers;
    a file holding other Python objects is refused, never unpickled. Any failure is one
    line naming the file (torch's own advice to turn weights_only off is never repeated)."""
    path = Path(path)
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LbdlError(
            f"{path}: not a {what}: it holds Python objects beyond tensors, which lbdl never loads"
        ) from None
    except Exception as e:  # torch raises many kinds for a bad file; all mean the same here
        reason = f"truncated or corrupt: {type(e).__name__}"
        raise LbdlError(f"{path}: unreadable {what} ({reason})") from None


def load_state(path: str | Path) -> dict:
    """Read a trainer state with weights_only=True (nothing arbitrary is unpickled)."""
    state = load_tensors(path, "trainer state")
    if not isinstance(state, dict):
        raise LbdlError(f"{path}: unreadable trainer state (not a dict)")
    return state


C = TypeVar("C")  # an app's model config dataclass


def config_from_dict(config_type: type[C], values: dict[str, Any], source: str | Path) -> C:
    """The typed model config stored in a checkpoint's metadata (a field that is itself a
    config dataclass is built from its dict too); settings that this lbdl does not know, or
    lacks, are an error naming the file."""
    names = {f.name for f in fields(config_type)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise LbdlError(f"{source}: unknown model settings {', '.join(unknown)} (a newer lbdl?)")
    hints = typing.get_type_hints(config_type)
    values = dict(values)
    for name, value in values.items():
        nested = _dataclass_in(hints[name])
        if nested is not None and isinstance(value, dict):
            values[name] = config_from_dict(nested, value, source)
    try:
        return config_type(**values)
    except TypeError as error:
        raise LbdlError(f"{source}: incomplete model config ({error})") from None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a type hint names (`Spec` or `Spec | None`), or None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and is_dataclass(candidate):
            return candidate
    return None


def checkpoint_file(checkpoint: str | Path, task: str | None = None) -> Path:
    """The file a CHECKPOINT argument names: the file; a run folder's model.safetensors;
    or, for a registry name such as `coco:ssd300`, its cached lbdl checkpoint (converted from
    the publisher's files, downloaded first when a network is there)."""
    if looks_like_name(str(checkpoint)):
        return ensure(str(checkpoint), task)
    path = Path(checkpoint)
    return path / "model.safetensors" if path.is_dir() else path


def read_any(
    checkpoint: str | Path, task: str
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata of any CHECKPOINT of `task`: an lbdl checkpoint (file, run
    folder or registry name), or a file in a publisher's format, recognised by its contents
    and converted in memory."""
    path = checkpoint_file(checkpoint, task)
    if path.exists() and not is_lbdl_checkpoint(path):
        found = publisher_format(path, task)
        if found is not None:
            state, meta = found.convert(path)
            return path, state, meta
    state, meta = read_checkpoint(path, task=task)
    return path, state, meta


def load_model(
    checkpoint: str | Path,
    task: str,
    build: Callable[[C], nn.Module],
    config_type: type[C],
) -> tuple[nn.Module, dict[str, Any]]:
    """An app's trained model from its checkpoint (a .safetensors file or a run folder):
    `build(config)` with the saved weights loaded, and the metadata; meta["config"] is the
    typed config and meta["file"] the file it came from."""
    path, state, meta = read_any(checkpoint, task)
    if not isinstance(meta.get("config"), dict):
        raise LbdlError(f"{path}: incomplete {task} metadata (no model config)")
    config = config_from_dict(config_type, meta["config"], path)
    try:
        model = build(config)
        model.load_state_dict(state)
    except (KeyError, TypeError) as error:
        raise LbdlError(f"{path}: incomplete {task} metadata ({error})") from None
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"{path}: weights do not match the model config ({first})") from None
    return model, {**meta, "config": config, "file": str(path)}
