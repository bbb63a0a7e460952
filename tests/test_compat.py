"""Files written by earlier bsqaudio versions keep reading and decoding (see tests/data/README.md).

The files in tests/data are frozen: if a test here fails, the change broke old files. Do not
regenerate them; bump FORMAT_VERSION and keep reading version 1 instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bsqaudio import BsqAudioError, Codec, read_bsq, write_bsq
from bsqaudio.bitstream import FORMAT_VERSION, HEADER_FIELDS
from bsqaudio.code_space import embedded_release, release_of
from bsqaudio.token_files import load_codes

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
    """name in the manifest ("tiny-model", "embedded") -> Codec."""
    loaded = {}

    def get(model: str) -> Codec:
        if model not in loaded:
            folder = None if model == "embedded" else DATA / model
            loaded[model] = Codec.from_pretrained(folder, device="cpu", griffin_lim_iterations=4)
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
    assert data[:4] == b"BSQA" and data[4] == entry["format_version"] in (1, 2)


@pytest.mark.parametrize("name", FILES)
def test_reads_to_the_recorded_header_gains_and_tokens(name):
    entry = MANIFEST[name]
    codes = read_bsq((DATA / name).read_bytes())
    assert codes.header == entry["header"]
    assert set(codes.header) == set(HEADER_FIELDS) | ({"code_space"} if entry["format_version"] == 2 else set())
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
    assert FORMAT_VERSION == 2
    assert rewritten == data  # a file is written back in its own format, byte for byte


def test_tiny_model_is_the_recorded_one(codecs):
    codec = codecs("tiny-model")
    assert not isinstance(codec, Exception), codec
    assert codec.model_hash == MANIFEST["tiny-tone-1s.bsq"]["model_hash"]
    assert codec.config.name == MANIFEST["tiny-tone-1s.bsq"]["model_name"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_decodes_with_its_model(name, codecs):
    """Each file decodes to its recorded spectrogram with the weights that wrote it; with another
    decoder of its code space (a later release) it still decodes; a file of a model that is no
    longer released fails naming the model it needs."""
    entry = MANIFEST[name]
    codes = read_bsq((DATA / name).read_bytes())
    codec = codecs(entry["model"])
    if codec.model_hash != entry["model_hash"]:
        assert entry["model"] == "embedded", "a stored model folder changed its hash"
        release = release_of(entry["model_hash"])
        if release is None:  # written by a model that was never released (tests/data/README.md)
            with pytest.raises(BsqAudioError) as caught:
                codec.decode(codes)
            message = str(caught.value)
            assert entry["model_name"] in message and entry["model_hash"] in message, message
            assert "--model" in message and "\n" not in message
            return
        assert release["code_space"] == entry["code_space"] == codec.code_space, (
            f"{name}: the embedded model left code space {entry['code_space']}: every file of it "
            "would stop decoding")
        wave = codec.decode(codes)  # a new decoder: other audio, the same tokens
        assert wave.shape == (entry["header"]["num_samples"],) and wave.abs().max() > 1e-3
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


NPZ_FILES = [name for name in FILES if "npz" in MANIFEST[name]]


@pytest.mark.parametrize("name", NPZ_FILES)
def test_frozen_token_files_hold_the_same_codes_as_their_bsq(name, codecs):
    entry = MANIFEST[name]
    data = (DATA / entry["npz"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["npz_sha256"], f"tests/data/{entry['npz']} was modified"
    codes = load_codes(DATA / entry["npz"], codecs("embedded"))
    stored = read_bsq((DATA / name).read_bytes())
    assert codes.header == stored.header
    assert torch.equal(codes.indices, stored.indices) and torch.equal(codes.gains_db, stored.gains_db)


def test_manifest_model_files_include_the_current_release():
    """Frozen files of the current embedded release exist, so its promise is tested too."""
    release = embedded_release()
    assert any(MANIFEST[name]["model_hash"] == release["model_hash"] for name in MODEL_FILES) or any(
        MANIFEST[name].get("code_space") == release["code_space"] for name in MODEL_FILES)


def test_wrong_model_names_the_model_the_file_needs(codecs):
    """A file decoded with another model fails with the name and hash of the one it needs."""
    codec = codecs("tiny-model")
    entry = MANIFEST["small-tone-1s.bsq"]
    codes = read_bsq((DATA / "small-tone-1s.bsq").read_bytes())
    with pytest.raises(BsqAudioError) as caught:
        codec.decode(codes)
    message = str(caught.value)
    assert entry["model_name"] in message and entry["model_hash"] in message, message

