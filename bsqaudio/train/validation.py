"""Validation measures of a tokenizer during training: which frames and patches of a crop hold
audio, mel error in dB and code usage."""

from __future__ import annotations

import math

import torch

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.model.quantizer import indices_to_bits
from bsqaudio.model.tokenizer import AudioBSQ
from bsqaudio.token_statistics import copied_bits


def real_audio_extent(crop_samples: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) samples of real audio in crops of ``config.segment_samples`` -> ((B,) mel frames,
    (B,) patch rows) that hold it. Crops start where a window's segment does (half an FFT before
    the window), so the real audio inside the window is shorter by that."""
    samples = (crop_samples + config.segment_start(0)).clamp(1, config.window_samples)
    frames = torch.ceil(samples / config.hop_length).long().clamp_min(1)
    return frames, torch.ceil(frames / config.patch_time).long()


def real_frame_mask(frames_b: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B,) mel frames that hold audio -> (B, num_frames) bool."""
    return torch.arange(num_frames, device=frames_b.device)[None, :] < frames_b[:, None]


def real_token_mask(rows_b: torch.Tensor, config) -> torch.Tensor:
    """(B,) patch rows that hold audio -> (B, N) bool over the time-major patch grid."""
    row_of_token = torch.arange(config.num_patches, device=rows_b.device) // config.grid_freq
    return row_of_token[None, :] < rows_b[:, None]


def mel_errors_db(pred_btf: torch.Tensor, target_btf: torch.Tensor, frames_b: torch.Tensor,
                  db_range: float) -> tuple[float, float]:
    """(MSE in dB^2, MAE in dB) over the frames that hold real audio."""
    scale = db_range / 2
    diff = (pred_btf.float() - target_btf.float()) * scale
    values = diff[real_frame_mask(frames_b.to(diff.device), diff.shape[1])]
    return float((values ** 2).mean()), float(values.abs().mean())


def code_usage(indices_bn: torch.Tensor, rows_b: torch.Tensor, grid_freq: int,
               code_bits: int) -> dict[str, float | list[float]]:
    """Bit balance per bit, distinct codes per window and perplexity over real-audio patches."""
    per_window, used = [], []
    for indices, rows in zip(indices_bn, rows_b.tolist(), strict=True):
        real = indices[: rows * grid_freq]
        used.append(real)
        per_window.append(real.unique().numel() / max(1, real.numel()))
    flat = torch.cat(used)
    bits = indices_to_bits(flat, code_bits).float()
    _, counts = flat.unique(return_counts=True)
    p = counts.float() / counts.sum()
    entropy = float(-(p * p.log()).sum())
    ones = bits.sum(0)
    return {
        "copied_bits": copied_bits(ones, bits.T @ bits, bits.shape[0]),
        "bit_balance": bits.mean(0).tolist(),
        "bit_balance_min": float(bits.mean(0).min()),
        "bit_balance_max": float(bits.mean(0).max()),
        "distinct_per_window": sum(per_window) / len(per_window),
        "perplexity": math.exp(entropy),
    }


@torch.no_grad()
def validation_metrics(model: AudioBSQ, frontend: MelFrontend, wave_bs: torch.Tensor, lengths: torch.Tensor,
             device: torch.device, autocast) -> dict:
    """Mel errors and code usage of ``model`` on fixed validation windows."""
    config = model.config
    was_training = model.training
    model.eval()
    target, _ = frontend.normalize(frontend.power_mel(wave_bs.to(device)))
    preds, indices = [], []
    for chunk in target.split(16):
        with autocast:
            q = model.encode(chunk)
            preds.append(model.decode_indices(q.indices).float())
        indices.append(q.indices.cpu())
    pred = torch.cat(preds)
    frames, rows = real_audio_extent(lengths, config)
    mse, mae = mel_errors_db(pred, target, frames, config.db_range)
    model.train(was_training)
    return {"mel_mse_db": mse, "mel_mae_db": mae,
            **code_usage(torch.cat(indices), rows, config.grid_freq, config.code_bits)}
