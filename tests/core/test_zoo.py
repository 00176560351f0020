"""The model registry's download path, for real: a local HTTP server on 127.0.0.1 serves a
weight file; `lbdl models pull` fetches, converts and caches it, resumes a cut download,
refuses a wrong sha256, reports a 404 and a missing network in one line, and leaves nothing
half written in the cache."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lbdl_apps.cli import app
from lbdl_apps.core import zoo
from lbdl_apps.core.checkpoint import read_checkpoint
from tests.cli_helpers import assert_user_error

PAYLOAD_TENSORS = {"weight": torch.arange(200_000, dtype=torch.float32)}


def convert_tiny(files: list[Path]) -> tuple[dict, dict]:
    """The toy publisher format: a safetensors file whose tensor is renamed."""
    state = load_file(files[0])
    return {"linear.weight": state["weight"]}, {"task": "toy", "config": {"n": 200_000}}


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves the files of `root` with Range requests; `cut` sends half a file once."""

    root: Path
    cut: list[bool]
    ranges: list[str | None]

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        body = path.read_bytes()
        start = 0
        self.ranges.append(self.headers.get("Range"))
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.cut and self.cut.pop():
            self.wfile.write(body[start : start + len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, type[Handler]]]:
    root = tmp_path / "www"
    root.mkdir()
    save_file(PAYLOAD_TENSORS, str(root / "tiny.safetensors"))
    handler = type("H", (Handler,), {"root": root, "cut": [], "ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))


def entry(url: str, file: Path, name: str = "test:tiny", sha: str | None = None) -> zoo.Pretrained:
    data = file.read_bytes()
    source = zoo.Source(url, sha or hashlib.sha256(data).hexdigest(), len(data), "tiny.safetensors")
    return zoo.register(
        zoo.Pretrained(name, "toy", (source,), "MIT", "a toy", "tests.core.test_zoo:convert_tiny")
    )


def pull(name: str) -> object:
    return CliRunner().invoke(app, ["models", "pull", name])


def cache_files(tmp_path: Path) -> list[str]:
    found = (tmp_path / "home").rglob("*")
    return sorted(str(p.relative_to(tmp_path / "home")) for p in found if p.is_file())


def test_pull_converts_and_caches(tmp_path: Path, server) -> None:
    url, _ = server
    entry(f"{url}/tiny.safetensors", tmp_path / "www" / "tiny.safetensors")
    result = pull("test:tiny")
    assert result.exit_code == 0, result.output
    state, meta = read_checkpoint(zoo.converted_path(zoo.REGISTRY["test:tiny"]), task="toy")
    assert torch.equal(state["linear.weight"], PAYLOAD_TENSORS["weight"])
    assert (meta["source"], meta["license"]) == ("test:tiny", "MIT")
    listing = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["models"]).output
    row = next(line for line in listing.splitlines() if "test:tiny" in line)
    assert "toy" in row and "yes" in row and "MIT" in row


def test_a_cut_download_is_resumed(tmp_path: Path, server) -> None:
    url, handler = server
    entry(f"{url}/tiny.safetensors", tmp_path / "www" / "tiny.safetensors")
    handler.cut.append(True)
    line = assert_user_error(pull("test:tiny"), "test:tiny", "was cut", "pull again to resume")
    assert "of 800" in line
    assert cache_files(tmp_path) == ["downloads/tiny.safetensors.part"]
    assert pull("test:tiny").exit_code == 0
    assert handler.ranges[-1] and handler.ranges[-1].startswith("bytes=")  # continued, not again
    assert cache_files(tmp_path) == ["downloads/tiny.safetensors", "models/test--tiny.safetensors"]


def test_a_wrong_sha256_deletes_the_download(tmp_path: Path, server) -> None:
    url, _ = server
    entry(f"{url}/tiny.safetensors", tmp_path / "www" / "tiny.safetensors", "test:bad", "0" * 64)
    assert_user_error(pull("test:bad"), "does not have the published sha256", "deleted")
    assert cache_files(tmp_path) == []


def test_404_and_no_network_are_one_line(tmp_path: Path, server) -> None:
    url, _ = server
    entry(f"{url}/missing.safetensors", tmp_path / "www" / "tiny.safetensors", "test:gone")
    assert_user_error(pull("test:gone"), "test:gone", "404")
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    entry(f"http://127.0.0.1:{port}/tiny.safetensors", tmp_path / "www" / "tiny.safetensors",
          "test:offline")  # fmt: skip
    line = assert_user_error(pull("test:offline"), "cannot be reached", "lbdl models pull")
    assert str(tmp_path / "home" / "downloads") in line and "tiny.safetensors" in line
    assert cache_files(tmp_path) == []


def test_a_file_put_by_hand_is_used_offline(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    save_file(PAYLOAD_TENSORS, str(www / "tiny.safetensors"))
    entry("http://127.0.0.1:9/tiny.safetensors", www / "tiny.safetensors", "test:byhand")
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "tiny.safetensors").write_bytes((www / "tiny.safetensors").read_bytes())
    assert pull("test:byhand").exit_code == 0


def test_unknown_names_and_tasks(tmp_path: Path) -> None:
    entry("http://127.0.0.1:9/x", _toy_file(tmp_path), "test:named")
    assert_user_error(pull("nope:model"), "nope:model", "not a known model name")
    with pytest.raises(Exception, match="is a toy model, not a classify one"):
        zoo.find("test:named", task="classify")


def _toy_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.safetensors"
    save_file(PAYLOAD_TENSORS, str(path))
    return path
