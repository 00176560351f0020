"""The rule for bad training records (DESIGN.md): the training set is all the model learns
from, so it is never silently altered. A bad record (corrupt image, box outside the image,
missing annotation, unreadable audio) is an error naming the first one and the count, unless
--skip-bad, which warns for each and trains on the rest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lbdl_apps.core.errors import LbdlError, report


def bad_record_rule(bad: Sequence[tuple[Path | str, str]], total: int, skip_bad: bool) -> None:
    """Apply the rule to the (record, reason) pairs found bad among `total` records."""
    if not bad:
        return
    if not skip_bad:
        path, reason = bad[0]
        noun = "record" if len(bad) == 1 else "records"
        raise LbdlError(
            f"{len(bad)} bad {noun}, first: {path}: {reason} (add --skip-bad to train on the rest)"
        )
    for path, reason in bad:
        report(f"warning: skipping bad record {path}: {reason}")
    report(f"warning: skipped {len(bad)} bad records of {total}")
