"""A cheaper decoder of the same code space, learned from a trained one.

Decoding costs the decoder's depth, paid on every file, while the codes are fixed by the encoder
alone (``bsqaudio.code_space``). So a decoder can be made shallower after training: start from
some of the trained decoder's blocks (``keep_decoder_blocks``) and teach the result to reproduce
the trained decoder's output on the same codes (``Teacher``). The teacher's output is a fixed
function of the codes, so the student's target has none of the irreducible error of the true
spectrogram (which no decoder of these codes can predict): its loss falls to zero for a perfect
copy, and each step's gradient is about the copy, not about noise.
"""

from __future__ import annotations

import dataclasses

import torch

from bsqaudio.code_space import code_space_id
from bsqaudio.errors import BsqAudioError
from bsqaudio.model import AudioBSQ


def keep_decoder_blocks(model: AudioBSQ, keep: list[int]) -> AudioBSQ:
    """A copy of ``model`` whose decoder has only the blocks ``keep`` (in that order); everything
    else, the encoder side included, is the same, so its codes mean what ``model``'s do."""
    depth = model.config.decoder_layers
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < depth for i in keep):
        raise BsqAudioError(f"decoder blocks to keep must be distinct, in 0..{depth - 1}: {keep}")
    config = dataclasses.replace(model.config, decoder_layers=len(keep))
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("decoder.blocks."):
            block = int(name.split(".")[2])
            if block not in keep:
                continue
            name = name.replace(f"decoder.blocks.{block}.", f"decoder.blocks.{keep.index(block)}.", 1)
        state[name] = tensor.clone()
    smaller = AudioBSQ(config)
    smaller.load_state_dict(state)
    return smaller.train(model.training)


class Teacher:
    """A trained model whose decoder output is a student's training target."""

    def __init__(self, model: AudioBSQ, student: AudioBSQ, source: str) -> None:
        if code_space_id(model) != code_space_id(student):
            raise BsqAudioError(f"{source}: its codes mean something else than this run's model's "
                                "(another code space): a decoder can only learn from one of its own")
        self.model = model.eval().requires_grad_(False)

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def target(self, codes_bnl: torch.Tensor) -> torch.Tensor:
        """(B, N, L) codes -> (B, T, F) the teacher's normalized mel, as decoding gives it."""
        return self.model.decode_codes(codes_bnl.to(self.model.post_quant_embed.weight.dtype))
