"""The command line refuses what would surprise a user, before any work, in one line."""

from __future__ import annotations

import io
import json

import pytest
import soundfile as sf
from cli_inprocess import run_in_process
from conftest import write_wav

from bsqaudio.cli import common
from bsqaudio.errors import BsqAudioError


@pytest.fixture
def clip(tmp_path):
    return write_wav(tmp_path / "clip.wav", 1.0)


@pytest.mark.parametrize("name, fmt, message", [
    ("tokens.wav", "bsq", "encode writes tokens, not audio; name it .bsq"),
    ("tokens.npy", "bsq", "the name says .npy but --format is bsq"),
    ("tokens.bsq", "npy", "the name says .bsq but --format is npy"),
])
def test_encode_output_name_must_fit_the_format(tmp_path, clip, tiny_model_dir, name, fmt, message):
    result = run_in_process("encode", clip, "-o", tmp_path / name, "--format", fmt, "--model", tiny_model_dir)
    assert result.exit == 1 and message in result.stderr
    assert not (tmp_path / name).exists()


def test_jsonl_with_out_dir_is_refused(tmp_path, clip, tiny_model_dir):
    result = run_in_process("encode", tmp_path, "--format", "jsonl", "--out-dir", tmp_path / "o",
                            "--model", tiny_model_dir)
    assert result.exit == 1 and "not --out-dir" in result.stderr


def test_decode_writes_mp3(tmp_path, clip, tiny_model_dir):
    assert run_in_process("encode", clip, "-o", tmp_path / "c.bsq", "--model", tiny_model_dir).exit == 0
    result = run_in_process("decode", tmp_path / "c.bsq", "-o", tmp_path / "c.mp3", "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert sf.info(tmp_path / "c.mp3").format == "MP3"
    result = run_in_process("decode", tmp_path, "--out-dir", tmp_path / "mp3", "--audio-format", "mp3",
                            "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert (tmp_path / "mp3" / "c.mp3").exists()


def test_debug_works_after_the_command(tmp_path):
    result = run_in_process("encode", tmp_path / "missing.wav", "-o", tmp_path / "x.bsq", "--debug")
    assert "Traceback" in result.stderr and "no such file" in result.stderr


def test_roundtrip_says_one_window(tmp_path, clip, tiny_model_dir):
    result = run_in_process("roundtrip", clip, "-o", tmp_path / "out.wav", "--model", tiny_model_dir)
    assert result.exit == 0 and "(18-bit codes, 1 window)" in result.stderr


def test_binary_output_is_not_written_to_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(common.sys, "stdout", Terminal())
    with pytest.raises(BsqAudioError, match="to a terminal"):
        common.check_token_output("-", "bsq")
    with pytest.raises(BsqAudioError, match="to a terminal"):
        common.check_audio_output("-")
    common.check_token_output("-", "jsonl")  # text is fine


def truncated_wav(folder, name="cut.wav"):
    """A WAV whose header declares 2 s but whose data stops after about 1 s."""
    path = write_wav(folder / name, 2.0, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_file_fails_unless_allowed(tmp_path, tiny_model_dir):
    cut = truncated_wav(tmp_path)
    result = run_in_process("encode", cut, "-o", tmp_path / "cut.bsq", "--model", tiny_model_dir)
    assert result.exit == 1 and "truncated" in result.stderr and "--allow-truncated" in result.stderr
    assert not (tmp_path / "cut.bsq").exists()
    result = run_in_process("encode", cut, "-o", tmp_path / "cut.bsq", "--allow-truncated", "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("bsqaudio: warning:")]
    assert "Warning" not in result.stderr.replace("bsqaudio: warning:", "")  # one line, not Python's form


def test_a_truncated_file_in_a_batch_is_an_error_record(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    write_wav(folder / "good.wav", 1.0)
    truncated_wav(folder)
    errors = tmp_path / "errors.jsonl"
    result = run_in_process("encode", folder, "--out-dir", tmp_path / "out", "--errors", errors,
                            "--model", tiny_model_dir, "--workers", "0")
    assert result.exit == 1 and "1 done, 0 skipped, 1 failed" in result.stderr
    [record] = [json.loads(line) for line in errors.read_text().splitlines()]
    assert record["path"].endswith("cut.wav") and "truncated" in record["error"]
    result = run_in_process("encode", folder, "--out-dir", tmp_path / "out2", "--allow-truncated",
                            "--model", tiny_model_dir, "--workers", "0")
    assert result.exit == 0 and "2 done" in result.stderr and "bsqaudio: warning:" in result.stderr
