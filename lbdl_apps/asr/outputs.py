"""Transcripts written as plain text, JSON, SubRip (.srt) and WebVTT (.vtt) subtitles."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lbdl_apps.asr.api import Transcript, Word
from lbdl_apps.core.outputs import OutputNames, atomic_path, json_text

FORMATS = ("txt", "json", "srt", "vtt")


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SubRip, separator ",") or HH:MM:SS.mmm (WebVTT, ".")."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def cues(transcript: Transcript) -> list[tuple[float, float, str, list[Word]]]:
    """The subtitle cues: one per segment with text, from its first word's start to its last
    word's end when it has words (openai-whisper's writers), with its words."""
    found = []
    for s in transcript.segments:
        text = s.text.strip().replace("-->", "->")
        if not text:
            continue
        words = [w for w in s.words or [] if w.word.strip()]
        start, end = (words[0].start, words[-1].end) if words else (s.start, s.end)
        found.append((start, end, text, words))
    return found


def to_srt(transcript: Transcript) -> str:
    return "".join(
        f"{n}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n\n"
        for n, (start, end, text, _) in enumerate(cues(transcript), 1)
    )


def karaoke(words: list[Word]) -> str:
    """A cue's words with WebVTT cue timestamps: each word after the first preceded by
    <hh:mm:ss.mmm>, its start."""
    parts = [words[0].word.strip()]
    for w in words[1:]:
        space = " " if w.word.startswith(" ") else ""
        parts.append(f"{space}<{timestamp(w.start, '.')}>{w.word.strip()}")
    return "".join(parts).replace("-->", "->")


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: one cue per segment; with word timestamps, each word's start inside it."""
    body = "".join(
        f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n"
        f"{karaoke(words) if words else text}\n\n"
        for start, end, text, words in cues(transcript)
    )
    return f"WEBVTT\n\n{body}"


def render(transcript: Transcript, kind: str) -> str:
    if kind == "txt":
        return transcript.text + "\n"
    if kind == "json":
        record = asdict(transcript)
        for segment in record["segments"]:
            if segment.get("words") is None:
                segment.pop("words", None)  # no word timestamps asked for
        return json_text(record, indent=1) + "\n"
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
