"""The tokenizer model: patch grid, presets, forward shapes, grad checkpointing, config."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bsqaudio import AudioBSQ, BsqAudioError, ModelConfig, preset
from bsqaudio.model import PRESETS, patchify, unpatchify
from bsqaudio.model.blocks import ConvModule, FeedForward
from bsqaudio.model.tokenizer import Refiner


@pytest.mark.parametrize("patch_time,patch_freq", [(16, 16), (8, 16), (16, 8), (4, 32), (32, 4)])
def test_patchify_unpatchify_exact_inverse(patch_time, patch_freq):
    gen = torch.Generator().manual_seed(patch_time * 100 + patch_freq)
    mel = torch.randn(3, 1024, 128, generator=gen)
    patches = patchify(mel, patch_time, patch_freq)
    grid_time, grid_freq = 1024 // patch_time, 128 // patch_freq
    assert patches.shape == (3, grid_time * grid_freq, patch_time * patch_freq)
    back = unpatchify(patches, patch_time, patch_freq, grid_time, grid_freq)
    assert torch.equal(back, mel)
    # And the other way round: any patch tensor survives unpatchify -> patchify.
    other = torch.randn(2, grid_time * grid_freq, patch_time * patch_freq, generator=gen)
    assert torch.equal(
        patchify(unpatchify(other, patch_time, patch_freq, grid_time, grid_freq), patch_time,
                 patch_freq), other)


@pytest.mark.parametrize("patch_time", [16, 8])
def test_patch_order_is_time_major(patch_time):
    mel = torch.randn(2, 1024, 128)
    patches = patchify(mel, patch_time, 16)
    grid_freq = 8
    for t, f in [(0, 0), (0, 7), (1, 0), (3, 5), (1024 // patch_time - 1, 7)]:
        expected = mel[:, t * patch_time:(t + 1) * patch_time, f * 16:(f + 1) * 16].reshape(2, -1)
        assert torch.equal(patches[:, t * grid_freq + f], expected), (t, f)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_build(name):
    config = preset(name)
    model = AudioBSQ(config)
    assert model.config is config
    assert model.encoder_pos.shape == (config.num_patches, config.width)
    assert len(model.encoder.blocks) == config.encoder_layers
    assert len(model.decoder.blocks) == config.decoder_layers
    assert config.name == f"bsqaudio-{name}"


def test_unknown_preset():
    with pytest.raises(BsqAudioError, match="tiny"):
        preset("huge")


def test_all_presets_listed():
    assert set(PRESETS) >= {"tiny", "small", "base"}


def test_base_preset_shapes():
    config = preset("base")
    assert (config.width, config.heads, config.encoder_layers, config.decoder_layers) == (
        768, 12, 12, 12)
    assert config.code_bits == 18 and config.conv
    assert (config.patch_time, config.patch_freq) == (16, 16)
    assert (config.window_frames, config.n_mels) == (1024, 128)
    assert config.num_patches == 512 and (config.grid_time, config.grid_freq) == (64, 8)
    assert config.tokens_per_second == 50.0
    assert config.bitrate == 900.0
    # Build once, on the meta device: shapes without spending seconds on 215M random numbers.
    with torch.device("meta"):
        model = AudioBSQ(config)
    assert model.encoder_pos.shape == (512, 768)
    assert model.decoder_pos.shape == (512, 768)
    assert model.patch_embed.weight.shape == (768, 256)
    assert model.quant_embed.weight.shape == (18, 768)
    assert model.post_quant_embed.weight.shape == (768, 18)
    assert model.head.weight.shape == (256, 768)
    assert len(model.encoder.blocks) == 12 and len(model.decoder.blocks) == 12
    assert all(block.conv is not None for block in model.encoder.blocks)
    assert model.encoder.blocks[0].attn.heads == 12
    params = sum(p.numel() for p in model.parameters())
    assert 200e6 < params < 230e6


def test_small_preset_bitrate():
    assert preset("small").bitrate == 1800.0
    assert preset("tiny").bitrate == 900.0


def test_tiny_forward_shapes_and_range():
    torch.manual_seed(0)
    model = AudioBSQ(preset("tiny")).eval()
    mel = torch.rand(2, 1024, 128) * 2 - 1
    with torch.no_grad():
        out = model(mel)
    assert out.reconstruction.shape == (2, 1024, 128)
    assert out.quantizer.indices.shape == (2, 512)
    assert out.quantizer.codes.shape == (2, 512, 18)
    assert out.reconstruction.min() >= -1 and out.reconstruction.max() <= 1
    assert int(out.quantizer.indices.min()) >= 0 and int(out.quantizer.indices.max()) < 2 ** 18
    # decode_indices of the encoder's indices gives the same reconstruction as forward.
    with torch.no_grad():
        again = model.decode_indices(model.encode(mel).indices)
    torch.testing.assert_close(again, out.reconstruction)


def test_windows_in_a_batch_are_independent():
    """Eval-mode codes of a window do not depend on what else is in the batch."""
    torch.manual_seed(0)
    model = AudioBSQ(preset("tiny")).eval()
    mel = torch.rand(3, 1024, 128) * 2 - 1
    with torch.no_grad():
        together = model.encode(mel).indices
        alone = model.encode(mel[1:2]).indices
    assert torch.equal(together[1:2], alone)


def test_feed_forward_in_token_groups_matches_the_whole_batch():
    """At inference the feed-forward runs 512 tokens at a time; a batch of 2 x 700 tokens (groups
    that straddle the windows, and a short last one) must come out as in one piece."""
    torch.manual_seed(0)
    ffn = FeedForward(16, 4.0)
    x = torch.randn(2, 700, 16)
    with torch.enable_grad():
        whole = ffn(x).detach()
    with torch.inference_mode():
        grouped = ffn(x)
    assert grouped.shape == whole.shape
    torch.testing.assert_close(grouped, whole, rtol=0, atol=1e-6)


def _with_fitted_batchnorm(model):
    """The model with BatchNorm running statistics far from their initial (0, 1), as a trained
    model has them, so that a path that mishandles them is seen."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.3, 0.3)
    return model


def test_decoder_token_layout_convolution_matches_reference_and_encoder_is_untouched():
    """On CPU the decoder's Conformer convolutions run on the tokens' layout: the mel must match
    the reference formulation, while the encoder (whose rounding decides codes) keeps it exactly."""
    torch.manual_seed(0)
    model = _with_fitted_batchnorm(AudioBSQ(preset("tiny"))).eval()
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, ConvModule):
            module.token_layout_inference = False
    mel = torch.rand(3, 1024, 128) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(model.latents(mel), reference.latents(mel))
        indices = model.encode(mel).indices
        fast, slow = model.decode_indices(indices), reference.decode_indices(indices)
    assert any(isinstance(m, ConvModule) and m.token_layout_inference for m in model.modules())
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def test_convolution_module_token_layout_matches_reference():
    torch.manual_seed(0)
    module = ConvModule(16, 7, grid_time=8, grid_freq=4, token_layout_inference=True)
    _with_fitted_batchnorm(module).eval()
    x = torch.randn(3, 32, 16)
    with torch.inference_mode():
        fast = module(x)
        module.token_layout_inference = False
        slow = module(x)
    assert (fast - slow).abs().max() < 1e-5 and slow.abs().mean() > 0.05


@pytest.mark.parametrize("frames", [1024, 300, 5])
def test_refiner_inference_path_matches_training_path(frames):
    """Decoding runs the refiner strip by strip in channels-last layout; it must give the mel
    the training path (whole batch, default layout) gives, for a refiner that does something,
    at every strip's edge (300 frames: a short last strip; 5: one strip inside the halo)."""
    torch.manual_seed(0)
    refiner = Refiner(8)
    torch.nn.init.normal_(refiner.net[-1].weight, std=0.1)  # its last layer starts at zero
    mel = torch.rand(3, frames, 128) * 2 - 1
    with torch.enable_grad():
        trained_path = refiner(mel).detach()
    with torch.inference_mode():
        decode_path = refiner(mel)
    assert (trained_path - mel).abs().mean() > 0.01
    torch.testing.assert_close(decode_path, trained_path, rtol=0, atol=1e-5)


def _loss_and_grads(model, mel):
    out = model(mel)
    loss = (out.reconstruction - mel).pow(2).mean() + 0.1 * out.quantizer.loss
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def checkpointing_runs():
    """One training step of the same tiny model without and with grad checkpointing."""
    torch.manual_seed(0)
    plain = AudioBSQ(preset("tiny")).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.encoder.grad_checkpointing and ckpt.decoder.grad_checkpointing
    mel = torch.rand(1, 1024, 128) * 2 - 1
    return plain, ckpt, _loss_and_grads(plain, mel), _loss_and_grads(ckpt, mel)


def test_grad_checkpointing_same_loss_and_gradients(checkpointing_runs):
    _, _, (loss_a, grads_a), (loss_b, grads_b) = checkpointing_runs
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for key in grads_a:
        torch.testing.assert_close(grads_a[key], grads_b[key], msg=key)


def test_grad_checkpointing_same_batchnorm_statistics(checkpointing_runs):
    plain, ckpt, _, _ = checkpointing_runs
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.equal(a, b), name


# -- ModelConfig --------------------------------------------------------------------------------

def test_config_json_round_trip():
    for name in PRESETS:
        config = preset(name)
        text = config.to_json()
        assert json.loads(text)["name"] == config.name
        assert ModelConfig.from_json(text) == config
        assert ModelConfig.from_dict(config.to_dict()) == config
    custom = ModelConfig(patch_time=8, code_bits=63, conv=False, mlp_ratio=3.5, name="x")
    assert ModelConfig.from_json(custom.to_json()) == custom


def test_config_accepts_int_for_float():
    config = ModelConfig.from_dict({"mlp_ratio": 2, "db_range": 80})
    assert config.mlp_ratio == 2.0


def test_config_rejects_unknown_field():
    with pytest.raises(BsqAudioError, match="unknown model config fields: colour"):
        ModelConfig.from_dict({"width": 64, "colour": "red"})


@pytest.mark.parametrize("field,value,kind", [
    ("width", "256", "int"),
    ("width", True, "int"),
    ("width", 256.0, "int"),
    ("conv", 1, "bool"),
    ("conv", "yes", "bool"),
    ("mlp_ratio", "4", "float"),
    ("mlp_ratio", None, "float"),
    ("name", 3, "str"),
])
def test_config_rejects_wrong_types(field, value, kind):
    with pytest.raises(BsqAudioError, match=f"'{field}' must be {kind}"):
        ModelConfig.from_dict({field: value})


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"width"'])
def test_config_rejects_bad_json(text):
    with pytest.raises(BsqAudioError, match="model config"):
        ModelConfig.from_json(text)


@pytest.mark.parametrize("fields,message", [
    ({"code_bits": 0}, "code_bits"),
    ({"code_bits": 64}, "code_bits"),
    ({"patch_time": 24}, "patch_time"),
    ({"patch_freq": 48}, "patch_freq"),
    ({"width": 250, "heads": 4}, "heads"),
    ({"conv_kernel": 8}, "odd"),
    ({"n_fft": 128}, "n_fft"),
])
def test_config_rejects_inconsistent_shapes(fields, message):
    with pytest.raises(BsqAudioError, match=message):
        ModelConfig.from_dict(fields)
