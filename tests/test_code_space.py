"""Code spaces: a retrained decoder decodes every file of its code space; other files are refused
with the model named and the way to get it."""

from __future__ import annotations

import copy

import pytest
import torch
from cli_inprocess import run_in_process
from conftest import make_signal

import bsqaudio
from bsqaudio import code_space
from bsqaudio.code_space import code_space_id, decoder_id, embedded_release
from bsqaudio.codec import Codec
from bsqaudio.errors import BsqAudioError


def test_the_registry_describes_the_embedded_weights():
    codec = bsqaudio.Codec.from_pretrained(device="cpu")
    release = embedded_release()
    assert release["model_hash"] == codec.model_hash, "shipped new weights? add them to registry.json"
    assert release["code_space"] == codec.code_space == code_space_id(codec.model)
    assert release["decoder"] == decoder_id(codec.model)
    assert release["model"] == codec.config.name


def test_the_code_space_ignores_the_decoder_and_the_sign_of_zero(tiny_model_dir):
    model = bsqaudio.from_pretrained(tiny_model_dir).model
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.head.weight.add_(0.01)
        model.encoder_pos[0, 0] = 0.0
        retrained.encoder_pos[0, 0] = -0.0  # what an EMA's lerp makes of a frozen -0.0
    assert code_space_id(retrained) == code_space_id(model) and decoder_id(retrained) != decoder_id(model)
    with torch.no_grad():
        retrained.quant_embed.weight.add_(1e-3)
    assert code_space_id(retrained) != code_space_id(model)
    assert code_space_id(model.half()) == code_space_id(model.half().float())


def test_a_retrained_decoder_decodes_files_of_a_released_code_space(tmp_path, tiny_model_dir, other_model_dir,
                                                                     monkeypatch):
    writer = Codec.from_pretrained(tiny_model_dir, device="cpu", griffin_lim_iterations=2)
    codes = writer.encode(torch.from_numpy(make_signal(1.5)), 16000)
    retrained = copy.deepcopy(writer.model)
    with torch.no_grad():
        for p in retrained.decoder.parameters():
            p.mul_(0.9)
    new = tmp_path / "retrained"
    bsqaudio.save_pretrained(retrained, new)
    decoder = Codec.from_pretrained(new, device="cpu", griffin_lim_iterations=2)
    assert decoder.model_hash != writer.model_hash

    # Format 2 names the code space: the retrained decoder decodes the file as it is.
    assert bsqaudio.read_bsq(bsqaudio.write_bsq(codes)).header["code_space"] == writer.code_space
    audio = decoder.decode(codes)
    assert audio.shape == (codes.num_samples,)
    assert not torch.equal(audio, writer.decode(codes))  # the new decoder did the work
    result = run_in_process("decode", _written(tmp_path / "v2.bsq", codes), "-o", tmp_path / "x.wav",
                            "--model", other_model_dir)
    assert result.exit == 1 and f"code space {writer.code_space}" in result.stderr, result.stderr

    # Format 1 files name only the weights: the registry of released models says their code space.
    old = type(codes)(codes.indices, codes.gains_db, {k: v for k, v in codes.header.items() if k != "code_space"})
    with pytest.raises(BsqAudioError, match="not a released model"):
        decoder.decode(old)  # its weights are in no registry: nothing says what they mean
    release = {"version": "tiny-v1", "model": "bsqaudio-tiny", "model_hash": writer.model_hash,
               "code_space": writer.code_space, "decoder": decoder_id(writer.model),
               "source": "hub:bsqaudio/tiny@v1"}
    monkeypatch.setattr(code_space, "registry", lambda: (release,))
    assert torch.equal(decoder.decode(old), audio)

    path = _written(tmp_path / "a.bsq", old)
    assert path.read_bytes()[4] == 1
    result = run_in_process("decode", path, "-o", tmp_path / "x.wav", "--model", other_model_dir)
    assert result.exit == 1 and result.stderr.count("\n") == 1
    assert f"tiny-v1 (code space {writer.code_space})" in result.stderr
    assert "--model bsqaudio/tiny --revision v1" in result.stderr


def test_version_names_the_embedded_model_and_its_code_space():
    result = run_in_process("--version")
    release = embedded_release()
    assert result.exit == 0 and release["version"] in result.stdout and release["code_space"] in result.stdout


def _written(path, codes):
    path.write_bytes(bsqaudio.write_bsq(codes))
    return path
