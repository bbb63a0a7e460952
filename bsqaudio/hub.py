"""Weights on disk: ``model.safetensors`` + ``config.json``; ``load_pretrained`` finds them.

A name is resolved in order: nothing -> the default model embedded in the package; an existing
local folder or ``.safetensors`` file; otherwise a Hugging Face Hub repo id, fetched through
``hf_hub_download`` (which honours ``HF_HUB_OFFLINE``, the cache and a pinned revision). Weights
are safetensors only, never pickles, and must match their config exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import write_bytes_atomic
from bsqaudio.model import AudioBSQ, ModelConfig
from bsqaudio.model.config import MAX_CONFIG_BYTES, MAX_PARAMETERS

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
EMBEDDED_DIR = Path(__file__).parent / "weights"


@dataclass
class Pretrained:
    model: AudioBSQ
    model_hash: str  # first 16 hex digits of the SHA-256 of the weights file
    source: str


def save_pretrained(model: AudioBSQ, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model.safetensors`` (config also in its metadata) and ``config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS_NAME}.part"
    save_file(state, str(tmp), metadata={"config": model.config.to_json()})
    tmp.replace(folder / WEIGHTS_NAME)
    write_bytes_atomic(folder / CONFIG_NAME, (model.config.to_json() + "\n").encode())
    return folder


def _open_regular(path: Path, what: str) -> int:
    """An fd for reading ``path`` (symlinks followed, as in the Hub cache), refused unless it is
    a regular file: /dev/zero would be read forever, a FIFO would block the open itself
    (hence O_NONBLOCK, which regular files ignore)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BsqAudioError(f"{path}: no such file") from None
    except OSError as err:
        raise BsqAudioError(f"{path}: cannot read {what} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BsqAudioError(f"{path}: not a regular file ({what} must be read from a file)")
    return fd


def _read_config(path: Path) -> ModelConfig:
    """config.json, read with a bound: it is untrusted, like the weights."""
    with os.fdopen(_open_regular(path, "a model config"), "rb") as handle:
        text = handle.read(MAX_CONFIG_BYTES + 1)
    try:
        return ModelConfig.from_json(text)
    except BsqAudioError as err:
        raise BsqAudioError(f"{path}: {err}") from None


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path, "model weights"), "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


class _ShapesOnly(TorchFunctionMode):
    """Model construction on the meta device with the values skipped. Meta tensors have shapes
    but no data, so initialising them is moot; and torch runs random and elementwise meta ops
    (the ``randn() * scale`` and ``trunc_normal_`` of AudioBSQ's init) through Python references
    that import torch._dynamo and sympy: up to a second of start-up, and a file written to the temp folder, which fails
    where files cannot be written (a read-only /tmp, a file-size limit)."""

    RANDOM = {"randn", "rand"}
    ELEMENTWISE = {"__mul__", "__rmul__", "mul", "__truediv__", "div", "__add__", "__radd__", "add",
                   "__sub__", "sub", "__neg__", "neg"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        # In-place initialisation (nn.init passes its tensor by keyword): nothing to fill.
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, torch.Tensor) and target.is_meta and name.endswith("_") and not name.startswith("__"):
            return target
        if name in self.RANDOM and not kwargs.get("device"):  # meta by the context: only the shape matters
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            return torch.empty(*size, dtype=kwargs.get("dtype"), device="meta")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if tensors and all(t.is_meta for t in tensors):
            if name in self.ELEMENTWISE:
                # Broadcast by hand: torch.broadcast_shapes imports sympy, a third of a second.
                dims = itertools.zip_longest(*(reversed(t.shape) for t in tensors), fillvalue=1)
                shape = tuple(reversed([max(d) for d in dims]))
                return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
        return func(*args, **kwargs)


def _meta_model(config: ModelConfig) -> AudioBSQ:
    """The config's model on the meta device: shapes without storage, so a hostile config costs
    nothing until it is refused, and no random init of weights about to be replaced."""
    with torch.device("meta"), _ShapesOnly():
        return AudioBSQ(config)


def _tensors_of(model: AudioBSQ) -> dict[str, tuple[torch.Size, bool]]:
    return {k: (v.shape, v.is_floating_point()) for k, v in model.state_dict().items()}


def expected_tensors(config: ModelConfig) -> dict[str, tuple[torch.Size, bool]]:
    """Name -> (shape, is floating point) of every tensor the config's model holds."""
    return _tensors_of(_meta_model(config))


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def check_weights_header(weights: Path, handle, expected: dict[str, tuple[torch.Size, bool]]) -> None:
    """Compare the names, shapes and dtypes in the safetensors header (``handle``, from
    ``safe_open``) with ``expected_tensors(config)``, before any tensor is read."""
    parameters = sum(shape.numel() for shape, _ in expected.values())
    if parameters > MAX_PARAMETERS:
        raise BsqAudioError(f"{weights}: the config describes a model of {parameters:,} parameters, "
                            f"more than the {MAX_PARAMETERS:,} bsqaudio loads")
    names = sorted(set(expected) ^ set(handle.keys()))
    if names:
        first = names[0].encode("unicode_escape", "backslashreplace").decode("ascii")[:80]
        raise BsqAudioError(f"{weights}: weights do not match the config (first mismatch: {first})")
    for name, (shape, floating) in expected.items():
        tensor = handle.get_slice(name)
        if tuple(tensor.get_shape()) != tuple(shape):
            raise BsqAudioError(f"{weights}: weights do not match the config (shape of {name})")
        if (tensor.get_dtype() in _FLOAT_DTYPES) != floating or \
                not floating and tensor.get_dtype() != "I64":
            raise BsqAudioError(f"{weights}: weights do not match the config (dtype "
                                f"{tensor.get_dtype()} of {name})")


def load_weights(weights: Path, config_path: Path | None = None) -> Pretrained:
    """Build the model from a safetensors file and its config (beside it or in its metadata).

    Everything is checked before the model is allocated: the file is regular, the config within
    ModelConfig's limits, the safetensors header's tensors exactly the config's; then the values
    must be finite (NaN weights would silently give all-zero codes)."""
    os.close(_open_regular(weights, "model weights"))
    beside = None
    if config_path is not None and config_path.exists():
        beside = _read_config(config_path)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            try:
                inside = ModelConfig.from_json(metadata["config"]) if "config" in metadata else None
            except BsqAudioError as err:
                raise BsqAudioError(f"{weights}: the config in its metadata: {err}") from None
            if beside and inside and beside != inside:
                raise BsqAudioError(f"{weights}: config.json beside it does not match the weights' config")
            config = beside or inside
            if config is None:
                raise BsqAudioError(f"{weights}: no config.json beside it and no config in its metadata")
            model = _meta_model(config)  # built once: its shapes are checked, then it is filled
            expected = _tensors_of(model)
            check_weights_header(weights, handle, expected)
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise BsqAudioError(f"{weights}: not a valid safetensors file ({err})") from None
    if {k: v.shape for k, v in state.items()} != {k: shape for k, (shape, _) in expected.items()}:
        raise BsqAudioError(f"{weights}: the file changed while it was being read")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BsqAudioError(f"{weights}: weight {name} holds NaN or infinite values")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    model.eval()
    return Pretrained(model=model, model_hash=_hash_file(weights), source=str(weights))


def load_pretrained(name: str | Path | None = None, revision: str | None = None,
                    cache_dir: str | Path | None = None) -> Pretrained:
    """Load a model by name: None (embedded default), a folder, a file, or a Hub repo id."""
    if name is None:
        if not (EMBEDDED_DIR / WEIGHTS_NAME).exists():
            raise BsqAudioError(
                "no default model is bundled with this install yet: pass --model with a folder "
                "holding model.safetensors + config.json (from `bsqaudio train`) or a Hub repo id"
            )
        return load_weights(EMBEDDED_DIR / WEIGHTS_NAME, EMBEDDED_DIR / CONFIG_NAME)
    path = Path(name).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            raise BsqAudioError(f"{path}: folder has no {WEIGHTS_NAME}")
        return load_weights(weights, path / CONFIG_NAME)
    if path.exists():  # a file, or a FIFO or device, which load_weights refuses
        return load_weights(path, path.with_name(CONFIG_NAME))
    if _looks_like_a_path(str(name)):
        raise BsqAudioError(f"{name}: no such model file or folder")
    return _from_hub(str(name), revision, cache_dir)


def _looks_like_a_path(name: str) -> bool:
    """Whether a name that exists nowhere was meant as a local path, not a Hub repo id: a typo in
    ``runs/a/exprot`` should say so at once, not become a Hub lookup that retries for 30 s.
    Repo ids are ``owner/name``; a name is a path if it starts like one (``.``, ``/``, ``~``),
    names a weights file, has more than two parts, or its first part is an existing folder."""
    parts = name.split("/")
    return (name.startswith((".", "/", "~")) or name.endswith(".safetensors") or len(parts) > 2
            or (os.sep != "/" and os.sep in name) or Path(parts[0]).is_dir())


def _from_hub(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Pretrained:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise BsqAudioError(f"{repo_id}: no such model file or folder, and not a Hub repo id")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        config_path = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir))
        # The weights come from the commit the config came from (its snapshot folder's name), so
        # a branch that moves between the two downloads cannot pair one commit's config with
        # another's weights.
        commit = config_path.parent.name
        pinned = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision
        weights = hf_hub_download(repo_id, WEIGHTS_NAME, revision=pinned, cache_dir=cache_dir)
    except LocalEntryNotFoundError:
        raise BsqAudioError(
            f"{where}: no such local file or folder, and not in the local Hugging Face cache "
            "while the Hub cannot be reached (offline?); check the path and --revision, or "
            "download the model once with network access"
        ) from None
    except RevisionNotFoundError:
        raise BsqAudioError(f"{repo_id}: the Hugging Face Hub repo has no revision {revision!r} "
                            "(give a tag, branch or commit of it with --revision)") from None
    except RepositoryNotFoundError:
        raise BsqAudioError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private "
                            "and you are not logged in)") from None
    except EntryNotFoundError:
        raise BsqAudioError(f"{where}: the Hub repo has no {CONFIG_NAME} and {WEIGHTS_NAME}; "
                            "it is not a bsqaudio model") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise BsqAudioError(f"{repo_id}: cannot fetch from the Hugging Face Hub ({err})") from None
    # Checked against the config before use: config.json and the config in the weights' metadata
    # must agree, and every tensor must have the name and shape the config implies.
    loaded = load_weights(Path(weights), config_path)
    loaded.source = f"{repo_id}@{revision or 'main'}"
    return loaded
