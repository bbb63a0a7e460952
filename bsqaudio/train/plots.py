"""Training figures: loss curves from ``metrics.jsonl`` and a validation clip before/after."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bsqaudio.audio import MelFrontend
from bsqaudio.model import AudioBSQ
from bsqaudio.plots import _pyplot, plot_spectrograms


@torch.no_grad()
def plot_run(out: Path, model: AudioBSQ, frontend: MelFrontend, wave_1s: torch.Tensor,
             device: torch.device) -> None:
    """Write ``out/losses.png`` and ``out/val_spectrogram.png``."""
    plt = _pyplot()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    if train:
        left.plot([r["step"] for r in train], [r["recon"] for r in train], label="recon")
        left.plot([r["step"] for r in train], [r["quant"] for r in train], label="quantizer")
    left.set_xlabel("step")
    left.set_title("training loss")
    if train:
        left.legend()
    right.plot([r["step"] for r in val], [r["mel_mae_db"] for r in val], marker="o")
    right.set_xlabel("step")
    right.set_title("validation mel MAE (dB)")
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)
    plt.close(fig)
    target, _ = frontend.normalize(frontend.power_mel(wave_1s.to(device)))
    was_training = model.training
    model.eval()
    pred = model.decode_indices(model.encode(target).indices).float()
    model.train(was_training)
    half = model.config.db_range / 2
    plot_spectrograms([("validation input", ((target[0] - 1) * half).cpu()),
                       ("reconstruction", ((pred[0] - 1) * half).cpu())],
                      out / "val_spectrogram.png")
