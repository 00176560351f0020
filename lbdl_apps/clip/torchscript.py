"""The tensors of a TorchScript archive (the .pt files OpenAI released CLIP as, book 6.6),
read without running any of its code: `torch.jit.load` would compile and run the archive's
TorchScript, `torch.load(weights_only=True)` refuses such archives. Here the archive's
data.pkl is unpickled with only tensors, containers and numbers allowed; a module is a bag
of attributes, its tensors named by their path (`visual.conv1.weight`), as `state_dict()`
names them. Anything else in the pickle is refused, never imported."""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lbdl_apps.core.errors import LbdlError

# TODO(core): checkpoint.load_torchscript_tensors(path, what) -> dict[str, Tensor]: the
# same safe reading for any app whose publisher ships TorchScript archives.

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptObject:
    """A TorchScript object (a module): nothing but the attributes the pickle gives it."""


def _rebuild(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    """torch._utils._rebuild_tensor_v2, on a flat tensor standing for the storage."""
    return storage.as_strided(size, stride, offset)


def _shape_only(dtype: torch.dtype, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    """A tensor of the right shape and dtype, without data (for looking at keys)."""
    return torch.empty(size, dtype=dtype, device="meta")


def _first(value: Any, *_: Any) -> Any:
    """torch.jit._pickle.restore_type_tag and the build_*list helpers: the value itself."""
    return value


class _Unpickler(pickle.Unpickler):
    """data.pkl of a TorchScript archive, with a fixed list of allowed globals."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, load: bool) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.with_data = archive, root, load

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return ScriptObject
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild if self.with_data else _shape_only
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and (name == "restore_type_tag" or "build_" in name):
            return _first
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if not self.with_data:
            return dtype
        data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return flat[:numel]


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip with code beside its data.pkl."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in name for name in names) and any(n.endswith("/data.pkl") for n in names)


def read_torchscript(path: Path, load: bool = True) -> dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive by name (with `load` False, shapes
    and dtypes only, on the meta device); one LbdlError naming the file for anything that is
    not tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise LbdlError(f"{path}: a zip file without data.pkl, not a TorchScript archive")
            root = pickles[0].split("/")[0]
            order = f"{root}/byteorder"
            if order in names and archive.read(order).strip() not in (b"", b"little"):
                raise LbdlError(f"{path}: a big-endian TorchScript archive")
            obj = _Unpickler(archive.read(pickles[0]), archive, root, load).load()
    except pickle.UnpicklingError as error:
        raise LbdlError(
            f"{path}: a TorchScript archive holding Python objects beyond tensors ({error}), "
            "which lbdl never loads"
        ) from None
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as error:
        reason = f"truncated or corrupt: {type(error).__name__}"
        raise LbdlError(f"{path}: unreadable TorchScript archive ({reason})") from None
    tensors: dict[str, Tensor] = {}
    _collect(obj, "", tensors)
    return tensors


def _collect(obj: Any, prefix: str, out: dict[str, Tensor]) -> None:
    """The tensors among the attributes of `obj` and of its sub-objects, by dotted path."""
    for name, value in vars(obj).items() if isinstance(obj, ScriptObject) else ():
        if isinstance(value, Tensor):
            out[prefix + name] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{name}.", out)
