"""The user's pages: README.md stays a first page (<= 12 KB), every relative link and image
of README.md and docs/ exists, and the benchmark figures in them are those of
bench/results/*.json (bench/report.py --check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
APPS = ["classify", "denoise", "segment", "detect", "asr", "clip", "dqn", "diffusion"]


def test_readme_is_a_first_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert "pip install -e . && lbdl tour" in text
    assert 'pip install -e ".[test]" && pytest -q' in text
    for app in APPS:
        assert f"(docs/{app}.md)" in text, app


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_images_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: {target}"


def test_every_app_has_its_page() -> None:
    for app in APPS:
        text = (ROOT / "docs" / f"{app}.md").read_text()
        for section in ("## Usage", "## Python API", "## Benchmark"):
            assert section in text, f"{app}.md: {section}"


def test_benchmark_figures_come_from_the_results() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "report.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
