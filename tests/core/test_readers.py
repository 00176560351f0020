"""The registry of dataset readers and the bad-record rule every app applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbdl_apps.core.bad_records import bad_record_rule
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers


def test_readers_are_found_by_contents_or_by_name(tmp_path: Path) -> None:
    readers: Readers = Readers("toy data")

    @readers.register("csv", "a .csv file", lambda p: p.suffix == ".csv")
    def read_csv(path: Path) -> str:
        return f"csv {path.name}"

    @readers.register("folder", "a folder", Path.is_dir)
    def read_folder(path: Path) -> str:
        return f"folder {path.name}"

    (tmp_path / "a.csv").write_text("")
    assert readers.find(tmp_path / "a.csv").read(tmp_path / "a.csv") == "csv a.csv"
    assert readers.find(tmp_path).name == "folder"
    assert readers.find(tmp_path, "csv").name == "csv"
    assert readers.names == ["csv", "folder"]
    with pytest.raises(LbdlError, match=r"--format xml: choose one of csv, folder"):
        readers.find(tmp_path, "xml")
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(
        LbdlError, match=r"a\.txt: not toy data .*csv: a \.csv file; folder: a folder"
    ):
        readers.find(tmp_path / "a.txt")


def test_bad_records_are_an_error_unless_skipped(capsys) -> None:
    bad = [("a.png", "truncated"), ("b.png", "empty")]
    with pytest.raises(
        LbdlError, match=r"2 bad records, first: a\.png: truncated \(add --skip-bad"
    ):
        bad_record_rule(bad, 10, skip_bad=False)
    with pytest.raises(LbdlError, match=r"^1 bad record, first"):
        bad_record_rule(bad[:1], 10, skip_bad=False)
    bad_record_rule(bad, 10, skip_bad=True)
    err = capsys.readouterr().err
    assert "skipping bad record b.png: empty" in err and "skipped 2 bad records of 10" in err
    bad_record_rule([], 10, skip_bad=False)
