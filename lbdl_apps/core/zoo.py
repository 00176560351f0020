"""The pretrained models of the field, by name (DESIGN.md, `lbdl models`). An entry says
where its publisher keeps the weights (URL, sha256, size, license) and how they become an
lbdl checkpoint; `lbdl models pull NAME` downloads them (resuming a cut download, checking
the sha256), converts and caches the result under $LBDL_HOME (default ~/.cache/lbdl). Every
verb that takes a checkpoint takes a name too, and a local file in a publisher's format,
recognised by its contents. Offline, a name not yet cached is one line saying where the
file can be put by hand. Apps register their entries in their zoo.py; this module imports
no app (and no torch)."""

from __future__ import annotations

import hashlib
import importlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError, report

CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class Source:
    """One file of a publisher: where it is, what it must hash to, what it is called."""

    url: str
    sha256: str  # the published digest, or its prefix (torchvision's file names hold one)
    size: int  # bytes (0: not published; the server's Content-Length then)
    file: str  # the publisher's own file name (as its tools cache it)


@dataclass(frozen=True)
class Pretrained:
    """A named pretrained model: its task, its publisher's files and license, and the
    converter ("module:function", imported when used) that turns the files into an lbdl
    checkpoint: `convert(files: list[Path]) -> (state_dict, metadata)`. `look_in` are the
    folders where the publisher's own tools cache the files (used as they are)."""

    name: str
    task: str
    sources: tuple[Source, ...]
    license: str
    description: str
    convert: str
    look_in: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes to download; 0 when a source's size is not known."""
        sizes = [s.size for s in self.sources]
        return sum(sizes) if all(sizes) else 0


@dataclass(frozen=True)
class PublisherFormat:
    """A local file (or folder) in a publisher's own format, recognised by its contents:
    `matches(path)` looks at keys and shapes, `convert(path)` gives (state_dict, metadata)."""

    name: str
    task: str
    matches: Callable[[Path], bool]
    convert: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]


REGISTRY: dict[str, Pretrained] = {}
FORMATS: list[PublisherFormat] = []


def register(entry: Pretrained) -> Pretrained:
    """Add a named model (an app's zoo.py does it when imported)."""
    REGISTRY[entry.name] = entry
    return entry


def register_format(entry: PublisherFormat) -> PublisherFormat:
    FORMATS.append(entry)
    return entry


def load_registries() -> None:
    """Import every app's zoo.py, so that all names are known (lbdl models, a name given
    to a verb)."""
    import pkgutil

    import lbdl_apps

    for module in pkgutil.iter_modules(lbdl_apps.__path__):
        if module.ispkg and module.name != "core":
            try:
                importlib.import_module(f"lbdl_apps.{module.name}.zoo")
            except ModuleNotFoundError as error:
                if error.name != f"lbdl_apps.{module.name}.zoo":
                    raise


def home() -> Path:
    """$LBDL_HOME, default ~/.cache/lbdl: models/ holds converted checkpoints, downloads/
    the publishers' files."""
    return Path(os.environ.get("LBDL_HOME") or Path.home() / ".cache" / "lbdl").expanduser()


def looks_like_name(text: str) -> bool:
    """Whether a CHECKPOINT argument is a registry name (`coco:ssd300`), not a path."""
    return ":" in text and not Path(text).exists() and "/" not in text.split(":", 1)[0]


def find(name: str, task: str | None = None) -> Pretrained:
    """The entry of `name`; an LbdlError naming the known ones of the task otherwise."""
    load_registries()
    entry = REGISTRY.get(name)
    if entry is None:
        known = sorted(n for n, e in REGISTRY.items() if task is None or e.task == task)
        raise LbdlError(f"{name}: not a known model name (lbdl models lists them: "
                        f"{', '.join(known[:12]) or 'none'})")  # fmt: skip
    if task is not None and entry.task != task:
        raise LbdlError(f"{name}: is a {entry.task} model, not a {task} one")
    return entry


def converted_path(entry: Pretrained) -> Path:
    return home() / "models" / f"{entry.name.replace(':', '--')}.safetensors"


def is_cached(entry: Pretrained) -> bool:
    return converted_path(entry).is_file()


def ensure(name: str, task: str | None = None, pull: bool = True) -> Path:
    """The lbdl checkpoint of a named model: cached, or made from the publisher's files
    (found in a cache, or downloaded when `pull` and a network is there)."""
    entry = find(name, task)
    path = converted_path(entry)
    if path.is_file():
        return path
    files = [fetch(entry, source, pull) for source in entry.sources]
    from lbdl_apps.core.checkpoint import save_checkpoint  # torch, only now

    module, function = entry.convert.split(":")
    state, meta = getattr(importlib.import_module(module), function)(files)
    save_checkpoint(path, state, {**meta, "source": entry.name, "license": entry.license})
    return path


def fetch(entry: Pretrained, source: Source, pull: bool = True) -> Path:
    """The local copy of one publisher file: in lbdl's downloads, in a folder where the
    publisher's tools keep it, or downloaded now."""
    target = home() / "downloads" / source.file
    if target.is_file():
        return target
    for folder in entry.look_in:
        found = Path(folder).expanduser() / source.file
        if found.is_file():
            return found
    if not pull:
        raise LbdlError(f"{entry.name}: not downloaded ({target} is missing)")
    download(entry, source, target)
    return target


def download(entry: Pretrained, source: Source, target: Path) -> None:
    """Download `source` to `target`: into target.part (kept when the connection is cut,
    and continued from there next time), then checked against its sha256 and renamed.
    A wrong checksum deletes the file and says so."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(source.url, headers={"User-Agent": "lbdl"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resumed = done and response.status == 206
            length = int(response.headers["Content-Length"] or 0)
            size = source.size or (done if resumed else 0) + length
            _copy(response, part, done if resumed else 0, size, entry.name)
    except urllib.error.HTTPError as error:
        if not (error.code == 416 and done == source.size):  # 416 for a whole file: check it
            answer = f"{error.code} {error.reason}"
            raise LbdlError(f"{entry.name}: {source.url} answered {answer}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        if part.exists() and part.stat().st_size:
            raise LbdlError(
                f"{entry.name}: the download of {source.url} was cut ({reason}); "
                f"{part.stat().st_size} of {source.size} bytes are kept: pull again to resume"
            ) from None
        part.unlink(missing_ok=True)
        raise LbdlError(
            f"{entry.name}: {source.url} cannot be reached ({reason}); with a network, "
            f"`lbdl models pull {entry.name}` fetches it, or put {source.file} in {target.parent}"
        ) from None
    _check(entry, source, part)
    part.replace(target)


def _copy(response: Any, part: Path, start: int, size: int, name: str) -> None:
    """Append the response's body to `part` (from byte `start`), with a progress bar."""
    from lbdl_apps.core.progress import add_task, progress_bar

    with open(part, "ab" if start else "wb") as handle, progress_bar(unit="bytes") as bar:
        task = add_task(bar, f"pull {name}", size, start)
        got = start
        while chunk := response.read(CHUNK):
            handle.write(chunk)
            got += len(chunk)
            bar.update(task, completed=got, refresh=True)
    if got < size:
        raise ConnectionError(f"the connection was cut after {got} of {size} bytes")


def _check(entry: Pretrained, source: Source, part: Path) -> None:
    if not source.sha256:
        report(f"warning: {entry.name}: no sha256 is published for {source.file}; not checked")
        return
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    if not digest.hexdigest().startswith(source.sha256):
        part.unlink()
        raise LbdlError(
            f"{entry.name}: {source.file} does not have the published sha256 (got "
            f"{digest.hexdigest()[:12]}..., expected {source.sha256[:12]}...); the download "
            "is deleted, try again"
        )


def publisher_format(path: Path, task: str) -> PublisherFormat | None:
    """The publisher format of the task that recognises `path` by its contents, if any."""
    load_registries()
    for candidate in FORMATS:
        if candidate.task == task and candidate.matches(path):
            return candidate
    return None
