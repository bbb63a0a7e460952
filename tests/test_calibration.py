"""Bit-threshold calibration: per-bit thresholds that balance every group of files, applied to
the model so that ``bsqaudio encode`` writes the balanced codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch
from conftest import RATE, make_signal

import bsqaudio
from bsqaudio.codec import Codec
from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.model.quantizer import bits_to_indices, indices_to_bits
from bsqaudio.train.calibration import audio_latents, balanced_thresholds, share_above, shift_thresholds

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_bits.py"


def test_one_group_is_split_at_its_median():
    latents = torch.randn(20_000, 4) + torch.tensor([0.0, 0.5, -1.0, 2.0])
    thresholds, worst = balanced_thresholds([latents])
    assert torch.allclose(thresholds, latents.median(0).values, atol=0.02)
    assert (worst < 0.005).all()


def test_two_groups_leaning_opposite_ways_end_equally_far_from_half():
    """Unit normals centred at +0.3 and -0.1: the minimax threshold is the midpoint 0.1, where
    both groups are 0.08 from half (at zero one group would be 0.12 from half)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(50_000, 3, generator=generator) + 0.3
    b = torch.randn(50_000, 3, generator=generator) - 0.1
    thresholds, worst = balanced_thresholds([a, b])
    assert torch.allclose(thresholds, torch.full((3,), 0.1), atol=0.03)
    share_a, share_b = share_above(a, thresholds[None])[0], share_above(b, thresholds[None])[0]
    assert torch.allclose(share_a - 0.5, 0.5 - share_b, atol=0.01)
    at_zero = (share_above(a, torch.zeros(1, 3))[0] - 0.5).abs().max()
    assert worst.max() < at_zero - 0.03


def test_a_balanced_bit_keeps_its_threshold_at_zero():
    latents = torch.cat([torch.full((100, 1), -1.0), torch.full((100, 1), 1.0)])
    thresholds, worst = balanced_thresholds([latents])
    assert thresholds.item() == 0.0 and worst.item() == 0.0


def clip_wave(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(make_signal(seconds, seed=seed)[:, 0])


def test_latents_are_the_encoders_codes_and_calibration_balances_them(tiny_model_dir):
    """The signs of ``audio_latents`` are exactly what ``Codec.encode`` writes; after moving the
    thresholds, the codes Codec.encode writes for the same audio are balanced bit by bit."""
    pretrained = bsqaudio.from_pretrained(tiny_model_dir)
    model = pretrained.model.eval()
    frontend = MelFrontend(model.config)
    wave = clip_wave(12.0, seed=3)
    latents = audio_latents(model, frontend, wave)
    codec = Codec(pretrained, device="cpu")
    codes = codec.encode(wave, RATE).indices.reshape(-1)
    assert torch.equal(bits_to_indices(latents > 0), codes)
    before = indices_to_bits(codes, model.config.code_bits).float().mean(0)
    assert (before - 0.5).abs().max() > 0.1  # a random tiny model is far from balanced

    thresholds, _ = balanced_thresholds([latents])
    shift_thresholds(model, thresholds)
    after = indices_to_bits(Codec(pretrained, device="cpu").encode(wave, RATE).indices.reshape(-1),
                            model.config.code_bits).float().mean(0)
    assert (after - 0.5).abs().max() < 0.02


def test_script_writes_a_calibrated_model_and_rejects_a_bad_group(tiny_model_dir, tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            sf.write(folder / f"{i}.wav", make_signal(3.0 + i, seed=seed * 10 + i) * (0.2 + seed), RATE)
    out = tmp_path / "calibrated"
    run = subprocess.run([sys.executable, SCRIPT, str(tiny_model_dir), str(out), "--group", f"a={tmp_path / 'a'}",
                          "--group", f"b={tmp_path / 'b'}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "a: 2 files" in run.stdout and "b: 2 files" in run.stdout
    before = bsqaudio.from_pretrained(tiny_model_dir).model.quant_embed.bias
    after = bsqaudio.from_pretrained(out).model.quant_embed.bias
    assert not torch.equal(before, after)

    bad = subprocess.run([sys.executable, SCRIPT, str(tiny_model_dir), str(tmp_path / "x"), "--group",
                          str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --group") and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_script_reports_a_missing_input(tiny_model_dir, tmp_path):
    run = subprocess.run([sys.executable, SCRIPT, str(tiny_model_dir), str(tmp_path / "x"), "--group",
                          f"a={tmp_path / 'nowhere'}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "no such file" in run.stderr and "Traceback" not in run.stderr
