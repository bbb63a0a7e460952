"""Encode/decode with the tiny model, and the mel front-end under it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_signal

import bsqaudio
from bsqaudio import BsqAudioError, Codes, read_bsq, write_bsq
from bsqaudio.codec import Codec
from bsqaudio.dsp.griffin_lim import GriffinLim
from bsqaudio.dsp.mel import GAIN_FLOOR_DB, MelFrontend

RATE = 16000
HOP = 160


def signal(seconds: float, rate: int = RATE, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(make_signal(seconds, rate, 1, seed)[:, 0])


# -- lengths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [0.1, 1.3, 10.24, 12.0])
def test_decoded_length_equals_input_length(tiny_codec, seconds):
    wave = signal(seconds)
    codes = tiny_codec.encode(wave, RATE)
    assert codes.num_samples == wave.shape[0]
    rows = math.ceil(math.ceil(wave.shape[0] / HOP) / 16)
    assert codes.indices.shape == (rows, 8)
    assert codes.gains_db.shape == (math.ceil(rows / 64),)
    out = tiny_codec.decode(codes)
    assert out.dtype == torch.float32 and out.dim() == 1
    assert abs(out.shape[0] - wave.shape[0]) <= HOP
    assert out.shape[0] == wave.shape[0]  # in fact exact
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("seconds", [0.1, 1.3])
def test_other_rate_in_and_out(tiny_codec, seconds):
    rate = 44100
    wave = signal(seconds, rate)
    codes = tiny_codec.encode(wave, rate)
    assert codes.header["source_sample_rate"] == rate
    assert codes.sample_rate == RATE
    assert abs(codes.num_samples - wave.shape[0] * RATE / rate) <= 1
    out = tiny_codec.decode(codes, sample_rate=rate)
    assert abs(out.shape[0] - wave.shape[0]) <= math.ceil(HOP * rate / RATE)
    out8k = tiny_codec.decode(codes, sample_rate=8000)
    assert abs(out8k.shape[0] - wave.shape[0] * 8000 / rate) <= HOP


def test_stereo_file_header_records_source(tiny_codec, wav_writer):
    path = wav_writer("stereo.wav", 1.3, rate=44100, channels=2)
    codes = tiny_codec.encode_file(path)
    assert codes.header["source_sample_rate"] == 44100
    assert codes.header["source_channels"] == 2
    assert codes.header["sample_rate"] == RATE
    assert abs(codes.num_samples - 1.3 * RATE) <= 1
    back = read_bsq(write_bsq(codes))
    assert back.header["source_sample_rate"] == 44100 and back.header["source_channels"] == 2
    assert back.header["model"] == "bsqaudio-tiny"
    assert back.header["model_hash"] == tiny_codec.model_hash


def test_stereo_tensor_is_downmixed(tiny_codec):
    stereo = torch.stack([signal(1.0, seed=1), signal(1.0, seed=2) * 0.5])
    codes = tiny_codec.encode(stereo, RATE)
    assert codes.header["source_channels"] == 2
    mono = tiny_codec.encode(stereo.mean(0), RATE)
    assert torch.equal(codes.indices, mono.indices)
    assert torch.equal(codes.gains_db, mono.gains_db)


# -- determinism and file equivalence -----------------------------------------------------------

def test_same_input_same_bytes(tiny_codec, tiny_model_dir, wav_writer):
    path = wav_writer("a.wav", 2.0)
    first = write_bsq(tiny_codec.encode_file(path))
    second = write_bsq(tiny_codec.encode_file(path))
    assert first == second
    fresh = Codec.from_pretrained(tiny_model_dir, device="cpu")
    assert write_bsq(fresh.encode_file(path)) == first


def test_batch_size_does_not_change_codes(tiny_model_dir):
    """Windows are encoded independently: one at a time or batched, the codes are the same."""
    wave = signal(12.0)  # 2 windows
    seen = []
    one = Codec.from_pretrained(tiny_model_dir, device="cpu", batch_size=1)
    many = Codec.from_pretrained(tiny_model_dir, device="cpu", batch_size=8)
    a = one.encode(wave, RATE, progress=lambda done, total: seen.append((done, total)))
    b = many.encode(wave, RATE)
    assert seen == [(1, 2), (2, 2)]
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.gains_db, b.gains_db)


def test_gains_are_float16_representable(tiny_codec):
    # Window 0 is loud; window 1 (from 10.24 s, with 32 ms of context) only sees the quiet part.
    wave = torch.cat([signal(10.0) * 0.9, signal(1.5, seed=3) * 0.003])
    codes = tiny_codec.encode(wave, RATE)
    assert codes.gains_db.shape == (2,)
    assert torch.equal(codes.gains_db, codes.gains_db.half().float())
    # Loud and quiet windows get different gains (about 50 dB apart).
    assert codes.gains_db[0] - codes.gains_db[1] > 40


def test_decode_after_file_equals_decode_in_memory(tiny_codec):
    codes = tiny_codec.encode(signal(10.5), RATE)
    assert codes.gains_db.shape == (2,)
    from_file = read_bsq(write_bsq(codes))
    assert torch.equal(tiny_codec.decode(from_file), tiny_codec.decode(codes))


def test_module_level_api(tiny_codec):
    wave = signal(0.5)
    codes = bsqaudio.encode(wave, RATE, codec=tiny_codec)
    out = bsqaudio.decode(codes, codec=tiny_codec)
    assert out.shape == wave.shape


def test_module_level_api_uses_the_embedded_model_by_default():
    wave = signal(0.5)
    codes = bsqaudio.encode(wave, RATE)  # no codec: the embedded default, loaded once
    assert codes.header["model_hash"] == bsqaudio.Codec.from_pretrained().model_hash
    assert bsqaudio.decode(codes).shape == wave.shape


# -- compatibility ------------------------------------------------------------------------------

def test_codes_from_another_model_are_refused(tiny_codec, other_model_dir):
    other = Codec.from_pretrained(other_model_dir, device="cpu")
    assert other.model_hash != tiny_codec.model_hash
    codes = tiny_codec.encode(signal(0.5), RATE)
    with pytest.raises(BsqAudioError, match="model") as info:
        other.decode(codes)
    assert tiny_codec.model_hash in str(info.value)
    assert "--model" in str(info.value)


def test_codes_with_other_settings_are_refused(tiny_codec):
    codes = tiny_codec.encode(signal(0.5), RATE)
    codes.header["n_fft"] = 2048
    with pytest.raises(BsqAudioError, match="settings"):
        tiny_codec.decode(codes)


@pytest.mark.parametrize("wave,message", [
    (torch.zeros(0), "empty"),
    (torch.zeros(2, 0), "empty"),
    (torch.tensor([0.0, float("nan"), 0.0] * 100), "NaN"),
    (torch.zeros(1, 2, 100), r"\(T,\) or \(C, T\)"),
    # Neither (C, T) with at most 64 channels nor soundfile's (T, C) with at most 16.
    (torch.zeros(100, 20000), r"shape \(100, 20000\): expected \(T,\) or \(C, T\) with at most 64 channels"),
    (torch.zeros(20000, 100), r"shape \(20000, 100\)"),
    (torch.full((1000,), 3e4), r"samples reach 3e\+04, far outside \[-1, 1\]"),
    (torch.zeros(1000, dtype=torch.int64), "samples of type int64: give float samples"),
    (np.zeros(1000, dtype=np.uint16), "samples of type uint16"),
    (torch.zeros(1000, dtype=torch.bool), "samples of type bool"),
    (torch.zeros(1000, dtype=torch.complex64), "samples of type complex64"),
    ("not audio", "waveform must be an array of samples"),
])
def test_bad_waveforms(tiny_codec, wave, message):
    with pytest.raises(BsqAudioError, match=message):
        tiny_codec.encode(wave, RATE)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16000", 1, 999, 384001])
def test_bad_sample_rates(tiny_codec, rate):
    with pytest.raises(BsqAudioError, match="sample_rate must be a whole number of Hz in 1000-384000"):
        tiny_codec.encode(torch.zeros(1000), rate)


def test_soundfile_layout_is_recognized(tiny_codec, wav_writer):
    """``sf.read`` of a stereo file gives (T, 2): it was taken as 88200 channels of 2 samples."""
    import soundfile as sf

    data, rate = sf.read(wav_writer("stereo.wav", 1.3, rate=44100, channels=2), dtype="float32")
    assert data.shape == (57330, 2)
    codes = tiny_codec.encode(data, rate)
    assert codes.header["source_channels"] == 2 and codes.num_samples == round(1.3 * RATE)
    same = tiny_codec.encode(torch.from_numpy(data.T.copy()), rate)
    assert torch.equal(codes.indices, same.indices) and codes.header == same.header


@pytest.mark.parametrize(("dtype", "scale", "offset"), [
    (np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.int8, 2**7, 0), (np.uint8, 2**7, 2**7)])
def test_integer_pcm_is_scaled(tiny_codec, dtype, scale, offset):
    """int16 samples taken as floats were a 90 dB gain (decoded peak 23199); they are PCM."""
    wave = signal(1.0).numpy()
    pcm = np.round(wave * (scale - 1) + offset).astype(dtype)
    codes = tiny_codec.encode(pcm, RATE)
    as_float = tiny_codec.encode(torch.from_numpy((pcm.astype(np.float64) - offset) / scale).float(), RATE)
    assert torch.equal(codes.indices, as_float.indices)
    torch.testing.assert_close(codes.gains_db, as_float.gains_db)
    assert abs(codes.gains_db.max().item() - tiny_codec.encode(wave, RATE).gains_db.max().item()) < 0.5
    assert tiny_codec.encode(torch.from_numpy(pcm), RATE).header == codes.header  # a tensor as well


def test_codes_and_audio_are_ordinary_tensors(tiny_codec, wav_writer):
    """Codes held inference-mode tensors: editing one raised "Inplace update to inference tensor"."""
    for codes in (tiny_codec.encode(signal(1.0), RATE), tiny_codec.encode_file(wav_writer("a.wav", 1.0))):
        assert not codes.indices.is_inference() and not codes.gains_db.is_inference()
        codes.indices[0, 0] = 1
        codes.gains_db += 1.0
        audio = tiny_codec.decode(codes)
        assert not audio.is_inference()
        audio *= 0.5


# -- silence fill -------------------------------------------------------------------------------

def test_silence_fill_barely_changes_covered_audio(tiny_codec):
    """Rows past the end of the audio are not stored; the decoder fills them with the codes of a
    silent window. The encoder itself would have produced codes for the (zero) padding; decoding
    with those instead must give (nearly) the same spectrogram over the real audio.

    The tiny model is untrained and its residual branches start at 0.1 scale, so any change of
    codes moves its output only a little: the bound is therefore relative, comparing the silence
    fill's effect with that of filling the same rows with random codes."""
    codec = tiny_codec
    wave = signal(3.0)
    codes = codec.encode(wave, RATE)
    rows = codes.indices.shape[0]
    mel, _ = codec.frontend.analyze(wave)
    with torch.inference_mode():
        actual = codec.model.encode(mel).indices.view(-1, 8)  # (64, 8) incl. padding rows
    assert torch.equal(actual[:rows], codes.indices)

    def covered_db(indices):
        alt = Codes(indices, codes.gains_db, dict(codes.header))
        power = codec.decode_mel(alt)[: codec.config.num_frames(wave.shape[0])]
        return 10 * torch.log10(power.clamp_min(1e-10))

    filled = covered_db(codes.indices)  # silence fill
    encoder = covered_db(actual)  # what the encoder gave the padding
    gen = torch.Generator().manual_seed(0)
    scrambled = actual.clone()
    scrambled[rows:] = torch.randint(0, 2 ** 18, scrambled[rows:].shape, generator=gen)
    noise = covered_db(scrambled)

    assert torch.isfinite(filled).all() and filled.shape == encoder.shape
    fill_error = (filled - encoder).abs().mean()
    random_error = (noise - encoder).abs().mean()
    assert (filled - encoder).abs().max() < 1.0  # dB
    assert fill_error < 0.25 * random_error


# -- the mel front-end --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frontend():
    return MelFrontend(bsqaudio.preset("tiny"))


def test_window_analysis_matches_whole_signal(frontend):
    """A window analysed alone equals that slice of the spectrogram of the whole file."""
    c = frontend.config
    wave = signal(22.0, seed=5)  # 3 windows, the last partial
    windows = frontend.config.num_windows(wave.shape[0])
    assert windows == 3
    padded = F.pad(wave, (0, windows * c.window_samples - wave.shape[0]))
    spec = torch.stft(padded, c.n_fft, c.hop_length, c.win_length, torch.hann_window(c.win_length),
                      center=True, pad_mode="constant", return_complex=True)
    power = (spec.abs() ** 2).T[: windows * c.window_frames] @ frontend.mel_fb
    whole_norm, whole_gain = frontend.normalize(power.reshape(windows, c.window_frames, c.n_mels))

    norm, gain = frontend.analyze(wave)
    assert norm.shape == (3, 1024, 128) and gain.shape == (3,)
    torch.testing.assert_close(gain, whole_gain, atol=0.05, rtol=0)
    torch.testing.assert_close(norm, whole_norm, atol=2e-3, rtol=0)
    for i in range(windows):
        alone, alone_gain = frontend.analyze(wave, i, 1)
        torch.testing.assert_close(alone[0], norm[i], atol=1e-5, rtol=0)
        assert alone_gain[0] == gain[i]


def test_normalized_mel_range_and_peak(frontend):
    norm, gain = frontend.analyze(signal(12.0) * 0.5)
    assert norm.min() >= -1.0 and norm.max() <= 1.0
    assert norm.min() == -1.0  # padding after the end is far below the peak
    for w in range(norm.shape[0]):
        # Each window is referenced to its own peak (rounded to float16 in dB).
        assert norm[w].max() > 1.0 - 0.1 / 40
    assert torch.isfinite(gain).all()


def test_silent_input_gain_floor(frontend):
    norm, gain = frontend.analyze(torch.zeros(RATE))
    assert torch.equal(gain, torch.tensor([GAIN_FLOOR_DB]))
    assert norm.max() <= 0.0  # nothing near the peak value +1
    assert torch.isfinite(norm).all()


def test_silent_input_is_all_minus_one(frontend):
    norm, _ = frontend.analyze(torch.zeros(RATE))
    assert torch.equal(norm, torch.full_like(norm, -1.0))


def test_gain_tracks_level(frontend):
    _, loud = frontend.analyze(signal(1.0))
    _, quiet = frontend.analyze(signal(1.0) * 0.1)
    assert abs((loud - quiet).item() - 20.0) < 0.1


def test_synthesis_length_and_finiteness(frontend):
    norm, gain = frontend.analyze(signal(1.0))
    power = frontend.denormalize(norm, gain).reshape(-1, 128)[:101]
    audio = GriffinLim(frontend.config).synthesize(power, iterations=2)
    assert audio.shape == (101 * HOP,)
    assert torch.isfinite(audio).all()


def test_untrusted_source_rate_is_refused_not_allocated(tiny_codec):
    from bsqaudio.codec import resolve_rate

    codes = tiny_codec.encode(torch.zeros(1600), 16000)
    codes.header["source_sample_rate"] = 10 ** 9  # a crafted file with a valid CRC can say this
    with pytest.raises(BsqAudioError, match="outside 1000-384000 Hz"):
        resolve_rate(codes, "source")
    assert resolve_rate(codes, "model") == 16000
    assert resolve_rate(codes, "22050") == 22050
    with pytest.raises(BsqAudioError, match="--rate"):
        resolve_rate(codes, "fast")
