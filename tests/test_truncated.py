"""Truncated audio: a file holding less than its header declares is an error unless
``allow_truncated=True``, which keeps the readable part and says so (a TruncatedAudioWarning, or
the warning element of ``encode_sources``' results). Complete files of every format, and WAVs
written to a pipe (no length in the header), are not flagged.

The command-line rows (one-line errors naming the file) are in test_bad_audio.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_signal

from bsqaudio.io.audio_files import TruncatedAudioError, TruncatedAudioWarning, load_mono, read_audio
from bsqaudio.pipeline import encode_sources

RATE = 16000
FORMATS = {  # suffix: (format, subtype)
    "wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
    "aiff": ("AIFF", "PCM_16"), "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III"),
}


def write(path: Path, seconds: float = 4.0) -> Path:
    fmt, subtype = FORMATS[path.suffix[1:]]
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile does not write {fmt} {subtype}")
    sf.write(path, make_signal(seconds, RATE), RATE, format=fmt, subtype=subtype)
    return path


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_complete_files_are_not_flagged(tmp_path, suffix):
    path = write(tmp_path / f"whole.{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data, rate = read_audio(path)
    assert rate == RATE and data.shape == (1, 4 * RATE)


def test_wav_written_to_a_pipe_is_complete(tmp_path):
    """A writer to a pipe cannot go back to fill in the length: ffmpeg leaves 0xFFFFFFFF. That is
    an unknown length, not a truncation."""
    path = write(tmp_path / "piped.wav")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at: at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_audio(path)[0].shape == (1, 4 * RATE)


def test_wav_header_claiming_twice_its_data(tmp_path, tiny_codec):
    path = write(tmp_path / "long.wav", 2.0)
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at: at + 4] = (2 * 2 * 2 * RATE).to_bytes(4, "little")  # 4 s of 16-bit mono
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedAudioError) as caught:
        tiny_codec.encode_file(path)
    assert str(caught.value) == (f"{path}: truncated: header declares 4.00 s, only 2.00 s readable "
                                 "(--allow-truncated keeps the readable part)")
    with pytest.warns(TruncatedAudioWarning, match="header declares 4.00 s, only 2.00 s readable") as seen:
        codes = tiny_codec.encode_file(path, allow_truncated=True)
    assert str(seen[0].message).startswith(f"{path}: truncated")
    # The readable part, encoded as if it were the whole file.
    readable = torch.from_numpy(sf.read(path, dtype="float32")[0])
    assert readable.shape == (2 * RATE,)
    expected = tiny_codec.encode(readable, RATE)
    assert torch.equal(codes.indices, expected.indices) and codes.header == expected.header


@pytest.mark.parametrize(("suffix", "what"), [
    ("wav", "truncated: header declares 4.00 s, only 2.00 s readable"),
    ("aiff", "truncated: header declares 4.00 s, only 2.00 s readable"),
    ("flac", "truncated or damaged: decoding failed at"),
    ("ogg", "truncated: the Ogg stream stops before its end-of-stream page"),
    ("opus", "truncated: the Ogg stream stops before its end-of-stream page"),
    ("mp3", "truncated: header declares 4.00 s, only"),
])
def test_files_cut_in_half(tmp_path, suffix, what):
    path = cut_in_half(write(tmp_path / f"cut.{suffix}"))
    with pytest.raises(TruncatedAudioError, match=what):
        read_audio(path)
    with pytest.raises(TruncatedAudioError, match="--allow-truncated keeps the readable part"):
        load_mono(path, RATE)
    with pytest.warns(TruncatedAudioWarning, match=what):
        wave, rate, channels = load_mono(path, RATE, allow_truncated=True)
    # Part is readable (less than half of a small Ogg file: its first pages hold the codebooks).
    assert (rate, channels) == (RATE, 1) and 0.5 * RATE < wave.shape[0] < 2.2 * RATE


def test_header_only_is_an_error_even_when_allowed(tmp_path):
    path = write(tmp_path / "header.wav")
    path.write_bytes(path.read_bytes()[:44])
    with pytest.raises(TruncatedAudioError, match="only 0.00 s readable"):
        read_audio(path, allow_truncated=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_reports_truncation_per_file(tmp_path, tiny_codec, workers):
    sources = [write(tmp_path / "a.wav"), cut_in_half(write(tmp_path / "b.flac")), write(tmp_path / "c.ogg")]
    results = {index: (codes, note) for index, codes, note in encode_sources(tiny_codec, sources, workers)}
    assert results[1][0] is None and "truncated or damaged" in results[1][1] and str(sources[1]) in results[1][1]
    assert results[0][0] is not None and results[0][1] is None and results[2][1] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported in the results, not as a warning
        kept = {index: (codes, note) for index, codes, note
                in encode_sources(tiny_codec, sources, workers, allow_truncated=True)}
    codes, note = kept[1]
    assert note.startswith(f"{sources[1]}: truncated or damaged") and note.endswith("only the readable part is used")
    assert codes is not None and 1.2 * RATE < codes.num_samples < 2.2 * RATE
    with pytest.warns(TruncatedAudioWarning):
        assert torch.equal(codes.indices, tiny_codec.encode_file(sources[1], allow_truncated=True).indices)
    assert kept[0][1] is None and kept[2][1] is None
    assert torch.equal(kept[0][0].indices, results[0][0].indices)


def test_samples_are_checked_before_float32(tmp_path):
    """1e300 in a float64 WAV is finite: it is too large, not NaN or infinite."""
    path = tmp_path / "huge.wav"
    data = make_signal(1.0, RATE).astype(np.float64)
    data[100] = 1e300
    sf.write(path, data, RATE, subtype="DOUBLE")
    with pytest.raises(Exception, match=r"samples reach 1e\+300, far outside \[-1, 1\]"):
        read_audio(path)
