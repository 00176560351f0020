"""Checkpoint files: round trip, atomic writes, clear rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lbdl_apps.core.checkpoint import (
    FORMAT_VERSION,
    atomic_path,
    load_state,
    read_checkpoint,
    save_checkpoint,
    save_state,
)
from lbdl_apps.core.errors import LbdlError

META = {"task": "classify", "config": {"width": 8}, "labels": ["cat", "dog"]}


def weights() -> dict[str, torch.Tensor]:
    shared = torch.randn(4, 3)
    return {"a": shared, "tied": shared, "t": torch.randn(3, 4).t(), "b": torch.arange(3)}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    sd = weights()
    save_checkpoint(path, sd, META)
    tensors, meta = read_checkpoint(path, task="classify")
    assert meta == {"format_version": FORMAT_VERSION, **META}
    assert tensors.keys() == sd.keys()
    assert all(torch.equal(tensors[k], sd[k]) for k in sd)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, META)
    with pytest.raises(TypeError):
        save_checkpoint(path, {"w": torch.zeros(2)}, {**META, "bad": object()})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")
    tensors, _ = read_checkpoint(path)
    assert torch.equal(tensors["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _write_png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (None, "no such file"),
        (lambda p: p.write_bytes(p.with_name("good.safetensors").read_bytes()[:-20]), "truncated"),
        (_write_png, "not a safetensors file"),
        (lambda p: p.write_text("hello, I am text"), "not a safetensors file"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
    ids=["missing", "truncated", "png", "text", "folder"],
)
def test_unreadable_files(tmp_path: Path, make, problem: str) -> None:
    save_checkpoint(tmp_path / "good.safetensors", {"w": torch.randn(64)}, META)
    path = tmp_path / "bad.safetensors"
    if make is not None:
        make(path)
    with pytest.raises(LbdlError, match=problem) as err:
        read_checkpoint(path)
    assert "bad.safetensors" in str(err.value)
    assert "\n" not in str(err.value)


def test_other_task_and_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "det.safetensors"
    save_checkpoint(path, {"w": torch.ones(1)}, {"task": "detect"})
    with pytest.raises(
        LbdlError, match=r"det.safetensors: is a 'detect' checkpoint, not a 'classify'"
    ):
        read_checkpoint(path, task="classify")
    save_checkpoint(path, {"w": torch.ones(1)}, {"task": "detect", "format_version": 7})
    with pytest.raises(LbdlError, match=r"det.safetensors: checkpoint format 7 is newer .*upgrade"):
        read_checkpoint(path)


def test_safetensors_without_lbdl_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(1)}, str(path))
    with pytest.raises(LbdlError, match=r"plain.safetensors: .*without lbdl metadata"):
        read_checkpoint(path)


def test_state_round_trip_and_errors(tmp_path: Path) -> None:
    state = {"model": {"w": torch.ones(2)}, "step": 3, "rng": (3, (1, 2), None)}
    save_state(tmp_path / "state.pt", state)
    loaded = load_state(tmp_path / "state.pt")
    assert loaded["step"] == 3 and loaded["rng"] == (3, (1, 2), None)
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(LbdlError, match=r"junk.pt: unreadable"):
        load_state(tmp_path / "junk.pt")
    with pytest.raises(LbdlError, match=r"none.pt: no such file"):
        load_state(tmp_path / "none.pt")
