"""Training: it learns, resumes bit-exactly, stops cleanly on SIGTERM, runs under torchrun, exports.

Everything uses the ``tiny`` preset, batches of 2-4 windows and a few generated clips (tones,
chirps, noise bursts), so the whole file runs in a few minutes on two shared CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import bsqaudio
from bsqaudio.code_space import code_space_id
from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import load_pretrained, save_pretrained
from bsqaudio.model import AudioBSQ, preset
from bsqaudio.train import loop
from bsqaudio.train.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from bsqaudio.train.data import AudioCache
from bsqaudio.train.distill import keep_decoder_blocks
from bsqaudio.train.loop import learning_rate, train
from bsqaudio.train.losses import reconstruction_loss, spec_augment
from bsqaudio.train.settings import TrainSettings, resumed_settings
from bsqaudio.train.validation import real_audio_extent, real_token_mask

RATE = 16000
BSQAUDIO = shutil.which("bsqaudio")


# -- data -----------------------------------------------------------------------------------------

def make_clip(kind: str, seconds: float, seed: int) -> np.ndarray:
    """(T,) float32 at 16 kHz: a chord of tones, a chirp, or bursts of noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "tone":
        x = sum(0.2 * np.sin(2 * math.pi * f * t) for f in rng.uniform(150, 3000, 3))
    elif kind == "chirp":
        f0, f1 = rng.uniform(100, 500), rng.uniform(2000, 7000)
        x = 0.4 * np.sin(2 * math.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t))
    else:
        envelope = np.zeros(n)
        for start in rng.integers(0, n - RATE // 4, int(seconds * 3)):
            envelope[start: start + RATE // 8] = 1.0
        x = 0.3 * rng.standard_normal(n) * envelope
    return (x + 0.003 * rng.standard_normal(n)).astype(np.float32)


def write_corpus(root: Path, train_files: int = 8, val_files: int = 2) -> tuple[Path, Path]:
    """``root/train`` (3..10 s clips) and ``root/val`` (4, 7 s clips) of mixed kinds."""
    kinds = ("tone", "chirp", "noise")
    train_dir, val_dir = root / "train", root / "val"
    train_dir.mkdir(parents=True)
    val_dir.mkdir()
    for i in range(train_files):
        sf.write(train_dir / f"clip{i}.wav", make_clip(kinds[i % 3], 3 + i, i), RATE)
    for i in range(val_files):
        sf.write(val_dir / f"val{i}.wav", make_clip(kinds[i % 3], 4 + 3 * i, 100 + i), RATE)
    return train_dir, val_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def settings(out: Path, corpus, **changes) -> TrainSettings:
    """Small, quiet settings: tiny preset, batch 2, validation and checkpoints only at the end."""
    train_dir, val_dir = corpus
    base = dict(inputs=[str(train_dir)], val_dirs=[str(val_dir)], out=str(out), preset="tiny",
                steps=4, batch_size=2, lr=2e-3, warmup=2, ema_decay=0.9, val_every=10 ** 6,
                checkpoint_every=10 ** 6, log_every=10 ** 6, device="cpu")
    base.update(changes)
    return TrainSettings(**base)


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def cli(*args) -> list[str]:
    """The installed ``bsqaudio`` command (``python -m bsqaudio`` where it is not installed)."""
    command = [BSQAUDIO] if BSQAUDIO else [sys.executable, "-m", "bsqaudio"]
    return command + [str(a) for a in args]


def cli_env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


# -- it learns ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus) -> tuple[Path, TrainSettings]:
    """``tiny`` trained for 30 steps of 2 windows (10-40 s), validated every 15, exported at the
    end. The validation mel MSE falls from about 460 to about 160 dB^2 by step 20 (seeds 0-3)."""
    out = tmp_path_factory.mktemp("trained")
    s = settings(out, corpus, steps=30, batch_size=2, lr=3e-3, warmup=10, val_every=15,
                 log_every=10, checkpoint_every=15)
    train(s)
    return out, s


def test_training_halves_the_validation_mel_error(trained_run):
    out, _ = trained_run
    val = records(out, "val")
    assert [r["step"] for r in val] == [0, 15, 30]
    first, last = val[0]["mel_mse_db"], val[-1]["mel_mse_db"]
    assert last <= 0.5 * first, [r["mel_mse_db"] for r in val]
    assert all(math.isfinite(r["mel_mse_db"]) and math.isfinite(r["perplexity"]) for r in val)


def test_logged_learning_rate_follows_the_schedule(trained_run):
    out, s = trained_run
    logged = records(out, "train")
    assert [r["step"] for r in logged] == [10, 20, 30]
    for r in logged:  # the record of step n holds the rate used for update n (index n - 1)
        assert r["lr"] == pytest.approx(learning_rate(s, r["step"] - 1, 1), rel=1e-12)
        assert math.isfinite(r["recon"]) and math.isfinite(r["grad_norm"])


def test_run_writes_one_checkpoint_and_an_export_of_the_ema(trained_run):
    out, _ = trained_run
    assert sorted(p.name for p in out.iterdir()) == ["cache", "checkpoint", "export",
                                                      "metrics.jsonl"]
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["config"]["name"] == "bsqaudio-tiny"
    ema = load_file(str(out / "checkpoint" / "ema.safetensors"))
    exported = load_file(str(out / "export" / "model.safetensors"))
    assert ema.keys() == exported.keys()
    assert all(torch.equal(ema[k], exported[k]) for k in ema)


# -- the exported model ---------------------------------------------------------------------------

def test_exported_model_round_trips_a_clip(trained_run, tmp_path):
    out, _ = trained_run
    clip = tmp_path / "in.wav"
    sf.write(clip, make_clip("chirp", 2.5, 7), RATE)
    decoded = tmp_path / "out.wav"
    result = subprocess.run(cli("roundtrip", clip, "-o", decoded, "--model", out / "export",
                                "--device", "cpu", "--quiet"),
                            capture_output=True, env=cli_env(), timeout=180)
    assert result.returncode == 0, result.stderr.decode()
    info = sf.info(str(decoded))
    assert info.samplerate == RATE and info.frames == int(2.5 * RATE)


def test_export_command_writes_float16_weights_that_load(trained_run, tmp_path):
    out, _ = trained_run
    target = tmp_path / "half"
    result = subprocess.run(cli("export", out, "-o", target, "--dtype", "float16"),
                            capture_output=True, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    with safe_open(str(target / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    loaded = bsqaudio.from_pretrained(target)
    assert loaded.model.config == preset("tiny")
    ema = load_file(str(out / "checkpoint" / "ema.safetensors"))
    for name, value in loaded.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ema[name].half().float(), rtol=0, atol=0)


# -- resuming -------------------------------------------------------------------------------------

def stop_after(monkeypatch, updates: int, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to this process right after optimizer update number ``updates``: the loop's
    own handler then checkpoints at that step and returns, with the settings (and the
    learning-rate schedule) of the full run."""
    real = loop.update_ema
    count = {"n": 0}

    def counting(ema, model, decay):
        real(ema, model, decay)
        count["n"] += 1
        if count["n"] == updates:
            # Never kill (or KeyboardInterrupt) the test session itself if the loop forgot its handler.
            handler = signal.getsignal(sig)
            assert callable(handler) and handler is not signal.default_int_handler, \
                f"the loop handles no {signal.Signals(sig).name}"
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(loop, "update_ema", counting)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, corpus, monkeypatch):
    cache = str(tmp_path / "cache")  # decoded once, shared by both runs
    whole = settings(tmp_path / "whole", corpus, steps=6, cache=cache)
    train(whole)

    split = settings(tmp_path / "split", corpus, steps=6, cache=cache)
    with monkeypatch.context() as patch:
        stop_after(patch, 3)
        train(split)
    stopped = tmp_path / "split" / "checkpoint"
    assert json.loads((stopped / "meta.json").read_text())["step"] == 3
    assert not (tmp_path / "split" / "export").exists()
    train(split, resume=True)

    a, b = tmp_path / "whole" / "checkpoint", stopped
    assert json.loads((b / "meta.json").read_text())["step"] == 6
    for name in ("model.safetensors", "ema.safetensors"):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys()
        unequal = [k for k in left if not torch.equal(left[k], right[k])]
        assert not unequal, f"{name}: {unequal}"
    opt_a = load_trainer_state(a / "trainer.safetensors")["optimizer"]["state"]
    opt_b = load_trainer_state(b / "trainer.safetensors")["optimizer"]["state"]
    assert all(torch.equal(opt_a[i][key], opt_b[i][key]) for i in opt_a for key in opt_a[i])
    # The weights did move: equality is not the trivial one of an untrained model.
    torch.manual_seed(0)
    initial = AudioBSQ(preset("tiny")).state_dict()
    final = load_file(str(a / "model.safetensors"))
    assert not torch.equal(initial["patch_embed.weight"], final["patch_embed.weight"])


def test_sigint_stops_like_sigterm_and_resume_finishes(tmp_path, corpus, monkeypatch):
    """Ctrl-C (SIGINT) is a clean stop too: a checkpoint at the step reached, no export, and
    ``--resume`` finishes the run (SIGTERM through the CLI: the next test)."""
    run = settings(tmp_path / "run", corpus, steps=4)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    with monkeypatch.context() as patch:
        stop_after(patch, 2, signal.SIGINT)
        train(run)
    checkpoint = tmp_path / "run" / "checkpoint"
    assert json.loads((checkpoint / "meta.json").read_text())["step"] == 2
    assert not (tmp_path / "run" / "export").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    train(run, resume=True)
    assert json.loads((checkpoint / "meta.json").read_text())["step"] == 4
    bsqaudio.from_pretrained(tmp_path / "run" / "export")


def test_sigterm_leaves_a_valid_checkpoint_and_resume_continues(tmp_path, corpus):
    train_dir, val_dir = corpus
    run = tmp_path / "run"
    common = [train_dir, "--val-dir", val_dir, "--out", run, "--preset", "tiny",
              "--batch-size", "2", "--warmup", "5", "--device", "cpu",
              "--val-every", "1000000", "--checkpoint-every", "1000000"]
    log = (tmp_path / "log.txt").open("wb")
    process = subprocess.Popen(cli("train", *common, "--steps", "1000000"), stdout=log,
                               stderr=subprocess.STDOUT, env=cli_env())
    try:
        deadline = time.time() + 150
        while time.time() < deadline and process.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and '"kind": "train"' in metrics.read_text():
                break  # at least 10 optimizer steps done (the loop logs every 10)
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / "log.txt").read_text()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "log.txt").read_text()
    assert code == 0, output
    assert "Traceback" not in output
    meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    step = meta["step"]
    assert step >= 10
    assert f"stopped at step {step}; continue with --resume" in output
    assert not list(run.glob("*.tmp")) and not list(run.glob("*.old"))
    assert not (run / "export").exists()
    model = AudioBSQ(preset("tiny"))
    model.load_state_dict(load_file(str(run / "checkpoint" / "model.safetensors")))
    model.load_state_dict(load_file(str(run / "checkpoint" / "ema.safetensors")))

    result = subprocess.run(cli("train", *common, "--steps", step + 2, "--resume"),
                            capture_output=True, env=cli_env(), timeout=180)
    assert result.returncode == 0, result.stderr.decode()
    assert f"resumed from step {step}" in result.stdout.decode()
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == step + 2
    assert (run / "export" / "model.safetensors").exists()


def test_resume_keeps_the_runs_settings_unless_given_again(tmp_path, corpus):
    """A resume that repeats only the inputs, --out and a new --steps/--lr continues with the run's
    --codebook-group and --codebook-weight (not the defaults), and says what it changed."""
    from typer.testing import CliRunner

    from bsqaudio.cli import app

    train_dir, val_dir = corpus
    run = tmp_path / "run"
    common = [str(train_dir), "--val-dir", str(val_dir), "--out", str(run), "--device", "cpu",
              "--batch-size", "2", "--warmup", "1", "--val-every", "1000000"]
    first = CliRunner().invoke(app, ["train", *common, "--preset", "tiny", "--steps", "2", "--lr", "1e-3",
                                     "--codebook-group", "2", "--codebook-weight", "0.5"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, ["train", *common, "--steps", "3", "--lr", "5e-4", "--resume"])
    assert second.exit_code == 0, second.output
    assert "resuming with changed settings: steps 2 -> 3; lr 0.001 -> 0.0005" in second.output
    meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3
    kept = {k: meta["settings"][k] for k in ("preset", "codebook_group", "codebook_weight", "lr")}
    assert kept == {"preset": "tiny", "codebook_group": 2, "codebook_weight": 0.5, "lr": 5e-4}


def test_resumed_settings_take_the_machine_from_the_new_command():
    """Device and wall-time budget belong to the machine: a GPU run resumed on a CPU does not ask
    for CUDA again; everything else not given comes from the checkpoint."""
    given = TrainSettings(inputs=["data"], out="run", device="auto", batch_size=8)
    stored = {**asdict(TrainSettings(inputs=["data"], out="run")), "device": "cuda", "max_minutes": 25.0,
              "batch_size": 64, "freeze_encoder": True, "removed_in_a_later_version": 1}
    merged, changes = resumed_settings(given, stored, explicit={"inputs", "out"})
    assert (merged.device, merged.max_minutes) == ("auto", None)
    assert (merged.batch_size, merged.freeze_encoder) == (64, True)
    assert changes == []


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, corpus):
    with pytest.raises(BsqAudioError, match="no checkpoint"):
        train(settings(tmp_path / "fresh", corpus), resume=True)


# -- torchrun -------------------------------------------------------------------------------------

def test_torchrun_two_cpu_ranks_write_one_checkpoint(tmp_path, corpus):
    train_dir, val_dir = corpus
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "bsqaudio", "train", str(train_dir),
               "--val-dir", str(val_dir), "--out", str(run), "--preset", "tiny", "--steps", "3",
               "--batch-size", "2", "--warmup", "1", "--checkpoint-every", "2", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, env=cli_env(), timeout=300)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "world 2" in output
    assert sorted(p.name for p in run.iterdir()) == ["cache", "checkpoint", "export",
                                                      "metrics.jsonl"]
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == 3
    trainer = load_trainer_state(run / "checkpoint" / "trainer.safetensors")
    assert len(trainer["generators"]) == 2  # one RNG state per rank
    assert not torch.equal(trainer["generators"][0], trainer["generators"][1])
    assert [r["step"] for r in records(run, "val")] == [0, 3]  # rank 0 alone validates
    bsqaudio.from_pretrained(run / "export")


# -- unreadable inputs ----------------------------------------------------------------------------

def test_unreadable_inputs_are_reported_and_skipped(tmp_path, corpus, capsys):
    train_dir, val_dir = corpus
    mixed = tmp_path / "mixed"
    shutil.copytree(train_dir, mixed)
    (mixed / "x.wav").write_text("this is not audio\n")
    (mixed / "empty.flac").write_bytes(b"")
    out = tmp_path / "run"
    train(settings(out, (mixed, val_dir), steps=2))
    printed = capsys.readouterr().out
    skipped = [line for line in printed.splitlines() if line.startswith("skipping")]
    assert len(skipped) == 2, printed
    assert any("x.wav" in line for line in skipped) and any("empty.flac" in line for line in skipped)
    assert "cached 8 files" in printed and "skipped 2" in printed
    index = json.loads((out / "cache" / "train" / "index.json").read_text())
    assert index["skipped"] == 2 and len(index["names"]) == 8
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 2


def test_no_readable_training_audio_is_a_user_error(tmp_path, corpus):
    _, val_dir = corpus
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_text("not audio")
    with pytest.raises(BsqAudioError, match="no readable audio"):
        train(settings(tmp_path / "run", (bad, val_dir)))


# -- checkpoints: no pickle, and a damaged file is one line ---------------------------------------

class Payload:
    """Unpickling this touches ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_keeps_the_trainer_state_without_pickle(tmp_path):
    torch.manual_seed(0)
    model, ema = AudioBSQ(preset("tiny")), AudioBSQ(preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.99))
    model(torch.rand(1, 1024, 128) * 2 - 1).reconstruction.mean().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "generators": [torch.Generator().get_state()]}
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, 7, model, ema, state, {"config": model.config.to_dict()})
    assert sorted(p.name for p in folder.iterdir()) == ["ema.safetensors", "meta.json",
                                                         "model.safetensors", "trainer.safetensors"]
    marker = tmp_path / "code-ran"  # a pickle left in the folder is never opened
    torch.save({"optimizer": Payload(marker)}, folder / "trainer.pt")
    restored, meta = load_checkpoint(folder, AudioBSQ(preset("tiny")), AudioBSQ(preset("tiny")))
    assert not marker.exists() and meta["step"] == 7
    assert torch.equal(restored["generators"][0], state["generators"][0])
    fresh = torch.optim.AdamW(AudioBSQ(preset("tiny")).parameters())
    fresh.load_state_dict(restored["optimizer"])  # int keys, tuples and step counters survive
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for index, entry in optimizer.state_dict()["state"].items():
        assert all(torch.equal(entry[k], fresh.state_dict()["state"][index][k]) for k in entry)


def _damage(folder: Path, how: str) -> None:
    if how == "meta-not-json":
        (folder / "meta.json").write_bytes(b"\x00garbage{")
    elif how == "meta-no-step":
        (folder / "meta.json").write_text('{"settings": {}, "config": {}}')
    elif how == "meta-bad-config":
        meta = json.loads((folder / "meta.json").read_text())
        meta["config"]["n_mels"] = -3
        (folder / "meta.json").write_text(json.dumps(meta))
    elif how == "ema-truncated":
        data = (folder / "ema.safetensors").read_bytes()
        (folder / "ema.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "ema-other-model":
        torch.manual_seed(0)
        from safetensors.torch import save_file
        save_file(AudioBSQ(preset("small")).state_dict(), str(folder / "ema.safetensors"))
    elif how == "model-missing":
        (folder / "model.safetensors").unlink()
    elif how == "trainer-garbage":
        (folder / "trainer.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}  ")
    elif how == "trainer-no-tree":
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(folder / "trainer.safetensors"))


@pytest.mark.parametrize("how", ["meta-not-json", "meta-no-step", "ema-truncated", "ema-other-model",
                                 "model-missing", "trainer-garbage", "trainer-no-tree"])
def test_a_damaged_checkpoint_stops_resume_with_one_line(tmp_path, corpus, trained_run, how):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0] / "checkpoint", run / "checkpoint")
    shutil.copy(trained_run[0] / "metrics.jsonl", run / "metrics.jsonl")
    _damage(run / "checkpoint", how)
    result = subprocess.run(cli("train", corpus[0], "--out", run, "--resume", "--steps", "40"),
                            capture_output=True, env=cli_env(), timeout=180)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr
    assert str(run / "checkpoint") in stderr and stderr.strip().count("\n") == 0, stderr


@pytest.mark.parametrize("how", ["meta-not-json", "meta-bad-config", "ema-truncated", "ema-other-model"])
def test_a_damaged_checkpoint_stops_export_with_one_line(tmp_path, trained_run, how):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0] / "checkpoint", run / "checkpoint")
    _damage(run / "checkpoint", how)
    result = subprocess.run(cli("export", run), capture_output=True, env=cli_env(), timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr
    assert str(run / "checkpoint") in stderr and stderr.strip().count("\n") == 0, stderr
    assert not (run / "export").exists()


def test_interrupted_checkpoint_swap_falls_back_to_the_old_folder(tmp_path):
    torch.manual_seed(0)
    model, ema = AudioBSQ(preset("tiny")), AudioBSQ(preset("tiny"))
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, 5, model, ema, {"generators": []}, {})
    folder.rename(folder.with_name("checkpoint.old"))  # killed between the two renames
    _, meta = load_checkpoint(folder, AudioBSQ(preset("tiny")), AudioBSQ(preset("tiny")))
    assert meta["step"] == 5


# -- SpecAugment and the learning rate -----------------------------------------------------------

def test_spec_augment_masks_bands_and_is_deterministic():
    mel = torch.rand(3, 1024, 128) * 1.8 - 0.8  # never exactly -1
    original = mel.clone()
    first = spec_augment(mel, torch.Generator().manual_seed(5), 2, 40, 2, 12)
    again = spec_augment(mel, torch.Generator().manual_seed(5), 2, 40, 2, 12)
    other = spec_augment(mel, torch.Generator().manual_seed(6), 2, 40, 2, 12)
    assert torch.equal(mel, original)  # the input (the loss target) is left untouched
    assert torch.equal(first, again) and not torch.equal(first, other)
    masked = first == -1.0
    assert masked.any()
    assert torch.equal(first[~masked], mel[~masked])  # everything else unchanged
    for i in range(3):
        rows = masked[i].all(dim=1)  # time masks: whole frames
        cols = masked[i].all(dim=0)  # frequency masks: whole mel bins
        assert torch.equal(masked[i], rows[:, None] | cols[None, :])
        assert rows.sum() <= 2 * 40 and cols.sum() <= 2 * 12


def test_the_loss_target_is_the_clean_spectrogram(tmp_path, corpus, monkeypatch):
    seen = {"augmented": [], "clean": [], "model_in": [], "target": []}
    real_augment, real_loss = loop.spec_augment, loop.reconstruction_loss

    def spy_augment(mel, *args):
        seen["clean"].append(mel.clone())
        out = real_augment(mel, *args)
        seen["augmented"].append(out)
        return out

    def spy_loss(pred, target, kind, frames=None):
        seen["target"].append(target.clone())
        return real_loss(pred, target, kind, frames)

    real_forward = AudioBSQ.forward

    def spy_forward(self, mel, token_mask=None):
        if self.training:
            seen["model_in"].append(mel.clone())
        return real_forward(self, mel, token_mask)

    monkeypatch.setattr(loop, "spec_augment", spy_augment)
    monkeypatch.setattr(loop, "reconstruction_loss", spy_loss)
    monkeypatch.setattr(AudioBSQ, "forward", spy_forward)
    train(settings(tmp_path / "run", corpus, steps=2))
    assert len(seen["target"]) == len(seen["augmented"]) == len(seen["model_in"]) == 2
    names = ("clean", "augmented", "model_in", "target")
    for clean, augmented, model_in, target in zip(*(seen[k] for k in names), strict=True):
        assert torch.equal(model_in, augmented)
        assert torch.equal(target, clean)
        assert not torch.equal(augmented, clean)


def test_learning_rate_warmup_and_cosine():
    s = TrainSettings(inputs=[], out="", steps=1000, warmup=100, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(s, 0, 1) == pytest.approx(1e-5)
    assert learning_rate(s, 49, 1) == pytest.approx(5e-4)
    assert learning_rate(s, 99, 1) == pytest.approx(1e-3)
    assert learning_rate(s, 100, 1) == pytest.approx(1e-3)
    assert learning_rate(s, 550, 1) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(s, 1000, 1) == pytest.approx(1e-4)
    assert learning_rate(s, 5000, 1) == pytest.approx(1e-4)  # past the end: the floor
    values = [learning_rate(s, i, 1) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert learning_rate(s, 300, 8) == learning_rate(s, 300, 1)  # --lr ignores the world size


def test_lr_per_sample_scales_with_the_global_batch():
    s = TrainSettings(inputs=[], out="", steps=1000, warmup=0, batch_size=32, grad_accum=2,
                      lr=123.0, lr_per_sample=4e-7)
    assert learning_rate(s, 0, 1) == pytest.approx(4e-7 * 64)
    assert learning_rate(s, 0, 8) == pytest.approx(4e-7 * 32 * 2 * 8)
    assert learning_rate(s, 1000, 8) == pytest.approx(4e-7 * 512 * 0.1)


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    from bsqaudio.train.loop import drop_metrics_after

    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "val", "step": 0}] + [{"kind": "train", "step": s} for s in (10, 20, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    drop_metrics_after(path, 20)  # killed at 30, last checkpoint at 20
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 10, 20]


def test_discriminator_with_accumulation_and_l1_trains_and_resumes(tmp_path, corpus):
    run = tmp_path / "gan"
    s = settings(run, corpus, steps=4, discriminator=True, disc_start=2, grad_accum=2, loss="l1",
                 log_every=1, checkpoint_every=2)
    train(s)
    logged = records(run, "train")
    assert [r["gan"] != 0.0 for r in logged] == [False, False, True, True]  # starts at disc_start
    assert all(math.isfinite(r["disc"]) for r in logged)
    state = load_trainer_state(run / "checkpoint" / "trainer.safetensors")
    assert {"disc", "disc_optimizer"} <= set(state)
    train(settings(run, corpus, steps=6, discriminator=True, disc_start=2, grad_accum=2, loss="l1",
                   log_every=1, checkpoint_every=2), resume=True)
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4, 5, 6]


def test_init_from_starts_with_the_given_weights(tmp_path, corpus):
    first = tmp_path / "first"
    train(settings(first, corpus, steps=2))
    second = tmp_path / "second"
    train(settings(second, corpus, steps=1, init_from=str(first / "export"), lr=1e-12, warmup=1))
    before = load_file(str(first / "export" / "model.safetensors"))
    after = load_file(str(second / "checkpoint" / "model.safetensors"))
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before
               if before[k].is_floating_point() and "running" not in k)
    with pytest.raises(BsqAudioError, match="config differs"):
        train(settings(tmp_path / "third", corpus, steps=1, init_from=str(first / "export"),
                       config_overrides={"code_bits": 8}))


def test_freeze_encoder_trains_the_decoder_and_keeps_the_codes(tmp_path, corpus):
    """Everything that decides the codes (BatchNorm statistics included) leaves the run exactly as
    it came in, with the discriminator on too; the decoder side moves, and a clip encodes to the
    same tokens with both models."""
    first = tmp_path / "first"
    train(settings(first, corpus, steps=2))
    second = tmp_path / "second"
    train(settings(second, corpus, steps=3, init_from=str(first / "export"), freeze_encoder=True,
                   discriminator=True, disc_start=1, spec_augment=False))
    clip = torch.from_numpy(make_clip("chirp", 12.0, 7))
    tokens = [bsqaudio.Codec.from_pretrained(run / "export", device="cpu").encode(clip, RATE).indices
              for run in (first, second)]
    assert torch.equal(*tokens)
    before = load_file(str(first / "export" / "model.safetensors"))
    after = load_file(str(second / "export" / "model.safetensors"))
    encoder_side = [k for k in before if k.split(".")[0] in ("patch_embed", "encoder", "encoder_pos", "quant_embed")]
    assert any("running_mean" in k for k in encoder_side)
    assert all(torch.equal(before[k], after[k]) for k in encoder_side)
    decoder_side = [k for k in before if k.startswith(("decoder.", "head."))]
    assert any(not torch.equal(before[k], after[k]) for k in decoder_side)
    with pytest.raises(BsqAudioError, match="needs --init-from"):
        train(settings(tmp_path / "third", corpus, steps=1, freeze_encoder=True))


def test_crops_come_only_from_the_chosen_files(tmp_path):
    up, down = tmp_path / "up.wav", tmp_path / "down.wav"
    sf.write(up, np.full(RATE * 3, 0.5, dtype=np.float32), RATE)
    sf.write(down, np.full(RATE * 3, -0.5, dtype=np.float32), RATE)
    cache = AudioCache.build([up, down], tmp_path / "cache", RATE, log=lambda *_: None)
    first = torch.tensor([name.endswith("up.wav") for name in cache.names])
    wave, _ = cache.random_crops(16, RATE, torch.Generator().manual_seed(0), among=first)
    assert (wave > 0).all()
    wave, _ = cache.random_crops(16, RATE, torch.Generator().manual_seed(0), among=~first)
    assert (wave < 0).all()


def test_batch_per_input_draws_every_batch_from_one_input(tmp_path, corpus, monkeypatch):
    """Two input folders: each batch's files all come from one of them, and both are used."""
    train_dir, val_dir = corpus
    speech, music = tmp_path / "speech", tmp_path / "music"
    speech.mkdir()
    music.mkdir()
    for i, clip in enumerate(sorted(train_dir.iterdir())):
        shutil.copy(clip, (speech if i % 2 else music) / clip.name)
    chosen = []
    original = AudioCache.random_crops

    def recording(self, count, length, generator, among=None, **kwargs):
        chosen.append({Path(n).parent.name for n, k in zip(self.names, among.tolist(), strict=True) if k})
        return original(self, count, length, generator, among=among, **kwargs)

    monkeypatch.setattr(AudioCache, "random_crops", recording)
    train(settings(tmp_path / "run", corpus, inputs=[str(speech), str(music)], steps=8, batch_per_input=True))
    assert all(len(folders) == 1 for folders in chosen)
    assert {"speech", "music"} == set().union(*chosen)
    with pytest.raises(BsqAudioError, match="two or more inputs"):
        train(settings(tmp_path / "one", corpus, inputs=[str(speech)], steps=1, batch_per_input=True))


def test_codebook_weight_scales_the_bit_balance_term(tmp_path, corpus):
    """The logged quantizer loss holds -weight x codebook entropy (at most ln 2 per bit): the same
    first step with weight 0 and weight 1 differs by that entropy, which is near ln 2 at init."""
    first_losses = []
    for weight in (0.0, 1.0):
        run = tmp_path / f"w{weight}"
        train(settings(run, corpus, steps=1, log_every=1, codebook_weight=weight))
        first_losses.append(records(run, "train")[0]["quant"])
    assert 0.3 < first_losses[0] - first_losses[1] <= math.log(2) + 1e-6


def test_losses_count_only_the_patches_that_hold_audio(tmp_path):
    """A 1 s clip in a 10.24 s crop: the crop reports its real length, which marks its first
    7 patch rows (of 64) as real; the reconstruction loss ignores errors in the padding."""
    config = preset("tiny")
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1, RATE)
    cache = AudioCache.build([clip], tmp_path / "cache", RATE, log=lambda *_: None)
    segment = config.window_samples - config.hop_length + config.n_fft
    wave, real = cache.random_crops(2, segment, torch.Generator().manual_seed(0))
    assert real.tolist() == [RATE, RATE]
    assert wave[:, RATE:].abs().max() == 0 and wave[:, :RATE].abs().max() > 0
    frames, rows = real_audio_extent(real, config)
    assert frames.tolist() == [(RATE - config.n_fft // 2 + config.hop_length - 1) // config.hop_length] * 2
    mask = real_token_mask(rows, config)
    assert mask.shape == (2, config.num_patches)
    assert mask.sum(1).tolist() == [int(rows[0]) * config.grid_freq] * 2
    assert mask[:, : config.grid_freq].all() and not mask[:, -config.grid_freq:].any()

    target = torch.zeros(2, config.window_frames, config.n_mels)
    pred = target.clone()
    pred[:, int(frames[0]):] = 1.0  # wrong only in the padding
    assert reconstruction_loss(pred, target, "mse", frames) == 0
    assert reconstruction_loss(pred, target, "mse") > 0.5


def test_codebook_group_is_checked_and_used(tmp_path, corpus):
    with pytest.raises(BsqAudioError, match="--codebook-group"):
        train(settings(tmp_path / "bad", corpus, steps=1, codebook_group=5))
    run = tmp_path / "grouped"
    train(settings(run, corpus, steps=1, log_every=1, codebook_group=2))
    assert math.isfinite(records(run, "train")[0]["quant"])


# -- run folders and small folders ----------------------------------------------------------------

def test_a_new_run_into_a_run_folder_needs_resume_or_force(tmp_path, corpus):
    run = tmp_path / "run"
    train(settings(run, corpus, steps=2, log_every=1))
    before = (run / "checkpoint" / "meta.json").read_bytes()
    with pytest.raises(BsqAudioError, match="already holds a training run .*--resume.*--force"):
        train(settings(run, corpus, steps=2, log_every=1))
    assert (run / "checkpoint" / "meta.json").read_bytes() == before
    train(settings(run, corpus, steps=3, log_every=1), force=True)
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3]  # one series, not two


def test_a_small_folder_still_gets_a_validation_file(tmp_path, capsys):
    folder = tmp_path / "six"
    folder.mkdir()
    for i in range(6):
        sf.write(folder / f"clip{i}.wav", make_clip("tone", 2.0, i), RATE)
    run = tmp_path / "run"
    train(TrainSettings(inputs=[str(folder)], out=str(run), preset="tiny", steps=1, batch_size=2, warmup=1,
                        val_every=10 ** 6, checkpoint_every=10 ** 6, log_every=10 ** 6, device="cpu"))
    printed = capsys.readouterr().out
    assert "validating on" in printed and "no file fell in --val-fraction" in printed
    assert len(json.loads((run / "cache" / "val" / "index.json").read_text())["names"]) == 1


def test_plot_writes_the_training_figures(tmp_path, corpus):
    pytest.importorskip("matplotlib")
    run = tmp_path / "plotted"
    train(settings(run, corpus, steps=3, plot=True, val_every=3, log_every=1, discriminator=True,
                   disc_start=1, loss="l1"))
    for name in ("losses.png", "val_spectrogram.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_validation_split_does_not_move_with_the_corpus():
    from bsqaudio.train.data import validation_rank

    names = [f"clip{i}.flac" for i in range(200)]
    here = [validation_rank(Path("/data/corpus") / n) for n in names]
    assert here == [validation_rank(Path("/mnt/copy/of/corpus") / n) for n in names]
    assert 0.0 < min(here) < 0.05 < max(here) < 1.0  # a spread, not a constant


# -- a shallower decoder trained to copy a deeper one (--distill-from) ------------------------------

def test_kept_blocks_decode_as_the_same_blocks_of_the_original():
    torch.manual_seed(0)
    config = dataclasses.replace(preset("tiny"), decoder_layers=3)
    model = AudioBSQ(config).eval()
    for block in model.decoder.blocks:  # LayerScale starts small: make every block matter
        for scale in (block.attn_scale, block.conv_scale, block.ffn_scale):
            scale.scale.data.fill_(1.0)
    smaller = keep_decoder_blocks(model, [2, 0]).eval()
    assert smaller.config.decoder_layers == 2
    assert code_space_id(smaller) == code_space_id(model)
    codes = torch.randint(0, 2, (2, config.num_patches, config.code_bits)).float() * 2 - 1
    with torch.no_grad():
        x = model.post_quant_embed(codes) + model.decoder_pos
        x = model.decoder.blocks[0](model.decoder.blocks[2](x))
        by_hand = model.head(model.decoder.norm(x))
        kept = smaller.head(smaller.decoder(smaller.post_quant_embed(codes) + smaller.decoder_pos))
    torch.testing.assert_close(kept, by_hand)
    with pytest.raises(BsqAudioError, match="distinct"):
        keep_decoder_blocks(model, [0, 0])
    with pytest.raises(BsqAudioError, match="distinct"):
        keep_decoder_blocks(model, [3])


def test_distillation_brings_the_student_towards_the_teacher_and_keeps_the_codes(tmp_path, corpus):
    """Without Conformer convolutions: their BatchNorm statistics, re-estimated on batches of 2
    over a dozen steps, would swamp what so short a run can show."""
    deep = tmp_path / "deep"
    train(settings(deep, corpus, steps=3, config_overrides={"decoder_layers": 2, "conv": False}))
    teacher = load_pretrained(deep / "export").model
    student_start = tmp_path / "start"
    start = keep_decoder_blocks(teacher, [1])
    torch.manual_seed(1)
    torch.nn.init.normal_(start.head.weight, std=0.05)  # a start clearly off the teacher
    save_pretrained(start, student_start)
    common = dict(steps=12, lr=3e-3, init_from=str(student_start), freeze_encoder=True, spec_augment=False,
                  config_overrides={"conv": False})
    train(settings(tmp_path / "student", corpus, distill_from=str(deep / "export"), **common))
    train(settings(tmp_path / "on-truth", corpus, **common))
    clip = torch.from_numpy(make_clip("chirp", 12.0, 3))
    codecs = {name: bsqaudio.Codec.from_pretrained(folder, device="cpu")
              for name, folder in (("teacher", deep / "export"), ("start", student_start),
                                   ("student", tmp_path / "student" / "export"),
                                   ("on-truth", tmp_path / "on-truth" / "export"))}
    codes = codecs["teacher"].encode(clip, RATE)
    assert all(torch.equal(codec.encode(clip, RATE).indices, codes.indices) for codec in codecs.values())
    mel = {name: codec.decode_mel(codes).log10() for name, codec in codecs.items()}
    distance = {name: float((mel[name] - mel["teacher"]).abs().mean()) for name in ("start", "student", "on-truth")}
    assert distance["student"] < 0.85 * distance["start"]
    assert distance["student"] < 0.85 * distance["on-truth"]  # it learned the teacher, not the truth


def test_distillation_refuses_a_teacher_of_other_codes_or_a_trainable_encoder(tmp_path, corpus):
    first, other = tmp_path / "first", tmp_path / "other"
    train(settings(first, corpus, steps=1))
    train(settings(other, corpus, steps=1, seed=5))
    with pytest.raises(BsqAudioError, match="another code space"):
        train(settings(tmp_path / "a", corpus, steps=1, init_from=str(first / "export"), freeze_encoder=True,
                       distill_from=str(other / "export")))
    with pytest.raises(BsqAudioError, match="needs --freeze-encoder"):
        train(settings(tmp_path / "b", corpus, steps=1, init_from=str(first / "export"),
                       distill_from=str(first / "export")))
