"""Training figures: loss curves from ``metrics.jsonl`` and a validation clip before/after."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.io.atomic import write_bytes_atomic
from bsqaudio.model import AudioBSQ
from bsqaudio.plots import _pyplot, plot_spectrograms

# Logged training terms, each on its own axis: their scales differ by orders of magnitude (the
# quantizer term is negative), so one shared axis flattened all but the largest.
TRAIN_TERMS = (("recon", "reconstruction"), ("quant", "quantizer"), ("gan", "generator (GAN)"),
               ("fm", "feature matching"), ("disc", "discriminator"))


@torch.no_grad()
def plot_run(out: Path, model: AudioBSQ, frontend: MelFrontend, wave_1s: torch.Tensor,
             device: torch.device, step: int) -> None:
    """Write ``out/losses.png`` and ``out/val_spectrogram.png`` (at ``step``)."""
    plt = _pyplot()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    terms = [(key, title) for key, title in TRAIN_TERMS if any(r.get(key) for r in train)]
    columns = min(3, len(terms) + 1)
    rows = -(-(len(terms) + 1) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(terms) + 1:]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes, terms, strict=False):
        ax.plot([r["step"] for r in train], [r[key] for r in train])
        ax.set_title(title)
        ax.set_xlabel("step")
    ax = axes[len(terms)]
    maes = [r["mel_mae_db"] for r in val]
    ax.plot([r["step"] for r in val], maes, marker="o")
    if maes:  # at least 1 dB of range: a 0.06 dB wiggle is not a cliff
        middle, spread = (max(maes) + min(maes)) / 2, max(max(maes) - min(maes), 1.0)
        ax.set_ylim(middle - 0.6 * spread, middle + 0.6 * spread)
    ax.set_title("validation mel MAE (dB)")
    ax.set_xlabel("step")
    fig.suptitle(f"{out.name}: step {step}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(out / "losses.png", buffer.getvalue())
    target, _ = frontend.normalize(frontend.power_mel(wave_1s.to(device)))
    was_training = model.training
    model.eval()
    pred = model.decode_indices(model.encode(target).indices).float()
    model.train(was_training)
    half = model.config.db_range / 2
    plot_spectrograms([(f"validation input (step {step})", ((target[0] - 1) * half).cpu()),
                       (f"reconstruction at step {step}", ((pred[0] - 1) * half).cpu())],
                      out / "val_spectrogram.png")
