"""The embedded default model: shipped, small, offline, and good enough to understand speech."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

import bsqaudio
from bsqaudio.hub import CONFIG_NAME, EMBEDDED_DIR, WEIGHTS_NAME
from bsqaudio.model import preset

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "speech_en.wav"
MUSIC = ROOT / "examples" / "music.wav"
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_weights_are_bundled_small_and_documented():
    weights = EMBEDDED_DIR / WEIGHTS_NAME
    assert weights.stat().st_size < 25 * 1024 * 1024
    assert (EMBEDDED_DIR / CONFIG_NAME).exists()
    card = (EMBEDDED_DIR / "MODEL_CARD.md").read_text()
    for needed in ("Licence", "bsqaudio train", "bit/s", "Limitations"):
        assert needed in card


def test_default_model_is_the_small_preset():
    loaded = bsqaudio.from_pretrained()
    assert loaded.model.config == preset("small")
    assert loaded.model.config.bitrate == 1800


def test_roundtrip_cli_offline_keeps_speech_intelligible(tmp_path):
    pystoi = pytest.importorskip("pystoi")
    out = tmp_path / "out.wav"
    result = subprocess.run([sys.executable, "-m", "bsqaudio", "roundtrip", str(SPEECH), "-o",
                             str(out), "--quiet"], capture_output=True, text=True, env=OFFLINE,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    reference, rate = sf.read(SPEECH)
    decoded, out_rate = sf.read(out)
    assert out_rate == rate == 16000
    assert decoded.shape == reference.shape
    # Measured 0.83 with the shipped weights (Codec2 1200 scores about 0.74 on such speech);
    # an untrained or broken model scores far below 0.5.
    assert pystoi.stoi(reference, decoded, rate) > 0.7


def test_eval_reports_codec_and_oracle(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bsqaudio", "eval", str(SPEECH), "--json"],
                            capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["files"]
    assert row["bitrate_bps"] == 1800
    assert row["file_bitrate_bps"] > row["bitrate_bps"]  # header and gains cost something
    for system in ("codec", "oracle"):
        assert set(row[system]) == {"mel_mae_db", "mel_mse_db", "mrstft", "stoi", "pesq_wb", "lag_ms"}
        assert abs(row[system]["lag_ms"]) <= 1.0  # our own decode is sample-aligned
    assert report["model"]["name"] == "bsqaudio-small" and report["model"]["code_bits"] == 36
    assert {"platform", "torch", "torch_threads"} <= set(report["machine"])
    assert "ones_per_pair" not in json.dumps(report)  # no 36 x 36 matrices per file
    # The oracle (unquantized mel, same inversion) bounds what the tokenizer can reach.
    assert row["oracle"]["mel_mae_db"] < row["codec"]["mel_mae_db"] < 8.0
    codes = report["mean"]["codes"]
    # The shipped codes are used, not collapsed: on this clip 98.8 % of a window's codes are
    # distinct, 3 of 36 bits fall outside 0.4-0.6 and 4 nearly copy another (session 8).
    assert codes["distinct_per_window"] > 0.9
    assert codes["bits_outside_0.4_0.6"] <= 8 and codes["copied_bits"] <= 8


def test_eval_skips_unreadable_files_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    result = subprocess.run([sys.executable, "-m", "bsqaudio", "eval", str(MUSIC), str(bad),
                             "--json", "--no-oracle"], capture_output=True, text=True, env=OFFLINE,
                            timeout=300)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in report["files"]] == ["music.wav"]
    assert report["errors"][0]["path"] == str(bad)
    assert "Traceback" not in result.stderr


def test_silence_codes_equal_encoded_digital_silence():
    codec = bsqaudio.Codec.from_pretrained(device="cpu")
    codes = codec.encode(torch.zeros(codec.config.window_samples), 16000)
    assert torch.equal(codes.window_indices()[0], codec.silence_indices())
