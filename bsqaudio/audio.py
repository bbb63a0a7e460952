"""Audio in and out, and the log-mel front-end with its inverse.

Reading: anything libsndfile reads, any rate, any channel count; downmix to mono and resample to
the model's rate. Analysis: frames are centred on multiples of the hop over the whole file (zero
padding at both ends), so a window's spectrogram is computed from its own samples plus half an FFT
of context on each side and equals the whole-file spectrogram: windows can be processed one at a
time, in any batch, with the same result. Each window is referenced to its own peak (its gain),
clamped to ``db_range`` below it and normalized to [-1, 1] for the model.
"""

from __future__ import annotations

import contextlib
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
import soxr
import torch
import torchaudio.functional as AF

from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import atomic_path, write_bytes_atomic
from bsqaudio.model.config import ModelConfig

# Gains below this (a mel power of 0.01, about 66 dB below a full-scale sine) are treated as
# near-silence: the window is referenced to this floor instead of its own peak, so a silent window
# codes as -80 dB everywhere (POWER_EPS is 80 dB below the floor) rather than as noise amplified
# to full scale.
GAIN_FLOOR_DB = -20.0
POWER_EPS = 1e-10

# Griffin-Lim iterations after the phase-gradient start, chosen from the curve measured on the
# decoder's own output (docs/benchmarks.md, `benchmarks/quality.py --systems bsqaudio-gl0,...`):
# on held-out speech, 4 iterations score as 16 do (STOI 0.829 both, PESQ 1.27 vs 1.29, DistillMOS
# 1.52 vs 1.41, DNSMOS 2.81 vs 2.73) and music's mel error is 0.04 dB higher, at a third of the
# inversion's time. More iterations fit the decoder's blurred magnitude more closely, not the audio.
GRIFFIN_LIM_ITERATIONS = 4

# A Hann window of length L behaves, for phase reconstruction, like a Gaussian whose time-frequency
# spread is lambda = 0.25645 * L^2 samples^2 (Prusa, Balazs and Soendergaard 2017, "A noniterative
# method for reconstruction of phase from STFT magnitude", Table I); lambda links the phase
# gradient of the STFT to the gradient of its log-magnitude.
HANN_LAMBDA = 0.25645

# soxr's "high quality" (20-bit) recipe. Measured on tones (docs/benchmarks.md): aliasing
# below -135 dB and a passband error 70 dB or more below the signal up to 0.9 x Nyquist, where
# torchaudio's default sinc lets aliases through at -14 dB and errs at -22 dB; VHQ is 2 dB
# better at the band edge (inaudible) and no faster.
RESAMPLE_QUALITY = "HQ"


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
    (see ``_truncation_at_open`` and the end of the loop below) raises ``TruncatedAudioError``;
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
        declared = _declared_frames(handle, bytes_of)
        problem = _truncation_at_open(handle, bytes_of)
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
        if problem is None and declared and total < declared - _tolerance(handle):
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


def _declared_frames(handle: sf.SoundFile, raw: BinaryIO | Path) -> int:
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


def _tolerance(handle: sf.SoundFile) -> int:
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


def _truncation_at_open(handle: sf.SoundFile, raw: BinaryIO | Path) -> str | None:
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


def resample_stream(chunks: Iterable[torch.Tensor], rate_from: int, rate_to: int
                    ) -> Iterator[torch.Tensor]:
    """Resample a signal given in (T_i,) chunks; the chunks join into what ``resample`` gives for
    the whole signal (soxr's stream and one-shot resamplers agree to the sample), and memory
    stays flat whatever the length or the rates. See ``resample`` for the length and quality."""
    if rate_from == rate_to:
        yield from chunks
        return
    stream = soxr.ResampleStream(rate_from, rate_to, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    consumed = produced = 0
    for chunk in chunks:
        consumed += chunk.shape[0]
        out = stream.resample_chunk(_as_numpy(chunk))
        produced += out.shape[0]
        if out.shape[0]:
            yield torch.from_numpy(out)
    if consumed:
        tail = stream.resample_chunk(np.zeros(_tail_padding(rate_from, rate_to), np.float32), last=True)
        wanted = resampled_length(consumed, rate_from, rate_to) - produced
        yield torch.from_numpy(np.ascontiguousarray(tail[:wanted]))


def resample(wave: torch.Tensor, rate_from: int, rate_to: int) -> torch.Tensor:
    """(T,) audio -> (ceil(T * rate_to / rate_from),) audio at ``rate_to``, with soxr.

    soxr's cost and memory do not depend on how the two rates reduce: torchaudio's resampler,
    used before, builds a kernel of (rate_to / g) x (rate_from / g) taps (g their gcd), over 10
    GB for 44101 -> 16000 Hz. soxr at RESAMPLE_QUALITY is also closer to the ideal resampler and
    faster on the common rates (docs/benchmarks.md, benchmarks/resample.py). The length is
    torchaudio's (ceil), which .bsq headers and decoded lengths were built on: soxr's own
    (rounded) length is padded with the zeros that lie past the end of the signal anyway."""
    if rate_from == rate_to:
        return wave
    x = np.concatenate([_as_numpy(wave), np.zeros(_tail_padding(rate_from, rate_to), np.float32)])
    out = soxr.resample(x, rate_from, rate_to, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(out[: resampled_length(wave.shape[0], rate_from, rate_to)]))


def resampled_length(samples: int, rate_from: int, rate_to: int) -> int:
    """Samples that ``resample`` returns for ``samples`` input samples: ceil(T * to / from)."""
    return -(-samples * rate_to // rate_from)


def _tail_padding(rate_from: int, rate_to: int) -> int:
    """Zeros to append so that soxr, which returns round(T * to / from) samples, returns at least
    ceil(T * to / from): 1.5 output periods of input, and some to spare."""
    return 2 * math.ceil(rate_from / rate_to) + 2


def _as_numpy(wave: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(wave).detach().cpu().float().numpy())


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


class MelFrontend:
    """The model's log-mel analysis of 16 kHz mono audio, and its approximate inverse."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        c = config
        self.window = torch.hann_window(c.win_length)
        self.mel_fb = AF.melscale_fbanks(
            n_freqs=c.n_fft // 2 + 1, f_min=0.0, f_max=c.sample_rate / 2, n_mels=c.n_mels,
            sample_rate=c.sample_rate, norm=None, mel_scale="htk",
        )  # (n_freqs, n_mels)
        # Minimum-norm inverse of the filterbank, computed once: the same solution as a least
        # squares solve per call (torchaudio's InverseMelScale) at the cost of one matmul.
        self.mel_fb_pinv = torch.linalg.pinv(self.mel_fb)  # (n_mels, n_freqs)

    # -- analysis -------------------------------------------------------------------------------

    def num_frames(self, num_samples: int) -> int:
        """Frames that cover real audio: one per hop, at least one."""
        return max(1, math.ceil(num_samples / self.config.hop_length))

    def num_rows(self, num_samples: int) -> int:
        """Patch rows (time) that cover real audio."""
        return math.ceil(self.num_frames(num_samples) / self.config.patch_time)

    def num_windows(self, num_samples: int) -> int:
        return math.ceil(self.num_rows(num_samples) / self.config.grid_time)

    def window_segment(self, wave: torch.Tensor, index: int) -> torch.Tensor:
        """The samples window ``index`` of (T,) audio needs: its own plus n_fft/2 each side."""
        c = self.config
        half = c.n_fft // 2
        start = index * c.window_samples - half
        length = c.window_samples - c.hop_length + c.n_fft
        lo, hi = max(start, 0), min(start + length, wave.shape[0])
        segment = wave[lo:hi] if hi > lo else wave[:0]
        return torch.nn.functional.pad(segment, (lo - start, start + length - lo - segment.shape[0]))

    def power_mel(self, segments_bs: torch.Tensor) -> torch.Tensor:
        """(B, S) window segments -> (B, frames, n_mels) mel power."""
        c = self.config
        spec = torch.stft(segments_bs, c.n_fft, c.hop_length, c.win_length,
                          self.window.to(segments_bs.device), center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (B, n_freqs, frames)
        return power.transpose(1, 2) @ self.mel_fb.to(segments_bs.device)

    def normalize(self, power_btf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel power -> (normalized mel in [-1, 1], gain in dB per window (B,)).

        Gains are rounded to float16, as the .bsq file stores them, so the Python API and a file
        round trip decode identically."""
        c = self.config
        db = 10.0 * torch.log10(power_btf.clamp_min(POWER_EPS))
        gain = db.amax(dim=(1, 2)).clamp_min(GAIN_FLOOR_DB).half().float()
        rel = (db - gain[:, None, None]).clamp(-c.db_range, 0.0)
        return rel / (c.db_range / 2) + 1.0, gain

    def denormalize(self, mel_btf: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
        """Normalized mel and per-window gain -> mel power."""
        c = self.config
        db = (mel_btf.float() - 1.0) * (c.db_range / 2) + gain_db[:, None, None].float()
        return 10.0 ** (db / 10.0)

    def analyze(self, wave: torch.Tensor, first: int = 0, count: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) audio -> normalized mel (W, frames, n_mels) and gains (W,) for windows
        ``first .. first+count`` (all by default)."""
        total = self.num_windows(wave.shape[0])
        count = total - first if count is None else count
        segments = torch.stack([self.window_segment(wave, i) for i in range(first, first + count)])
        return self.normalize(self.power_mel(segments))

    def analyze_segment(self, segment: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One window's segment (as ``WindowCutter`` cuts it) -> normalized mel (frames, n_mels) and
        its gain in dB. Streams analyse one window at a time: the STFT of a whole batch at once was
        the largest transient of an encode."""
        mel, gain = self.normalize(self.power_mel(segment[None]))
        return mel[0], float(gain[0])

    # -- synthesis ------------------------------------------------------------------------------

    def mel_to_linear(self, power_tf: torch.Tensor) -> torch.Tensor:
        """(T, n_mels) mel power -> (n_freqs, T) linear power, non-negative."""
        return (power_tf @ self.mel_fb_pinv.to(power_tf.device)).clamp_min(0.0).T

    def griffin_lim(self, power_ft: torch.Tensor, iterations: int = GRIFFIN_LIM_ITERATIONS,
                    momentum: float = 0.99, phase_ft: torch.Tensor | None = None) -> torch.Tensor:
        """(n_freqs, T) linear power -> (T * hop,) audio, deterministic.

        The fast Griffin-Lim with momentum of torchaudio's ``griffinlim``, step for step, with a
        cheaper inverse STFT (``_istft``), started from ``phase_ft`` (radians) if given, else from
        ``initial_phase``: from it, 4 iterations come as close to the magnitude as 32 from zero
        phase (docs/benchmarks.md). Frame k is centred on sample k * hop;
        the last hop after the last centre is silent."""
        c = self.config
        frames = power_ft.shape[-1]
        minimum = c.n_fft // (2 * c.hop_length) + 2  # the STFT's reflect padding needs > n_fft/2 samples
        if frames < minimum:  # very short audio: add silent frames, then trim
            padded = torch.nn.functional.pad(power_ft, (0, minimum - frames))
            if phase_ft is not None:
                phase_ft = torch.nn.functional.pad(phase_ft, (0, minimum - frames))
            return self.griffin_lim(padded, iterations, momentum, phase_ft)[: frames * c.hop_length]
        length = (frames - 1) * c.hop_length
        magnitude = power_ft.sqrt()
        window = self.window.to(power_ft.device)
        if phase_ft is None:
            phase_ft = self.initial_phase(magnitude)
        angles = torch.polar(torch.ones_like(magnitude), phase_ft.to(magnitude.dtype))
        previous = torch.zeros_like(angles)
        for _ in range(iterations):
            audio = self._istft(magnitude * angles, length)
            rebuilt = torch.stft(audio, c.n_fft, c.hop_length, c.win_length, window,
                                 center=True, pad_mode="reflect", return_complex=True)
            angles = rebuilt - previous * (momentum / (1 + momentum))
            angles = angles * (1.0 / (angles.abs() + 1e-16))
            previous = rebuilt
        audio = self._istft(magnitude * angles, length)
        return torch.nn.functional.pad(audio, (0, c.hop_length))

    def initial_phase(self, magnitude_ft: torch.Tensor) -> torch.Tensor:
        """(n_freqs, T) STFT magnitude -> (n_freqs, T) phase in radians for Griffin-Lim to start from.

        Phase-gradient integration (Prusa et al. 2017, see ``HANN_LAMBDA``): for a Gaussian-like
        window the phase's rate of change along time (the instantaneous frequency) follows from
        the slope of the log-magnitude across frequency, and its rate along frequency (the time
        position of energy) from the slope of the log-magnitude across time. Their PGHI
        integrates these gradients with a heap, coefficient by coefficient from the loudest,
        which in Python costs more than all the Griffin-Lim iterations it saves. Instead, in
        every frame each bin takes the phase of the spectral peak whose lobe it lies in (from the
        valley below the peak to the valley above it), plus the frequency gradient integrated
        from the peak to it (identity phase locking, Laroche and Dolson 1999); a peak takes the
        phase its bin had in the previous frame plus the time gradient integrated over the hop.
        That recursion runs along chains of peaks through the frames; it is evaluated for all
        frames at once by pointer jumping (log2 of the chain length rounds of gathers), not by a
        loop over frames. On real speech and music its start is closer than the heap's, and
        after 16 iterations within about 10 % of it in spectral convergence (docs/benchmarks.md).
        Phases are not wrapped to [0, 2 pi)."""
        c = self.config
        a, m_fft = c.hop_length, c.n_fft
        lam = HANN_LAMBDA * c.win_length ** 2
        two_pi = 2 * math.pi
        log_mag = magnitude_ft.T.float().clamp_min(1e-30).log()  # (T, F), frame-major
        log_mag = log_mag.clamp_min(log_mag.max() - c.db_range / 20 * math.log(10))
        frames, bins = log_mag.shape
        pad = torch.nn.functional.pad
        d_freq = pad((log_mag[:, 2:] - log_mag[:, :-2]) / 2, (1, 1))
        d_time = pad((log_mag[2:] - log_mag[:-2]) / 2, (0, 0, 1, 1))
        bin_index = torch.arange(bins, device=log_mag.device)
        # Phase advance per hop (the instantaneous frequency), and per bin from the frequency
        # gradient, trapezoid rule; the pi per bin is torch.stft's phase reference, the frame's
        # first sample, n_fft / 2 before the window's centre.
        time_gradient = (a * m_fft / lam) * d_freq + (two_pi * a / m_fft) * bin_index
        bin_step = (-lam / (2 * a * m_fft)) * (d_time[:, 1:] + d_time[:, :-1]) + math.pi
        along = pad(torch.cumsum(bin_step, 1), (1, 0))  # integrated from bin 0 to bin m

        below = pad(log_mag[:, :-1], (1, 0), value=-math.inf)
        above = pad(log_mag[:, 1:], (0, 1), value=-math.inf)
        is_peak = (log_mag > below) & (log_mag >= above)  # every frame has one: its first maximum
        is_valley = (log_mag <= below) & (log_mag < above)
        last_peak = torch.cummax(torch.where(is_peak, bin_index, -1), 1).values
        last_valley = torch.cummax(torch.where(is_valley, bin_index, -1), 1).values
        next_peak = torch.cummin(torch.where(is_peak, bin_index, bins).flip(1), 1).values.flip(1)
        # Falling from the last peak (no valley since) -> that peak; rising -> the next one.
        owner = torch.where((last_peak > last_valley) | (next_peak == bins), last_peak, next_peak)

        # Peaks numbered in frame-major order: rank[n * F + m] is the number of the last peak at or
        # before (n, m), so rank at a peak's position is that peak's number.
        rank = torch.cumsum(is_peak.reshape(-1), 0) - 1
        owner_flat = owner + (torch.arange(frames, device=log_mag.device) * bins)[:, None]
        frame, peak_bin = is_peak.nonzero(as_tuple=True)
        earlier = (frame - 1).clamp_min(0)
        earlier_owner = owner_flat[earlier, peak_bin]
        first = frame == 0
        parent = torch.where(first, rank[frame * bins + peak_bin], rank[earlier_owner])
        offset = (along[earlier, peak_bin] - along.reshape(-1)[earlier_owner]
                  + (time_gradient[earlier, peak_bin] + time_gradient[frame, peak_bin]) / 2)
        offset = torch.where(first, 0.0, torch.remainder(offset, two_pi))  # first-frame peaks: 0
        # Pointer jumping: offset[i] is the phase of peak i minus that of peak parent[i]; each
        # round doubles the distance jumped, until every parent is a first-frame peak.
        while True:
            grandparent = parent[parent]
            if torch.equal(grandparent, parent):
                break
            offset = torch.remainder(offset + offset[parent], two_pi)
            parent = grandparent
        base = offset - along[frame, peak_bin]  # each peak's phase less its own frequency integral
        return (base[rank[owner_flat]] + along).T.to(magnitude_ft.dtype)

    def _istft(self, spec_ft: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of a centred ``torch.stft`` with this front-end's window.

        ``torch.istft`` rebuilds the window envelope and overlap-adds all n_fft samples of every
        frame on each call; here only the win_length samples the window keeps are added, by a
        few strided tensor adds, and the envelope is cached per frame count."""
        c = self.config
        lo = (c.n_fft - c.win_length) // 2
        window = self.window.to(spec_ft.device)
        signal = torch.fft.irfft(spec_ft.T, n=c.n_fft)[:, lo: lo + c.win_length] * window
        envelope = self._envelope(spec_ft.shape[-1], spec_ft.device)
        audio = torch.nn.functional.pad(self._overlap_add(signal) / envelope, (lo, 0))
        start = c.n_fft // 2
        return audio[start: start + length]

    def _overlap_add(self, frames_tw: torch.Tensor) -> torch.Tensor:
        """(T, win_length) frames hop apart -> ((T-1) * hop + win_length,) summed signal."""
        hop, width = self.config.hop_length, self.config.win_length
        frames, parts = frames_tw.shape[0], math.ceil(width / hop)
        blocks = torch.nn.functional.pad(frames_tw, (0, parts * hop - width))
        blocks = blocks.reshape(frames, parts, hop)
        out = frames_tw.new_zeros(frames + parts - 1, hop)
        for part in range(parts):
            out[part: part + frames] += blocks[:, part]
        return out.reshape(-1)[: (frames - 1) * hop + width]

    def _envelope(self, frames: int, device: torch.device) -> torch.Tensor:
        key = (frames, str(device))
        if getattr(self, "_envelope_key", None) != key:
            squared = (self.window.to(device) ** 2).expand(frames, -1)
            self._envelope_key = key
            self._envelope_value = self._overlap_add(squared).clamp_min(1e-11)
        return self._envelope_value

    def synthesize(self, power_tf: torch.Tensor, block_frames: int = 1024, overlap: int = 32,
                   iterations: int = GRIFFIN_LIM_ITERATIONS) -> torch.Tensor:
        """(T, n_mels) mel power -> (T * hop,) audio; see ``synthesize_stream``."""
        return torch.cat(list(self.synthesize_stream([power_tf], block_frames, overlap, iterations)))

    def synthesize_stream(self, power_chunks: Iterable[torch.Tensor], block_frames: int = 1024,
                          overlap: int = 32, iterations: int = GRIFFIN_LIM_ITERATIONS) -> Iterator[torch.Tensor]:
        """(T_i, n_mels) mel power chunks -> audio chunks, T * hop samples in all.

        Each block of ``block_frames`` is inverted with ``overlap`` frames of context on both
        sides, and consecutive blocks are cross-faded over ``overlap`` frames; only a block and
        its context are held, so memory does not grow with the length of the audio."""
        hop = self.config.hop_length
        fade = overlap * hop
        ramp = torch.linspace(0.0, 1.0, fade + 2)[1:-1]
        chunks = iter(power_chunks)
        buffer, buffer_start = torch.zeros(0, self.config.n_mels), 0
        start, tail, exhausted = 0, None, False
        previous_phase, previous_lo = None, 0  # the last block's STFT phase and first frame
        while True:
            while not exhausted and buffer_start + buffer.shape[0] < start + block_frames + overlap:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    buffer = torch.cat([buffer, chunk.float()])
            known = buffer_start + buffer.shape[0]
            if start >= known:
                return
            lo, hi = max(start - overlap, 0), min(start + block_frames + overlap, known)
            end = min(start + block_frames, known)
            power = self.mel_to_linear(buffer[lo - buffer_start: hi - buffer_start])
            phase = None
            if previous_phase is not None:
                # Start the frames this block shares with the last one from that block's phase:
                # blocks inverted independently disagree in phase, and cross-fading them cancels
                # (spectral convergence 5-10x worse around each seam, measured).
                phase = self.initial_phase(power.sqrt())
                shared = previous_phase[:, lo - previous_lo:]
                width = min(shared.shape[1], phase.shape[1])
                phase[:, :width] = shared[:, :width]
            audio = self.griffin_lim(power, iterations, phase_ft=phase)
            previous_lo = lo
            previous_phase = torch.stft(audio, self.config.n_fft, hop, self.config.win_length, self.window,
                                        center=True, pad_mode="constant", return_complex=True).angle()
            piece = audio[start * hop - (fade if start else 0) - lo * hop: end * hop - lo * hop]
            if tail is not None:
                piece = torch.cat([tail * (1.0 - ramp) + piece[:fade] * ramp, piece[fade:]])
            if exhausted and end >= known:
                yield piece
                return
            yield piece[:-fade]
            tail = piece[-fade:]
            start = end
            drop = start - overlap - buffer_start
            if drop > 0:
                buffer, buffer_start = buffer[drop:], buffer_start + drop
