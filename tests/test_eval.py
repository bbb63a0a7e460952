"""`bsqaudio eval --decoded`: another codec's outputs scored beside bsqaudio's, matched by path."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from cli_inprocess import run_in_process
from conftest import make_signal

RATE = 16000


def references(tmp_path):
    refs, other = tmp_path / "refs", tmp_path / "codec-x"
    (refs / "sub").mkdir(parents=True)
    (other / "sub").mkdir(parents=True)
    sf.write(refs / "sub" / "a.wav", make_signal(3.0, seed=1), RATE)
    sf.write(refs / "b.wav", make_signal(3.0, seed=2), RATE)
    return refs, other


def test_a_delayed_lossless_copy_scores_as_perfect_and_missing_files_are_named(tmp_path, tiny_model_dir):
    refs, other = references(tmp_path)
    clip, _ = sf.read(refs / "sub" / "a.wav", dtype="float32")
    delay = np.zeros(int(0.02 * RATE), dtype=np.float32)  # a codec's 20 ms of latency
    sf.write(other / "sub" / "a.flac", np.concatenate([delay, clip]), RATE, subtype="PCM_24")
    result = run_in_process("eval", refs, "--decoded", other, "--json", "--no-oracle", "--model", tiny_model_dir)
    assert result.exit == 1  # b.wav has no decoded file
    assert "codec-x" in result.stderr and "no decoded file for b.wav" in result.stderr
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["files"]}
    copy = rows["sub/a.wav"]["decoded"]["codec-x"]
    assert copy["lag_ms"] == 20.0 and copy["stoi"] > 0.99 and copy["mel_mae_db"] < 0.1
    assert rows["sub/a.wav"]["codec"]["mel_mae_db"] > 1.0  # an untrained model is not that copy
    assert "error" in rows["b.wav"]["decoded"]["codec-x"]
    mean = report["mean"]["decoded"]["codec-x"]
    assert (mean["files"], mean["missing"]) == (1, 1)
    assert report["systems"] == ["codec", "codec-x"] and "si_sdr_db" not in json.dumps(report)


def test_the_table_fits_80_columns_with_every_system(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    refs, other = references(tmp_path)
    for name in ("sub/a", "b"):
        data, _ = sf.read(refs / f"{name}.wav", dtype="float32")
        sf.write(other / f"{name}.wav", data * 0.5, RATE)
    result = run_in_process("eval", refs, "--decoded", other, "--per-file", "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    systems = [line.split()[0] for line in lines[3:6]]
    assert systems == ["bsqaudio", "oracle", "codec-x"]
    assert "sub/a.wav" in lines and "b.wav" in lines


def test_decoded_must_be_a_folder(tmp_path, tiny_model_dir):
    refs, _ = references(tmp_path)
    result = run_in_process("eval", refs, "--decoded", tmp_path / "nope", "--model", tiny_model_dir)
    assert result.exit == 1 and "--decoded" in result.stderr and "no such folder" in result.stderr
