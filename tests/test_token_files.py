"""Tokens both ways: npz/npy/jsonl written by encode decode back to audio; sub-token views are
lossless; hostile token files are refused in one line."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_inprocess import run_in_process

import bsqaudio
from bsqaudio.errors import BsqAudioError
from bsqaudio.token_files import DEFAULT_GAIN_DB, join_tokens, load_codes, parse_view, split_tokens

SPEECH = "examples/speech_en.wav"


@pytest.fixture(scope="module")
def real_codes():
    return bsqaudio.Codec.from_pretrained(device="cpu").encode(*reversed(_speech()))


def _speech():
    data, rate = sf.read(SPEECH, dtype="float32")
    return rate, data


@pytest.mark.parametrize("group", [1, 2, 3, 4, 6, 9, 12, 18, 36])
def test_every_view_splits_and_joins_real_codes_exactly(real_codes, group):
    windows = real_codes.window_indices()  # -1 past the end of the audio
    parts = split_tokens(windows, 36, group)
    assert parts.shape == (*windows.shape, 36 // group) and isinstance(parts, torch.Tensor)
    assert int(parts.max()) < 1 << group and (parts[windows < 0] == -1).all()
    assert torch.equal(join_tokens(parts, 36, group), windows)


def test_groups_are_most_significant_first():
    assert split_tokens(np.array([0b101_000_011]), 9, 3).tolist() == [[0b101, 0b000, 0b011]]
    assert join_tokens(np.array([[1, 0, 1]]), 3, 1).tolist() == [5]


def test_views_are_checked():
    assert parse_view("index", 36) is None and parse_view("bits", 36) == 1 and parse_view("groups:9", 36) == 9
    with pytest.raises(BsqAudioError, match="must divide the 36 code bits"):
        parse_view("groups:7", 36)
    with pytest.raises(BsqAudioError, match="outside"):
        join_tokens(np.array([[512, 0, 0, 0]]), 36, 9)
    with pytest.raises(BsqAudioError, match="-1|outside"):
        join_tokens(np.array([[-1, 0, 0, 0]]), 36, 9)


def test_npz_and_jsonl_decode_as_the_bsq_file_does(tmp_path, tiny_model_dir, wav_writer):
    clip = wav_writer("in.wav", 2.3)
    model = ["--model", tiny_model_dir, "--device", "cpu"]
    outputs = {}
    for fmt, view in (("bsq", "index"), ("npz", "index"), ("jsonl", "index"), ("jsonl", "groups:6")):
        tokens = tmp_path / f"t-{view.replace(':', '')}.{fmt}"
        result = run_in_process("encode", clip, "--format", fmt, "--tokens", view, "-o", tokens, *model, "-q")
        assert result.exit == 0, result.stderr
        audio = tmp_path / f"{tokens.name}.wav"
        result = run_in_process("decode", tokens, "-o", audio, *model, "-q")
        assert result.exit == 0, result.stderr
        outputs[tokens.name], _ = sf.read(audio)
    reference = outputs.pop("t-index.bsq")
    assert reference.shape == (int(2.3 * 16000),)
    for name, audio in outputs.items():
        assert np.array_equal(audio, reference), name


def test_npy_tokens_without_gains_decode_at_the_default_loudness(tmp_path, tiny_model_dir, tiny_codec, wav_writer):
    clip = wav_writer("in.wav", 1.5)
    tokens = tmp_path / "t.npy"
    result = run_in_process("encode", clip, "--format", "npy", "--tokens", "groups:9", "-o", tokens,
                            "--model", tiny_model_dir, "-q")
    assert result.exit == 0, result.stderr
    assert np.load(tokens).shape == (1, 512, 2)  # the tiny model's 18-bit codes: 2 groups of 9 bits
    codes = load_codes(tokens, tiny_codec, group=9)
    assert codes.gains_db.tolist() == [DEFAULT_GAIN_DB]
    assert torch.equal(codes.indices, tiny_codec.encode(torch.from_numpy(sf.read(clip, dtype="float32")[0]),
                                                        16000).indices)
    audio = tmp_path / "out.wav"
    result = run_in_process("decode", tokens, "--tokens", "groups:9", "-o", audio, "--model", tiny_model_dir, "-q")
    assert result.exit == 0, result.stderr
    decoded, _ = sf.read(audio)
    assert decoded.shape[0] >= 1.5 * 16000 and np.abs(decoded).max() > 1e-3  # whole rows, audible


def test_generated_tokens_go_back_through_the_python_api(tiny_codec):
    generated = torch.randint(0, 2 ** tiny_codec.config.code_bits, (120,))  # 15 rows of 8
    codes = tiny_codec.codes_from_tokens(generated)
    assert codes.indices.shape == (15, 8) and codes.num_samples == 15 * 16 * 160
    assert tiny_codec.decode(codes).shape == (codes.num_samples,)
    with pytest.raises(BsqAudioError, match="outside"):
        tiny_codec.codes_from_tokens(torch.full((16,), 2 ** 40))
    with pytest.raises(BsqAudioError, match="shape"):
        tiny_codec.codes_from_tokens(torch.zeros(3, 5, dtype=torch.int64))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def test_hostile_token_files_are_one_line_errors(tmp_path, tiny_codec, tiny_model_dir):
    marker = tmp_path / "code-ran"
    header = tiny_codec.encode(torch.zeros(16000), 16000).header
    pickled = _npz(tmp_path / "p.npz", tokens=np.array([Payload(marker)], dtype=object),
                   gains_db=np.zeros(1, np.float32), header=np.array(json.dumps(header)))
    two = tmp_path / "two.jsonl"
    two.write_text('{"tokens": [1]}\n{"tokens": [2]}\n')
    huge = tmp_path / "huge.npy"  # a header that claims 2**40 elements over 100 bytes
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})
    huge.write_bytes(b"\x93NUMPY\x01\x00" + buffer.getvalue()[8:] + b"\0" * 100)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("tokens.npy", b"\0" * (600 << 20))
    cases = {pickled: "object array|no token array|not a readable", two: "holds 2 records", huge: "no token array",
             bomb: "larger than|not a bsqaudio"}
    for path, message in cases.items():
        with pytest.raises(BsqAudioError, match=message):
            load_codes(path, tiny_codec)
        result = run_in_process("decode", path, "-o", tmp_path / "x.wav", "--model", tiny_model_dir)
        assert result.exit == 1 and result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr
    assert not marker.exists()


def test_npz_of_another_model_is_refused_by_name(tmp_path, tiny_codec, other_model_dir, wav_writer):
    codes = tiny_codec.encode(torch.from_numpy(sf.read(wav_writer("in.wav", 1.0), dtype="float32")[0]), 16000)
    from bsqaudio.token_files import npz_bytes

    path = tmp_path / "a.npz"
    path.write_bytes(npz_bytes(codes))
    result = run_in_process("decode", path, "-o", tmp_path / "x.wav", "--model", other_model_dir)
    assert result.exit == 1 and "encoded with model" in result.stderr, result.stderr
    assert json.loads(str(np.load(path)["header"]))["model_hash"] == tiny_codec.model_hash


def test_a_jsonl_of_many_records_decodes_to_a_file_each(tmp_path, tiny_model_dir, wav_writer):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "a.wav", sf.read(wav_writer("x.wav", 1.2))[0], 16000)
    sf.write(folder / "sub" / "b.wav", sf.read(wav_writer("y.wav", 2.0, seed=3))[0], 16000)
    tokens = tmp_path / "t.jsonl"
    model = ["--model", tiny_model_dir, "--device", "cpu"]
    encoded = run_in_process("encode", folder, "--format", "jsonl", "--tokens", "bits", "-o", tokens, *model, "-q")
    assert encoded.exit == 0, encoded.stderr
    single = run_in_process("decode", tokens, "-o", tmp_path / "single.wav", *model)
    assert single.exit == 1 and "holds 2 records" in single.stderr and "--out-dir" in single.stderr
    out = tmp_path / "out"
    result = run_in_process("decode", tokens, "--out-dir", out, *model, "-q")
    assert result.exit == 0, result.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert made == ["t/a.wav", "t/sub/b.wav"]  # under the file's name, the encoded folder's tree
    durations = sorted(sf.info(str(p)).duration for p in out.rglob("*.wav"))
    assert durations == [1.2, 2.0]


def test_records_that_collide_or_come_from_another_code_space_are_refused(tmp_path, tiny_codec, tiny_model_dir):
    record = {"path": "same.wav", "tokens": [1] * 8}
    tokens = tmp_path / "t.jsonl"
    tokens.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    result = run_in_process("decode", tokens, "--out-dir", tmp_path / "out", "--model", tiny_model_dir)
    assert result.exit == 1 and "(record 1) and" in result.stderr and "(record 2)" in result.stderr
    other = tmp_path / "o.jsonl"
    other.write_text(json.dumps({**record, "code_space": "0123456789abcdef", "model": "elsewhere"}) + "\n")
    with pytest.raises(BsqAudioError, match="code space 0123456789abcdef"):
        load_codes(other, tiny_codec)
