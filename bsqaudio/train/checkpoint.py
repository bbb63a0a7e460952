"""Resumable checkpoints: weights, optimizer and RNG state all as safetensors, never a pickle.

One folder, replaced atomically: a run killed at any moment leaves either the previous complete
checkpoint or the new one, never a mix. A checkpoint is as untrusted as any file a user passes
in (a run folder is copied between machines): every file in it fails with one line naming it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bsqaudio.errors import BsqAudioError

# The trainer state's tree (optimizer groups, step counters, the list of RNG states) is JSON in
# the safetensors header; its tensors are the file's tensors, named by their place in the tree.
TREE_KEY = "bsqaudio.trainer_tree"
MAX_META_BYTES = 1 << 20  # a real meta.json (settings and config) is about 2 KB


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    trainer_state: dict, meta: dict) -> None:
    """Write ``folder`` (model, ema, trainer state, meta) through a temporary sibling folder."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_cpu_state(model), str(tmp / "model.safetensors"))
    save_file(_cpu_state(ema), str(tmp / "ema.safetensors"))
    save_trainer_state(trainer_state, tmp / "trainer.safetensors")
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
    path = latest_checkpoint(folder) / "meta.json"
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise ValueError(f"longer than {MAX_META_BYTES} bytes")
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BsqAudioError(f"{path}: not a readable checkpoint description ({_first_line(err)})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("step"), int) and meta["step"] >= 0
            and isinstance(meta.get("settings", {}), dict) and isinstance(meta.get("config", {}), dict)):
        raise BsqAudioError(f"{path}: not a bsqaudio checkpoint description (no step, settings and config)")
    return meta


def load_checkpoint(folder: Path, model: torch.nn.Module, ema: torch.nn.Module) -> tuple[dict, dict]:
    """Restore weights in place; return (trainer_state, meta)."""
    folder = latest_checkpoint(folder)
    meta = read_meta(folder)
    restore_weights(model, folder / "model.safetensors")
    restore_weights(ema, folder / "ema.safetensors")
    return load_trainer_state(folder / "trainer.safetensors"), meta


def restore_weights(module: torch.nn.Module, path: Path) -> None:
    """Fill ``module`` from ``path``; a missing, corrupt or mismatched file is one line naming it."""
    try:
        module.load_state_dict(load_file(str(path)))
    except (OSError, SafetensorError) as err:
        raise BsqAudioError(f"{path}: not readable weights ({_first_line(err)})") from None
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
        raise BsqAudioError(f"{path}: weights of a different model than this run's "
                            f"({_first_line(err)})") from None


def save_trainer_state(state: dict, path: Path) -> None:
    """Write a tree of dicts, lists, numbers, strings and tensors (optimizer and RNG states)."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(node, where: str):
        if isinstance(node, torch.Tensor):
            tensors[where] = node.detach().cpu().contiguous()
            return {"tensor": where}
        if isinstance(node, dict):  # keys kept with their type: optimizer state is keyed by int
            return {"dict": [[key, encode(value, f"{where}/{key}")] for key, value in node.items()]}
        if isinstance(node, (list, tuple)):
            kind = "list" if isinstance(node, list) else "tuple"
            return {kind: [encode(value, f"{where}/{i}") for i, value in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return {"value": node}
        raise TypeError(f"trainer state: cannot store a {type(node).__name__} at {where}")

    tree = encode(state, "")
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(tree)})


def load_trainer_state(path: Path) -> dict:
    """The tree ``save_trainer_state`` wrote; anything else is one line naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tree = json.loads((handle.metadata() or {})[TREE_KEY])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return _decode(tree, tensors)
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as err:
        raise BsqAudioError(f"{path}: not a valid bsqaudio trainer state ({_first_line(err)})") from None


def _decode(node, tensors: dict[str, torch.Tensor]):
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("malformed tree")
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {key: _decode(value, tensors) for key, value in body}
    if kind in ("list", "tuple"):
        items = [_decode(value, tensors) for value in body]
        return items if kind == "list" else tuple(items)
    if kind == "value" and (body is None or isinstance(body, (bool, int, float, str))):
        return body
    raise ValueError(f"unknown node {kind!r}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def export_checkpoint(run_dir: Path, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the EMA weights of ``run_dir``'s latest checkpoint as a loadable model folder."""
    from bsqaudio.hub import save_pretrained
    from bsqaudio.model import AudioBSQ, ModelConfig

    try:
        folder = latest_checkpoint(run_dir / "checkpoint")
    except BsqAudioError:
        raise BsqAudioError(f"{run_dir}: no checkpoint to export") from None
    meta = read_meta(folder)
    try:
        config = ModelConfig.from_dict(meta.get("config"))
    except BsqAudioError as err:
        raise BsqAudioError(f"{folder / 'meta.json'}: {err}") from None
    model = AudioBSQ(config)
    restore_weights(model, folder / "ema.safetensors")
    return save_pretrained(model, out, dtype=dtype)
