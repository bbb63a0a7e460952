"""Code spaces: what a token means, apart from the decoder that renders it.

A token's meaning is fixed by the front-end settings, the encoder and the quantizer; the decoder
only turns tokens into a spectrogram. So every model has a code space identity (a hash of those
alone) and a decoder identity, and a file can be decoded by any decoder of its code space: a
retrained decoder (trained on frozen codes) decodes every file the previous one could.

``.bsq`` files (format 1) name the weights that wrote them (``model_hash``); the registry of
released models in ``bsqaudio/weights/registry.json`` maps those hashes to code spaces and says
where each model can be obtained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import cache
from importlib.resources import files

# Config fields a decoder-only change may alter; every other field shapes the codes.
DECODER_FIELDS = frozenset({"decoder_layers", "refine_channels", "name"})
# State-dict prefixes of what decides the codes (AudioBSQ.encoder_modules and encoder_pos).
ENCODER_PREFIXES = ("patch_embed.", "encoder_pos", "encoder.", "quant_embed.")


def _digest(model, keep) -> str:
    import torch

    config = dataclasses.asdict(model.config)
    digest = hashlib.sha256(json.dumps({k: v for k, v in sorted(config.items()) if keep(k, True)}).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if keep(name, False):
            value = tensor.detach().cpu()
            # + 0.0 makes -0.0 +0.0: equal weights, and an EMA's lerp turns one into the other.
            value = value.float() + 0.0 if value.is_floating_point() else value.to(torch.int64)
            digest.update(f"{name}:{tuple(value.shape)}".encode())
            digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def code_space_id(model) -> str:
    """16 hex digits identifying what ``model``'s tokens mean (front-end, encoder, quantizer;
    float32 values, so fp16 and fp32 exports of the same weights share it)."""
    return _digest(model, lambda name, is_field: name not in DECODER_FIELDS if is_field
                   else name.startswith(ENCODER_PREFIXES))


def decoder_id(model) -> str:
    """16 hex digits identifying how ``model`` renders tokens (its decoder side)."""
    return _digest(model, lambda name, is_field: name in DECODER_FIELDS - {"name"} if is_field
                   else not name.startswith(ENCODER_PREFIXES))


@cache
def registry() -> tuple[dict, ...]:
    """The released models: ``version``, ``model`` (config name), ``model_hash``, ``code_space``,
    ``decoder`` and ``source`` (``embedded``, or ``hub:owner/name@revision``)."""
    return tuple(json.loads(files("bsqaudio.weights").joinpath("registry.json").read_text())["models"])


def release_of(model_hash: str) -> dict | None:
    """The registry entry of the weights with this hash, if they were released."""
    return next((entry for entry in registry() if entry["model_hash"] == model_hash), None)


def embedded_release() -> dict | None:
    return next((entry for entry in registry() if entry["source"] == "embedded"), None)


def how_to_get(entry: dict) -> str:
    """Where a released model comes from, as a user would pass it."""
    source = entry["source"]
    if source == "embedded":
        return "it is embedded in bsqaudio releases that ship " + entry["version"]
    repo, _, revision = source.removeprefix("hub:").partition("@")
    return f"--model {repo}" + (f" --revision {revision}" if revision else "")
