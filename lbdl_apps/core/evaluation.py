"""The one meaning of `evaluate --split` (DESIGN.md) in every supervised app."""

from __future__ import annotations

from collections.abc import Sized

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
