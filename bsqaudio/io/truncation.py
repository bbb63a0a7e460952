"""Telling a cut file from a complete one: the frame count a file's header declares, and the
container-level signs of truncation (a RIFF/AIFF chunk or an Ogg page that runs past the end)
that libsndfile reads past without a word."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import soundfile as sf


def declared_frames(handle: sf.SoundFile, raw: BinaryIO | Path) -> int:
    """The frames a complete file would give, 0 where no count can be trusted: libsndfile's,
    which is the header's for FLAC and for MP3 with a Xing/Info/VBRI header (without one, the
    count is estimated from the file's size), and is what is readable for WAV, AIFF and Ogg,
    whose truncation ``_truncation_at_open`` finds."""
    frames = int(handle.frames)
    if not 0 < frames < 2**62:  # libsndfile's unknown length is SF_COUNT_MAX
        return 0
    if handle.format == "MP3":
        with _peek(raw) as f:
            if f is None or not _mp3_counts_frames(f):
                return 0
    return frames


def tolerance(handle: sf.SoundFile) -> int:
    """Frames a complete file may fall short of its declared count: one MPEG frame for MP3."""
    return 1152 if handle.format == "MP3" else 0


@contextlib.contextmanager
def _peek(raw: BinaryIO | Path) -> Iterator[BinaryIO | None]:
    """The file's bytes for a header check: a path opened, or a seekable stream put back where
    libsndfile left it afterwards; None for a stream that cannot seek."""
    if isinstance(raw, Path):
        with open(raw, "rb") as f:
            yield f
        return
    if not raw.seekable():
        yield None
        return
    position = raw.tell()
    try:
        yield raw
    finally:
        raw.seek(position)


def truncation_at_open(handle: sf.SoundFile, raw: BinaryIO | Path) -> str | None:
    """What the container says is missing, for formats whose header declares more than
    libsndfile will read: libsndfile quietly takes a WAV's or AIFF's length from the file's size,
    and an Ogg file's from its last page, so a cut file reads as a shorter, complete one."""
    check = {"WAV": _wav_truncation, "WAVEX": _wav_truncation, "AIFF": _aiff_truncation,
             "OGG": _ogg_truncation}.get(handle.format)
    if check is None:
        return None
    with _peek(raw) as f:
        return None if f is None else check(f, handle)


def _chunks(f: BinaryIO, byteorder: str) -> Iterator[tuple[bytes, int, int]]:
    """(kind, offset, length) of the chunks after a 12-byte RIFF/FORM header, at most 64 (a bound,
    not a walk over a crafted file), with ``f`` left at each chunk's data. WAV sizes are
    little-endian, AIFF sizes big-endian; both pad chunks to even lengths."""
    position = 12
    for _ in range(64):
        f.seek(position)
        header = f.read(8)
        if len(header) < 8:
            return
        length = int.from_bytes(header[4:], byteorder)
        yield header[:4], position, length
        position += 8 + length + (length & 1)


def _wav_truncation(f: BinaryIO, handle: sf.SoundFile) -> str | None:
    """A RIFF WAVE data chunk longer than the bytes after it. Sizes 0 and 0xFFFFFFFF (and from
    0x7FFFF000) are what writers to a pipe put there: an unknown length, not a truncation."""
    f.seek(0)
    head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    size, byte_rate, align = f.seek(0, os.SEEK_END), 0, 1
    for kind, position, length in _chunks(f, "little"):
        if kind == b"fmt ":
            fmt = f.read(14)
            if len(fmt) == 14:
                byte_rate, align = int.from_bytes(fmt[8:12], "little"), max(1, int.from_bytes(fmt[12:], "little"))
        elif kind == b"data":
            missing = position + 8 + length - size
            if length == 0 or length >= 0x7FFFF000 or missing < align or not byte_rate:
                return None
            return (f"truncated: header declares {length / byte_rate:.2f} s, only "
                    f"{handle.frames / handle.samplerate:.2f} s readable")
    return None


def _aiff_truncation(f: BinaryIO, handle: sf.SoundFile) -> str | None:
    """An AIFF whose COMM chunk declares more frames than its sound data holds."""
    f.seek(0)
    head = f.read(12)
    if head[:4] != b"FORM" or head[8:12] not in (b"AIFF", b"AIFC"):
        return None
    for kind, _, _ in _chunks(f, "big"):
        if kind == b"COMM":
            comm = f.read(6)
            declared = int.from_bytes(comm[2:6], "big") if len(comm) == 6 else 0
            if declared <= handle.frames:
                return None
            return (f"truncated: header declares {declared / handle.samplerate:.2f} s, only "
                    f"{handle.frames / handle.samplerate:.2f} s readable")
    return None


OGG_PAGE_MAX = 27 + 255 + 255 * 255  # header, 255 lacing values, 255 segments of 255 bytes


def _ogg_truncation(f: BinaryIO, handle: sf.SoundFile) -> str | None:
    """An Ogg file is complete when a whole page ends it with the end-of-stream flag set."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - OGG_PAGE_MAX))
    tail = f.read(OGG_PAGE_MAX)
    start = tail.rfind(b"OggS")
    while start >= 0:  # "OggS" may occur inside a packet: the real last page is the one ending the file
        segments = tail[start + 26] if start + 27 <= len(tail) else 0
        lacing = tail[start + 27: start + 27 + segments]
        if tail[start + 4: start + 5] == b"\0" and start + 27 + segments + sum(lacing) == len(tail):
            if tail[start + 5] & 4:
                return None
            break
        start = tail.rfind(b"OggS", 0, start)
    return (f"truncated: the Ogg stream stops before its end-of-stream page, only "
            f"{handle.frames / handle.samplerate:.2f} s readable")


def _mp3_counts_frames(f: BinaryIO) -> bool:
    """Whether an MP3's first frame carries a frame count (a Xing, Info or VBRI header, which
    encoders write at its start), after an ID3v2 tag if there is one."""
    f.seek(0)
    head = f.read(10)
    start = 0
    if len(head) == 10 and head[:3] == b"ID3":
        start = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) + (10 if head[5] & 0x10 else 0)
    f.seek(start)
    first = f.read(4096)
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))
