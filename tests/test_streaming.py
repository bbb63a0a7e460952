"""Block-by-block reading, resampling and encoding equal the whole-signal results."""

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from bsqaudio.dsp.resample import resample, resample_stream
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.audio_files import stream_mono


def chunked(x: torch.Tensor, sizes=(7, 1000, 33333)):
    out, i, k = [], 0, 0
    while i < x.shape[0]:
        out.append(x[i: i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


@pytest.mark.parametrize(("rate_from", "rate_to"), [
    (8000, 16000), (11025, 16000), (22050, 16000), (44100, 16000), (48000, 16000), (192000, 16000),
    (44101, 16000), (7919, 16000), (16000, 44101), (16000, 44100)])
@pytest.mark.parametrize("length", [1, 37, 5000, 100003])
def test_resample_stream_equals_whole_signal(rate_from, rate_to, length):
    x = torch.randn(length, generator=torch.Generator().manual_seed(length))
    whole = resample(x, rate_from, rate_to)
    assert whole.shape == (-(-length * rate_to // rate_from),)  # ceil, as torchaudio gave
    streamed = torch.cat(list(resample_stream(iter(chunked(x)), rate_from, rate_to)))
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    # and both are soxr's own one-shot result, up to the length
    direct = torch.from_numpy(soxr.resample(np.pad(x.numpy(), (0, 64)), rate_from, rate_to))
    torch.testing.assert_close(whole, direct[: whole.shape[0]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [1, 100, 163839, 163840, 163841, 500000])
def test_encode_stream_equals_encode(tiny_codec, length):
    x = torch.randn(length, generator=torch.Generator().manual_seed(1)) * 0.1
    whole = tiny_codec.encode(x, 16000)
    streamed = tiny_codec.encode_stream(chunked(x, (7777,)), 16000, 1)
    assert torch.equal(whole.indices, streamed.indices)
    assert torch.equal(whole.gains_db, streamed.gains_db)
    assert whole.header == streamed.header


def test_encode_stream_holds_only_a_batch_of_windows(tiny_codec):
    window = tiny_codec.config.window_samples
    yielded = []

    def source():
        for _ in range(40):  # 40 chunks of half a window: 20 windows of audio
            yielded.append(window // 2)
            yield torch.zeros(window // 2)

    seen_at_first_batch = []

    def progress(done, total):
        if not seen_at_first_batch:
            seen_at_first_batch.append(sum(yielded))

    codes = tiny_codec.encode_stream(source(), 16000, 1, progress=progress)
    assert codes.header["num_windows"] == 20
    # The first batch ran once its windows had arrived, long before the stream ended.
    assert seen_at_first_batch[0] <= (tiny_codec.batch_size + 1) * window


def test_stream_mono_matches_whole_file_and_reports_bad_data(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.normal(0, 0.1, (44100 * 3 + 17, 2)).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    chunks, rate, channels = stream_mono(path, 16000, block_seconds=0.37)
    streamed = torch.cat(list(chunks))
    whole = resample(torch.from_numpy(stereo.T.copy()).mean(0), 44100, 16000)
    assert (rate, channels) == (44100, 2)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    stereo[44100 * 2, 1] = np.nan
    sf.write(path, stereo, 44100, subtype="FLOAT")
    chunks, _, _ = stream_mono(path, 16000, block_seconds=0.5)
    with pytest.raises(BsqAudioError, match="NaN"):
        list(chunks)


def test_decode_stream_is_chunked_and_equals_decode(tiny_codec):
    x = torch.randn(int(16000 * 22.5), generator=torch.Generator().manual_seed(2)) * 0.1
    codes = tiny_codec.encode(x, 16000)
    chunks = list(tiny_codec.decode_stream(codes, 44100))
    assert len(chunks) > 3  # produced block by block, not as one array
    whole = tiny_codec.decode(codes, 44100)
    torch.testing.assert_close(torch.cat(chunks), whole)
    assert whole.shape[0] == round(x.shape[0] * 44100 / 16000)


@pytest.mark.parametrize("samples", [1, 80, 160, 500, 800])
def test_very_short_audio_round_trips(tiny_codec, samples):
    codes = tiny_codec.encode(torch.randn(samples) * 0.1, 16000)
    assert tiny_codec.decode(codes).shape == (samples,)


def test_streamed_file_output_matches(tiny_codec, tmp_path):
    from bsqaudio.io.audio_files import write_audio_stream

    x = torch.randn(16000 * 3, generator=torch.Generator().manual_seed(3)) * 0.1
    codes = tiny_codec.encode(x, 16000)
    path = tmp_path / "out.flac"
    write_audio_stream(path, tiny_codec.decode_stream(codes), 16000)
    data, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and data.shape == (x.shape[0],)
    expected = tiny_codec.decode(codes).clamp(-1, 1).numpy()
    np.testing.assert_allclose(data, expected, atol=1 / 32768 + 1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["out.flac"]  # no temporary left behind
