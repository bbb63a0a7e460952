"""Quality measures of decoded audio against a reference, both (T,) float at 16 kHz.

Spectral measures (mel error, multi-resolution STFT distance) judge what a mel codec can keep;
STOI and wideband PESQ (optional packages ``pystoi`` and ``pesq``) judge speech as listeners do.
SI-SDR judges the waveform, phase included, so every phase-free decoder (Griffin-Lim, a vocoder)
scores far below zero on it whatever it sounds like: ``benchmarks/quality.py`` reports it for
waveform codecs, ``all_metrics`` (what ``bsqaudio eval`` shows) leaves it out.
"""

from __future__ import annotations

import contextlib
import io
import math

import torch

from bsqaudio.dsp.mel import MelFrontend

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def _align(reference: torch.Tensor, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(reference.shape[-1], decoded.shape[-1])
    return reference[..., :n].float(), decoded[..., :n].float()


def mel_errors(reference: torch.Tensor, decoded: torch.Tensor, frontend: MelFrontend
               ) -> tuple[float, float]:
    """(MAE in dB, MSE in dB^2) between log-mels, each frame floored at 80 dB below its window's
    reference peak, over the frames that hold audio."""
    reference, decoded = _align(reference, decoded)
    windows = frontend.config.num_windows(reference.shape[0])
    frames = frontend.config.num_frames(reference.shape[0])
    errors = []
    for first in range(0, windows, 8):
        count = min(8, windows - first)
        seg_ref = torch.stack([frontend.window_segment(reference, i) for i in range(first, first + count)])
        seg_dec = torch.stack([frontend.window_segment(decoded, i) for i in range(first, first + count)])
        db_ref = 10 * torch.log10(frontend.power_mel(seg_ref).clamp_min(1e-10))
        db_dec = 10 * torch.log10(frontend.power_mel(seg_dec).clamp_min(1e-10))
        floor = db_ref.amax(dim=(1, 2), keepdim=True) - frontend.config.db_range
        errors.append((torch.maximum(db_dec, floor) - torch.maximum(db_ref, floor)).reshape(-1, db_ref.shape[-1]))
    diff = torch.cat(errors)[:frames]
    return float(diff.abs().mean()), float((diff ** 2).mean())


def multi_resolution_stft_distance(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """Mean over resolutions of spectral convergence + mean |log magnitude difference|."""
    reference, decoded = _align(reference, decoded)
    total = 0.0
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft)
        mag_ref = torch.stft(reference, n_fft, hop, window=window, return_complex=True).abs()
        mag_dec = torch.stft(decoded, n_fft, hop, window=window, return_complex=True).abs()
        convergence = torch.linalg.norm(mag_ref - mag_dec) / torch.linalg.norm(mag_ref).clamp_min(1e-8)
        log_distance = (torch.log(mag_ref.clamp_min(1e-5)) - torch.log(mag_dec.clamp_min(1e-5))).abs().mean()
        total += float(convergence) + float(log_distance)
    return total / len(STFT_RESOLUTIONS)


def si_sdr(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """Scale-invariant signal-to-distortion ratio in dB."""
    reference, decoded = _align(reference, decoded)
    reference = reference - reference.mean()
    decoded = decoded - decoded.mean()
    scale = (decoded @ reference) / (reference @ reference).clamp_min(1e-12)
    target = scale * reference
    noise = decoded - target
    return float(10 * torch.log10((target @ target).clamp_min(1e-12) / (noise @ noise).clamp_min(1e-12)))


def stoi(reference: torch.Tensor, decoded: torch.Tensor, rate: int) -> float | None:
    """Short-time objective intelligibility (0..1), or None without ``pystoi``/too short."""
    try:
        from pystoi import stoi as _stoi
    except ImportError:
        return None
    reference, decoded = _align(reference, decoded)
    value = float(_stoi(reference.numpy(), decoded.numpy(), rate, extended=False))
    return value if math.isfinite(value) else None


def pesq_wb(reference: torch.Tensor, decoded: torch.Tensor, rate: int) -> float | None:
    """Wideband PESQ (MOS-LQO), or None without ``pesq`` or when PESQ finds no speech."""
    try:
        from pesq import pesq as _pesq
    except ImportError:
        return None
    if rate != 16000:
        return None
    reference, decoded = _align(reference, decoded)
    try:
        return float(_pesq(rate, reference.numpy(), decoded.numpy(), "wb"))
    except Exception:  # the pesq package raises its own types for "no utterances detected"
        return None


MOS_KEYS = ("distillmos", "dnsmos_ovrl")
_MOS_MODELS: dict = {}


def mos_available() -> bool:
    """Whether the no-reference speech-quality predictors are installed (``bsqaudio[mos]``)."""
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("distillmos", "speechmos", "onnxruntime"))


def naturalness(wave: torch.Tensor, rate: int) -> dict:
    """How natural (T,) speech sounds, predicted without a reference: DistillMOS (a distilled
    MOS predictor) and DNSMOS P.835 overall (Microsoft's, ONNX), both on a 1-5 scale with their
    weights inside their wheels (offline). Waveform metrics (STOI, PESQ) punish any phase that
    differs from the reference, which a phase-free (Griffin-Lim, vocoder) decoder never matches;
    these judge what a listener hears. Trained on speech: meaningless for music."""
    import numpy as np

    if rate != 16000:
        raise ValueError("the MOS predictors take 16 kHz audio")
    if "distillmos" not in _MOS_MODELS:
        import distillmos
        from speechmos import dnsmos

        with contextlib.redirect_stdout(io.StringIO()):  # it announces its weights on stdout (eval --json)
            model = distillmos.ConvTransformerSQAModel()
        model.eval()
        _MOS_MODELS.update(distillmos=model, dnsmos=dnsmos)
    x = wave.detach().float().cpu().clamp(-1.0, 1.0)
    with torch.no_grad():
        distill = float(_MOS_MODELS["distillmos"](x[None]).reshape(-1)[0])
    dns = float(_MOS_MODELS["dnsmos"].run(np.ascontiguousarray(x.numpy()), sr=rate)["ovrl_mos"])
    return {"distillmos": distill, "dnsmos_ovrl": dns}


def all_metrics(reference: torch.Tensor, decoded: torch.Tensor, frontend: MelFrontend) -> dict:
    """Mel error, MR-STFT distance, STOI and PESQ of ``decoded`` (aligned) against ``reference``."""
    rate = frontend.config.sample_rate
    mae, mse = mel_errors(reference, decoded, frontend)
    return {
        "mel_mae_db": mae,
        "mel_mse_db": mse,
        "mrstft": multi_resolution_stft_distance(reference, decoded),
        "stoi": stoi(reference, decoded, rate),
        "pesq_wb": pesq_wb(reference, decoded, rate),
    }
