"""Resumable checkpoints: weights as safetensors, optimizer and RNG state via ``weights_only``.

One folder, replaced atomically: a run killed at any moment leaves either the previous complete
checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bsqaudio.errors import BsqAudioError


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    trainer_state: dict, meta: dict) -> None:
    """Write ``folder`` (model, ema, trainer state, meta) through a temporary sibling folder."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_cpu_state(model), str(tmp / "model.safetensors"))
    save_file(_cpu_state(ema), str(tmp / "ema.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path:
    """``folder``, or its ``.old`` sibling where a run was killed between ``save_checkpoint``'s two renames."""
    if (folder / "meta.json").exists():
        return folder
    old = folder.with_name(folder.name + ".old")
    if (old / "meta.json").exists():
        return old
    raise BsqAudioError(f"{folder}: no checkpoint to resume from")


def read_meta(folder: Path) -> dict:
    """The step, settings and model config that the latest checkpoint in ``folder`` was saved with."""
    return json.loads((latest_checkpoint(folder) / "meta.json").read_text())


def load_checkpoint(folder: Path, model: torch.nn.Module, ema: torch.nn.Module) -> tuple[dict, dict]:
    """Restore weights in place; return (trainer_state, meta)."""
    folder = latest_checkpoint(folder)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    try:
        trainer_state = torch.load(folder / "trainer.pt", weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # weights_only refuses anything but tensors and plain containers: a tampered or corrupt
        # file ends here instead of running code.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BsqAudioError(f"{folder / 'trainer.pt'}: not a valid bsqaudio trainer state ({first})") from None
    return trainer_state, read_meta(folder)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def export_checkpoint(run_dir: Path, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the EMA weights of ``run_dir``'s latest checkpoint as a loadable model folder."""
    from bsqaudio.hub import save_pretrained
    from bsqaudio.model import AudioBSQ, ModelConfig

    folder = run_dir / "checkpoint"
    if not (folder / "meta.json").exists():
        raise BsqAudioError(f"{run_dir}: no checkpoint to export")
    meta = json.loads((folder / "meta.json").read_text())
    model = AudioBSQ(ModelConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(folder / "ema.safetensors")))
    return save_pretrained(model, out, dtype=dtype)
