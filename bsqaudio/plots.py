"""PNG figures (matplotlib, an optional extra): spectrograms before and after a round trip."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import write_bytes_atomic


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BsqAudioError("plotting needs matplotlib: pip install 'bsqaudio[plot]'") from None
    return plt


def plot_spectrograms(panels: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """One (frames, n_mels) dB spectrogram per row, titled, saved as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3 * len(panels)), squeeze=False)
    for ax, (title, db_tf) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(db_tf.T.numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0,
                          cmap="magma", interpolation="nearest")
        ax.set_title(title)
        ax.set_ylabel("mel bin")
        fig.colorbar(image, ax=ax, label="dB re window peak")
    axes[-1, 0].set_xlabel("frame (10 ms)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())


def plot_roundtrip(codec, codes, path: Path, source_wave: torch.Tensor | None = None) -> None:
    """Input (re-analysed from the decoded file's source) above the decoded spectrogram."""
    mel = codec.decode_mel(codes)
    frames = codec.frontend.num_frames(codes.num_samples)
    gains = codes.gains_db.repeat_interleave(codec.config.window_frames)[: mel.shape[0]]
    decoded_db = (10 * torch.log10(mel.clamp_min(1e-10)) - gains[:, None]).clamp(-80, 0)[:frames]
    panels = [(f"decoded ({codes.bitrate:.0f} bit/s)", decoded_db)]
    if source_wave is not None:
        norm, _ = codec.frontend.analyze(source_wave)
        source_db = ((norm - 1.0) * codec.config.db_range / 2).reshape(-1, codec.config.n_mels)
        panels.insert(0, ("input", source_db[:frames]))
    plot_spectrograms(panels, path)


def plot_eval(report: dict, path: Path) -> None:
    """Bar chart of the mean metrics: bsqaudio beside oracle Griffin-Lim and any decoded folders."""
    plt = _pyplot()
    mean = report["mean"]
    systems = [("bsqaudio", mean["codec"])] + ([("oracle", mean["oracle"])] if "oracle" in mean else [])
    systems += list(mean.get("decoded", {}).items())
    keys = [k for k in ("mel_mae_db", "mrstft", "stoi", "pesq_wb", "distillmos", "dnsmos_ovrl")
            if mean["codec"].get(k) is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.bar([name for name, _ in systems], [m.get(key) or 0.0 for _, m in systems],
               color=[f"C{i}" for i in range(len(systems))])
        ax.set_title(key)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"{len(report['files'])} files; bsqaudio {mean['bitrate_bps']:.0f} bit/s of codes")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())
