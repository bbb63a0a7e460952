"""`bsqaudio eval --mos`: naturalness predicted for the codec, the oracle and the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_inprocess import run_in_process

from bsqaudio.metrics import mos_available

SPEECH = Path(__file__).parent.parent / "examples" / "speech_en.wav"


@pytest.mark.skipif(not mos_available(), reason="needs bsqaudio[mos]")
def test_mos_ranks_the_real_clip_above_an_untrained_models_output(tiny_model_dir):
    result = run_in_process("eval", SPEECH, "--mos", "--json", "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    mean = json.loads(result.stdout)["mean"]
    for system in ("codec", "oracle", "reference"):
        assert 1.0 <= mean[system]["distillmos"] <= 5.0 and 1.0 <= mean[system]["dnsmos_ovrl"] <= 5.0
    assert mean["reference"]["distillmos"] > mean["codec"]["distillmos"] + 1.0  # untrained: noise
    assert mean["oracle"]["distillmos"] > mean["codec"]["distillmos"]
    assert "[1/1]" in result.stderr  # progress per file


def test_mos_without_the_predictors_says_how_to_install(monkeypatch, tiny_model_dir):
    monkeypatch.setattr("bsqaudio.metrics.mos_available", lambda: False)
    result = run_in_process("eval", SPEECH, "--mos", "--model", tiny_model_dir)
    assert result.exit == 1 and "pip install 'bsqaudio[mos]'" in result.stderr
