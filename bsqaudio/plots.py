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


def mel_db(frontend, wave: torch.Tensor) -> torch.Tensor:
    """(T,) audio -> (frames, n_mels) log-mel power in dB, floored 80 dB below its peak."""
    power = frontend.power_mel(wave.float()[None])[0]
    db = 10 * torch.log10(power.clamp_min(1e-10))
    return db.clamp_min(float(db.max()) - 80.0)


def plot_roundtrip(frontend, source: torch.Tensor, decoded: torch.Tensor, path: Path, title: str) -> None:
    """Three panels over time (s) and frequency (Hz): the input's spectrogram, that of the audio
    written (Griffin-Lim artefacts included), and output minus input in dB."""
    plt = _pyplot()
    c = frontend.config
    length = min(source.shape[0], decoded.shape[0])
    before, after = mel_db(frontend, source[:length]), mel_db(frontend, decoded[:length])
    top = float(before.max())
    seconds = before.shape[0] * c.hop_length / c.sample_rate
    # Each mel band at its centre frequency: the peak of its triangular filter.
    centres = frontend.mel_fb.argmax(dim=0).float() * c.sample_rate / c.n_fft
    ticks = [i for i in range(0, c.n_mels, max(1, c.n_mels // 8))] + [c.n_mels - 1]
    panels = [("input", before, dict(vmin=top - 80, vmax=top, cmap="magma"), "dB"),
              ("decoded audio", after, dict(vmin=top - 80, vmax=top, cmap="magma"), "dB"),
              ("decoded - input", after - before, dict(vmin=-20, vmax=20, cmap="RdBu_r"), "dB difference")]
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), squeeze=False)
    for ax, (name, db, style, label) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(db.T.numpy(), origin="lower", aspect="auto", interpolation="nearest",
                          extent=(0.0, seconds, -0.5, c.n_mels - 0.5), **style)
        ax.set_title(name)
        ax.set_yticks(ticks, [f"{centres[i]:.0f}" for i in ticks])
        ax.set_ylabel("Hz (mel scale)")
        fig.colorbar(image, ax=ax, label=label)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())


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
