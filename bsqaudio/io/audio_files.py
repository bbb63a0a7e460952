"""Reading, streaming and writing audio files, with their error messages.

Reading: anything libsndfile reads, any rate, any channel count; downmixed to mono and resampled
to the model's rate block by block, so memory stays flat whatever the file's length. A file that
holds less audio than its header declares is an error unless the caller allows it. Writing is
atomic: a temporary renamed into place, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import io
import math
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from bsqaudio.dsp.resample import resample_stream
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import atomic_path, write_bytes_atomic
from bsqaudio.io.truncation import declared_frames, tolerance, truncation_at_open

# Longest stdin input read (into memory: libsndfile needs to seek, a pipe cannot); files given by
# path are read block by block and have no limit.
STDIN_LIMIT_BYTES = 4 * 2**30

# Samples past this (80 dB above full scale) are refused: no recording is that loud, they are
# integer PCM stored as float (peak 32767), a mis-scaled export, or float32-max values that
# overflow the mel power to infinity. Below it the per-window gain codes any level (float WAVs
# past +-1 encode; the decoder writes them clipped).
MAX_ABS_SAMPLE = 1e4

# Input and output rates outside this range are refused: a header may claim any rate, and
# resampling 1 s of 16 kHz audio labelled 1 Hz gave 256 million samples (4.4 hours to encode)
# and a 248 MiB filter.
MIN_RATE, MAX_RATE = 1000, 384000

# Read blocks hold at most this many samples (all channels): a header may claim up to 1024
# channels at any rate.
BLOCK_SAMPLES_MAX = 2**23


class TruncatedAudioError(BsqAudioError):
    """A file holds less audio than its header declares (a cut download or copy, a recorder that
    stopped): encoding the part would give a shorter token sequence without a word, so it is an
    error unless ``allow_truncated=True``."""


class TruncatedAudioWarning(UserWarning):
    """A truncated file was read with ``allow_truncated=True``: the message (one line, starting
    with the file's name) says what is missing; only the readable part was used."""


def read_audio(source: str | Path | BinaryIO, allow_truncated: bool = False) -> tuple[np.ndarray, int]:
    """Read a file (path, ``-`` for stdin, or a binary file object) -> ((C, T) float32, rate).
    Truncated files: see ``read_blocks``."""
    blocks, rate, _ = read_blocks(source, allow_truncated=allow_truncated)
    return np.ascontiguousarray(np.concatenate(list(blocks), axis=1)), rate


def open_audio(source: str | Path | BinaryIO) -> tuple[sf.SoundFile, str, BinaryIO | None]:
    """Open for block reading -> (handle, the name messages use, a file object holding stdin or
    the caller's stream, None for a path). Paths must be regular files; ``-`` is stdin."""
    raw = None
    if isinstance(source, (str, Path)) and str(source) == "-":
        name, raw = "<stdin>", _read_stdin()
    elif isinstance(source, (str, Path)):
        name = str(source)
        _check_readable(Path(source))
    else:
        name, raw = "<stream>", source
    try:
        return sf.SoundFile(raw if raw is not None else source), name, raw
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise BsqAudioError(f"{name}: not a readable audio file ({_short(err)})") from None


def _read_stdin() -> io.BytesIO:
    """All of stdin, up to ``STDIN_LIMIT_BYTES``, in pieces (one read of the limit would ask for
    the whole limit at once)."""
    buffer = io.BytesIO()
    while chunk := sys.stdin.buffer.read(1 << 20):
        buffer.write(chunk)
        if buffer.tell() > STDIN_LIMIT_BYTES:
            raise BsqAudioError(f"<stdin>: more than {STDIN_LIMIT_BYTES / 2**30:g} GiB of input; give the "
                                "file's path instead (files are read block by block)")
    if buffer.tell() == 0:
        raise BsqAudioError("<stdin>: empty input (nothing was piped in)")
    buffer.seek(0)
    return buffer


def sf_frames(source: str | Path) -> int:
    """The frame count libsndfile reports (exact for most formats, an estimate for some)."""
    try:
        return int(sf.info(str(source)).frames)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return 0


def read_blocks(source: str | Path | BinaryIO, block_seconds: float = 20.0, allow_truncated: bool = False,
                on_truncated: Callable[[str], None] | None = None
                ) -> tuple[Iterator[np.ndarray], int, int]:
    """Read block by block -> (iterator of (C, T_i) float32 blocks, rate, channels).

    Samples are checked (NaN or infinite, or past ``MAX_ABS_SAMPLE``: float64 files are checked
    before the conversion to float32, which would turn 1e300 into infinity). A truncated file
    (see ``truncation_at_open`` and the end of the loop below) raises ``TruncatedAudioError``;
    with ``allow_truncated`` its readable part is returned and the message goes to
    ``on_truncated``, or else is issued as a ``TruncatedAudioWarning``."""
    handle, name, raw = open_audio(source)
    rate, channels = int(handle.samplerate), int(handle.channels)
    if not MIN_RATE <= rate <= MAX_RATE:
        handle.close()
        raise BsqAudioError(f"{name}: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")

    def truncated(what: str) -> None:
        if not allow_truncated:
            raise TruncatedAudioError(f"{name}: {what} (--allow-truncated keeps the readable part)")
        message = f"{name}: {what}; only the readable part is used"
        if on_truncated is not None:
            on_truncated(message)
        else:
            warnings.warn(TruncatedAudioWarning(message), stacklevel=3)

    try:
        bytes_of = raw if raw is not None else Path(source)
        declared = declared_frames(handle, bytes_of)
        problem = truncation_at_open(handle, bytes_of)
        if problem is not None and handle.frames == 0:  # nothing to keep
            raise TruncatedAudioError(f"{name}: {problem}")
        if problem is not None:
            truncated(problem)
    except OSError as err:
        handle.close()
        raise BsqAudioError(f"{name}: cannot read ({err.strerror or err})") from None
    except BaseException:
        handle.close()
        raise
    dtype = "float64" if handle.subtype == "DOUBLE" else "float32"
    size = max(1, min(int(block_seconds * rate), BLOCK_SAMPLES_MAX // channels))

    def blocks() -> Iterator[np.ndarray]:
        total, problem = 0, None
        with handle:
            while True:
                out, before, failure = np.empty((size, channels), dtype), _position(handle), None
                try:
                    data = handle.read(size, dtype=dtype, always_2d=True, out=out)
                except (sf.LibsndfileError, RuntimeError) as err:
                    # The decoder stopped part-way (a cut FLAC loses sync): keep what it decoded.
                    data, failure = out[: min(max(0, _position(handle) - before), size)], _short(err)
                if failure is not None:
                    at = (total + data.shape[0]) / rate
                    if not declared:  # no length to tell a cut from a bad file by
                        raise BsqAudioError(f"{name}: unreadable audio data at {at:.2f} s ({failure})")
                    if total + data.shape[0] < declared:
                        problem = (f"truncated or damaged: decoding failed at {at:.2f} s of "
                                   f"{declared / rate:.2f} s ({failure})")
                    data = data[: declared - total]
                if data.shape[0]:
                    _check_samples(name, data)
                    total += data.shape[0]
                    yield np.ascontiguousarray(data.T, dtype=np.float32)
                if failure is not None or data.shape[0] == 0:
                    break
        if problem is None and declared and total < declared - tolerance(handle):
            problem = f"truncated: header declares {declared / rate:.2f} s, only {total / rate:.2f} s readable"
        if problem is not None:
            if total == 0:
                raise TruncatedAudioError(f"{name}: {problem}")
            truncated(problem)
        if total == 0:
            raise BsqAudioError(f"{name}: contains no audio samples")

    return blocks(), rate, channels


def _position(handle: sf.SoundFile) -> int:
    """The frame libsndfile's decoder has reached (after a failed read too); 0 if it cannot seek."""
    return handle.tell() if handle.seekable() else 0


def _check_samples(name: str, data: np.ndarray) -> None:
    peak = float(np.abs(data).max())
    if not math.isfinite(peak):
        raise BsqAudioError(f"{name}: contains NaN or infinite samples")
    check_peak(name, peak)


def check_peak(name: str, peak: float) -> None:
    """Refuse samples past ``MAX_ABS_SAMPLE``, naming the input and the likely cause."""
    if peak > MAX_ABS_SAMPLE:
        raise BsqAudioError(f"{name}: samples reach {peak:.3g}, far outside [-1, 1] (refused past "
                            f"{MAX_ABS_SAMPLE:g}); float audio must be in [-1, 1]: integer PCM divided by "
                            "its full scale, 32768 for 16-bit")


def stream_mono(source: str | Path | BinaryIO, rate: int, block_seconds: float = 20.0,
                allow_truncated: bool = False, on_truncated: Callable[[str], None] | None = None
                ) -> tuple[Iterator[torch.Tensor], int, int]:
    """Read a file block by block, downmix and resample -> (iterator of (T,) float32 chunks at
    ``rate``, source rate, source channels). Memory stays flat whatever the file's length.
    Truncated files: see ``read_blocks``."""
    blocks, source_rate, channels = read_blocks(source, block_seconds, allow_truncated, on_truncated)
    return resample_stream(map(to_mono, blocks), source_rate, rate), source_rate, channels


def _check_readable(path: Path) -> None:
    """Turn the usual path mistakes into clear errors before libsndfile sees the file. Only
    regular files: a FIFO or a device has no size and no end (libsndfile would wait or read
    forever), and its name would be reported as an empty file."""
    if not path.exists():
        raise BsqAudioError(f"{path}: no such file")
    if path.is_dir():
        raise BsqAudioError(f"{path}: is a directory, not an audio file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket")
        raise BsqAudioError(f"{path}: not a regular file ({kind}); to encode a stream, pipe it to "
                            "stdin and give - as the input")
    if not os.access(path, os.R_OK):
        raise BsqAudioError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise BsqAudioError(f"{path}: empty file")


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def to_mono(wave_ct: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(C, T) -> (T,) float32, the mean of the channels."""
    return torch.as_tensor(wave_ct, dtype=torch.float32).mean(0)


def load_mono(source: str | Path | BinaryIO, rate: int, allow_truncated: bool = False
              ) -> tuple[torch.Tensor, int, int]:
    """Read, downmix and resample -> ((T,) float32 at ``rate``, source rate, source channels):
    ``stream_mono``'s chunks joined. Truncated files: see ``read_blocks``."""
    chunks, source_rate, channels = stream_mono(source, rate, allow_truncated=allow_truncated)
    parts = list(chunks)
    return (torch.cat(parts) if parts else torch.zeros(0)), source_rate, channels


def write_audio(destination: str | Path, wave: torch.Tensor, rate: int, fmt: str | None = None) -> None:
    """Write (T,) audio; ``-`` writes WAV to stdout. Files are written whole, then renamed into
    place, so an interrupted run never leaves a half-written file."""
    data = wave.detach().cpu().float().clamp(-1.0, 1.0).numpy()
    if str(destination) == "-":
        buffer = io.BytesIO()
        sf.write(buffer, data, rate, format="WAV", subtype="PCM_16")
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return
    path = Path(destination)
    fmt = fmt or (path.suffix[1:].upper() or "WAV")
    if fmt not in sf.available_formats():
        raise BsqAudioError(f"{path}: unknown output format {fmt!r}; use .wav, .flac, .ogg or .mp3")
    subtype = "PCM_16" if fmt in ("WAV", "FLAC") else None
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format=fmt, subtype=subtype)
    write_bytes_atomic(path, buffer.getvalue())


def write_audio_stream(destination: str | Path, chunks: Iterable[torch.Tensor], rate: int) -> None:
    """Write (T_i,) chunks as they come, through ``atomic_path`` (a temporary renamed into place at
    the end, or a copy into a device or FIFO), so a long decode never holds the whole signal;
    ``-`` collects them and writes WAV to stdout (a WAV header needs the length, and stdout cannot
    seek back to write it)."""
    if str(destination) == "-":
        write_audio("-", torch.cat(list(chunks)), rate)
        return
    path = Path(destination)
    fmt = path.suffix[1:].upper() or "WAV"
    if fmt not in sf.available_formats():
        raise BsqAudioError(f"{path}: unknown output format {fmt!r}; use .wav, .flac, .ogg or .mp3")
    reason = None
    try:
        with atomic_path(path) as tmp:
            subtype = "PCM_16" if fmt in ("WAV", "FLAC") else None
            with sf.SoundFile(tmp, "w", rate, 1, subtype=subtype, format=fmt) as handle:
                for chunk in chunks:
                    try:
                        handle.write(chunk.detach().cpu().float().clamp(-1.0, 1.0).numpy())
                    except sf.LibsndfileError:
                        reason = _sndfile_reason(handle)
                        raise
    except (OSError, sf.LibsndfileError) as err:
        reason = reason or getattr(err, "strerror", None) or _short(err)
        raise BsqAudioError(f"{path}: cannot write ({reason})") from None


def _sndfile_reason(handle: sf.SoundFile) -> str | None:
    """libsndfile's message for the last error on ``handle``, which names the system error (e.g.
    "System error : No space left on device.") where the error code alone says "System error."."""
    try:
        text = sf._ffi.string(sf._snd.sf_strerror(handle._file)).decode("utf-8", "replace")
    except Exception:  # soundfile internals moved: fall back to the exception's own text
        return None
    return text.strip().removeprefix("System error :").strip().rstrip(".") or None
