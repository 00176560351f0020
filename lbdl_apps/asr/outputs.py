"""Transcripts written as plain text, JSON, SubRip (.srt) and WebVTT (.vtt) subtitles."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lbdl_apps.asr.api import Transcript
from lbdl_apps.core.outputs import OutputNames, atomic_path, json_text

FORMATS = ("txt", "json", "srt", "vtt")


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SubRip, separator ",") or HH:MM:SS.mmm (WebVTT, ".")."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    cues = [s for s in transcript.segments if s.text]
    return "".join(
        f"{n}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text}\n\n"
        for n, s in enumerate(cues, 1)
    )


def to_vtt(transcript: Transcript) -> str:
    cues = [s for s in transcript.segments if s.text]
    body = "".join(
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n\n" for s in cues
    )
    return f"WEBVTT\n\n{body}"


def render(transcript: Transcript, kind: str) -> str:
    if kind == "txt":
        return transcript.text + "\n"
    if kind == "json":
        return json_text(asdict(transcript), indent=1) + "\n"
    return to_srt(transcript) if kind == "srt" else to_vtt(transcript)


def write_transcripts(
    transcripts: list[Transcript], folder: Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """One file per transcript and format, named after the audio file (a.wav -> a.txt ...);
    files of the same name in different folders get numbered (a_2.txt). Written atomically."""
    written = []
    names = OutputNames()
    for transcript in transcripts:
        name = names(transcript.path)
        for kind in formats:
            path = folder / f"{name}.{kind}"
            with atomic_path(path) as tmp:
                tmp.write_text(render(transcript, kind), encoding="utf-8")
            written.append(path)
    return written
