"""Files written by earlier bsqaudio versions keep reading and decoding (see tests/data/README.md).

The files in tests/data are frozen: if a test here fails, the change broke old files. Do not
regenerate them; bump FORMAT_VERSION and keep reading version 1 instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bsqaudio import BsqAudioError, Codec, read_bsq, write_bsq
from bsqaudio.bitstream import FORMAT_VERSION, HEADER_FIELDS

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
FILES = sorted(MANIFEST)
MODEL_FILES = [name for name in FILES if MANIFEST[name]["model"] is not None]
MEL_TOLERANCE_DB = 0.5


def pooled_mel_db(codec: Codec, codes) -> np.ndarray:
    """As in tests/data/make_compat_data.py: decoded mel in dB, mean over 4 frames x 4 bands."""
    power = codec.decode_mel(codes)
    mel_db = (10 * torch.log10(power.clamp_min(1e-10))).numpy()
    frames = mel_db.shape[0] // 4 * 4
    return mel_db[:frames].reshape(frames // 4, 4, -1, 4).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def codecs():
    """name in the manifest ("tiny-model", "embedded") -> Codec, or the BsqAudioError loading it
    raised (no embedded weights in this install)."""
    loaded = {}

    def get(model: str):
        if model not in loaded:
            try:
                if model == "embedded":
                    loaded[model] = Codec.from_pretrained(device="cpu", griffin_lim_iterations=4)
                else:
                    loaded[model] = Codec.from_pretrained(DATA / model, device="cpu",
                                                          griffin_lim_iterations=4)
            except BsqAudioError as err:
                loaded[model] = err
        return loaded[model]

    return get


def test_every_file_is_recorded():
    on_disk = sorted(p.name for p in DATA.glob("*.bsq"))
    assert on_disk == FILES
    readme = (DATA / "README.md").read_text()
    for name, entry in MANIFEST.items():
        assert name in readme and entry["sha256"] in readme, f"{name} missing from README.md"
        assert entry["model_hash"] in readme


@pytest.mark.parametrize("name", FILES)
def test_file_bytes_are_unchanged(name):
    data = (DATA / name).read_bytes()
    entry = MANIFEST[name]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], (
        f"tests/data/{name} was modified: these files are frozen (see tests/data/README.md)")
    assert len(data) == entry["bytes"]
    assert data[:4] == b"BSQA" and data[4] == entry["format_version"] == 1


@pytest.mark.parametrize("name", FILES)
def test_reads_to_the_recorded_header_gains_and_tokens(name):
    entry = MANIFEST[name]
    codes = read_bsq((DATA / name).read_bytes())
    assert codes.header == entry["header"]
    assert set(codes.header) == set(HEADER_FIELDS)
    assert (codes.header["model"], codes.header["model_hash"]) == (entry["model_name"],
                                                                  entry["model_hash"])
    assert codes.gains_db.dtype == torch.float32
    assert codes.gains_db.tolist() == entry["gains_db"]
    assert [math.copysign(1, g) for g in codes.gains_db.tolist()] == \
        [math.copysign(1, g) for g in entry["gains_db"]]  # -0.0 stays -0.0
    expected = np.load(DATA / entry["indices"])
    assert codes.indices.dtype == torch.int64
    assert np.array_equal(codes.indices.numpy(), expected)
    digest = hashlib.sha256(codes.indices.numpy().astype("<i8").tobytes()).hexdigest()
    assert digest == entry["indices_sha256"]


@pytest.mark.parametrize("name", FILES)
def test_writer_still_writes_the_same_bytes(name):
    data = (DATA / name).read_bytes()
    rewritten = write_bsq(read_bsq(data))
    if FORMAT_VERSION == 1:
        assert rewritten == data
    else:  # a newer writer may write a newer format, but what it writes must hold the same codes
        again = read_bsq(rewritten)
        assert torch.equal(again.indices, read_bsq(data).indices)


def test_tiny_model_is_the_recorded_one(codecs):
    codec = codecs("tiny-model")
    assert not isinstance(codec, Exception), codec
    assert codec.model_hash == MANIFEST["tiny-tone-1s.bsq"]["model_hash"]
    assert codec.config.name == MANIFEST["tiny-tone-1s.bsq"]["model_name"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_decodes_with_its_model(name, codecs):
    entry = MANIFEST[name]
    codes = read_bsq((DATA / name).read_bytes())
    codec = codecs(entry["model"])
    if isinstance(codec, BsqAudioError):  # this install has no embedded weights at all
        assert entry["model"] == "embedded"
        assert "no default model" in str(codec)
        warnings.warn(f"{name}: not decoded, no embedded model in this install", stacklevel=1)
        return
    if codec.model_hash != entry["model_hash"]:
        # The embedded model was replaced: the old file must still say which model it needs.
        assert entry["model"] == "embedded", "a stored model folder changed its hash"
        with pytest.raises(BsqAudioError) as caught:
            codec.decode(codes)
        message = str(caught.value)
        assert entry["model_name"] in message and entry["model_hash"] in message, message
        assert "--model" in message and "\n" not in message
        warnings.warn(f"{name}: the embedded model is now {codec.model_hash}; this file needs "
                      f"{entry['model_name']} ({entry['model_hash']})", stacklevel=1)
        return
    wave = codec.decode(codes)
    assert wave.dtype == torch.float32
    assert wave.shape == (entry["header"]["num_samples"],)
    assert torch.isfinite(wave).all()
    assert wave.abs().max() > 1e-3  # a tone, not silence
    expected = np.load(DATA / entry["mel_db"]).astype(np.float32)
    got = pooled_mel_db(codec, codes)
    assert got.shape == expected.shape
    worst = float(np.abs(got - expected).max())
    assert worst < MEL_TOLERANCE_DB, f"{name}: decoded spectrogram moved by up to {worst:.2f} dB"


def test_wrong_model_names_the_model_the_file_needs(codecs):
    """A file decoded with another model fails with the name and hash of the one it needs."""
    codec = codecs("tiny-model")
    entry = MANIFEST["small-tone-1s.bsq"]
    codes = read_bsq((DATA / "small-tone-1s.bsq").read_bytes())
    with pytest.raises(BsqAudioError) as caught:
        codec.decode(codes)
    message = str(caught.value)
    assert entry["model_name"] in message and entry["model_hash"] in message, message

