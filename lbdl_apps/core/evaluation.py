"""What every `evaluate` verb shares (DESIGN.md): which split `--split` means, where the
results go, and metrics.json."""

from __future__ import annotations

import json
import math
from collections.abc import Sized
from pathlib import Path
from typing import Any

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import SPLITS

HELD_OUT = ("test", "val")


def split_names(
    requested: str | None, data_given: bool, splits: dict[str, Sized | None], source: str
) -> list[str]:
    """The splits `evaluate --split` scores, out of the non-empty ones in `splits` (train,
    val, test): `all` is every one; no --split means, with --data, its test split if it has
    one, else its val split, else all of it, and without --data (the checkpoint's own data)
    its test split if there is one, else its val split. A split the data lacks is an error."""
    present = [name for name in SPLITS[1:] if splits.get(name) is not None and len(splits[name])]
    if not present:
        raise LbdlError(f"{source}: has nothing to evaluate")
    if requested == "all":
        return present
    if requested is None:
        held = [name for name in HELD_OUT if name in present]
        if held:
            return held[:1]
        if data_given:
            return present
        raise LbdlError(f"{source}: has no held-out split to evaluate (pass --split all)")
    if requested not in present:
        raise LbdlError(
            f"--split {requested}: {source} has no {requested} split (it has {', '.join(present)})"
        )
    return [requested]


def split_label(names: list[str], splits: dict[str, Sized | None]) -> str:
    """What metrics.json records as the split: "all" when `names` are every non-empty split
    of `splits` (a folder without splits of its own, evaluated whole, is "all"), else the
    one split's name."""
    present = [name for name in SPLITS[1:] if splits.get(name) is not None and len(splits[name])]
    return "all" if names == present else names[0]


def output_folder(checkpoint: str | Path, out: Path | None, verb: str = "evaluate") -> Path:
    """--out, or `verb`/ in the checkpoint's run folder; created."""
    path = Path(checkpoint)
    run = path if path.is_dir() else path.resolve().parent
    folder = out if out is not None else run / verb
    if folder.exists() and not folder.is_dir():
        raise LbdlError(f"--out {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def finite(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None, so that the JSON is valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, content: dict[str, Any]) -> Path:
    """Write `content` as strict JSON (no NaN), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite(content), indent=2, allow_nan=False, default=str) + "\n")
    return path
