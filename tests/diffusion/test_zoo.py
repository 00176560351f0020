"""Names in `lbdl diffusion` (issue 26): the diffusion app has no pretrained model of its own
(google/ddpm-cifar10-32's U-Net is not the core U-Net's layout: docs/diffusion.md), so a name
is looked up in the registry like everywhere, and one of another task is refused in one line;
a clip model by name conditions nothing here but can be given to --clip (tests/clip)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import assert_user_error, lbdl


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))


def test_names_are_resolved_and_checked(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    assert_user_error(lbdl("diffusion", "sample", "google:ddpm-cifar10-32", "--out", out),
                      "google:ddpm-cifar10-32", "not a known model name")  # fmt: skip
    assert_user_error(lbdl("diffusion", "sample", "cleanrl:Pong", "--out", out),
                      "cleanrl:Pong", "is a dqn model, not a diffusion one")  # fmt: skip
    assert not out.exists() and not (tmp_path / "home" / "models").exists()
