"""Block-by-block reading, resampling and encoding equal the whole-signal results."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from bsqaudio.audio import resample_stream, stream_mono
from bsqaudio.errors import BsqAudioError


def chunked(x: torch.Tensor, sizes=(7, 1000, 33333)):
    out, i, k = [], 0, 0
    while i < x.shape[0]:
        out.append(x[i: i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


@pytest.mark.parametrize("rate_from", [8000, 11025, 22050, 44100, 48000, 192000])
@pytest.mark.parametrize("length", [1, 37, 5000, 100003])
def test_resample_stream_equals_whole_signal(rate_from, length):
    x = torch.randn(length, generator=torch.Generator().manual_seed(length))
    whole = AF.resample(x, rate_from, 16000)
    streamed = torch.cat(list(resample_stream(iter(chunked(x)), rate_from, 16000)))
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)


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
    whole = AF.resample(torch.from_numpy(stereo.T.copy()).mean(0), 44100, 16000)
    assert (rate, channels) == (44100, 2)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    stereo[44100 * 2, 1] = np.nan
    sf.write(path, stereo, 44100, subtype="FLOAT")
    chunks, _, _ = stream_mono(path, 16000, block_seconds=0.5)
    with pytest.raises(BsqAudioError, match="NaN"):
        list(chunks)
