"""Mel power back to audio: the filterbank's inverse, a phase-gradient start, Griffin-Lim, and
block-wise synthesis with flat memory."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from bsqaudio.dsp.mel import mel_filterbank
from bsqaudio.model.config import ModelConfig

# Griffin-Lim iterations after the phase-gradient start, chosen from the curve measured on the
# decoder's own output (docs/benchmarks.md, `benchmarks/quality.py --systems bsqaudio-gl0,...`):
# on held-out speech, 4 iterations score as 16 do (STOI 0.829 both, PESQ 1.27 vs 1.29, DistillMOS
# 1.52 vs 1.41, DNSMOS 2.81 vs 2.73) and music's mel error is 0.04 dB higher, at a third of the
# inversion's time. More iterations fit the decoder's blurred magnitude more closely, not the audio.
GRIFFIN_LIM_ITERATIONS = 4

# A Hann window of length L behaves, for phase reconstruction, like a Gaussian whose time-frequency
# spread is lambda = 0.25645 * L^2 samples^2 (Prusa, Balazs and Soendergaard 2017, "A noniterative
# method for reconstruction of phase from STFT magnitude", Table I); lambda links the phase
# gradient of the STFT to the gradient of its log-magnitude.
HANN_LAMBDA = 0.25645


class GriffinLim:
    """Mel power -> audio for one model's front-end (the same window, hop and filterbank)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.window = torch.hann_window(config.win_length)
        # Minimum-norm inverse of the filterbank, computed once: the same solution as a least
        # squares solve per call (torchaudio's InverseMelScale) at the cost of one matmul.
        self.mel_fb_pinv = torch.linalg.pinv(mel_filterbank(config))  # (n_mels, n_freqs)

    def mel_to_linear(self, power_tf: torch.Tensor) -> torch.Tensor:
        """(T, n_mels) mel power -> (n_freqs, T) linear power, non-negative."""
        return (power_tf @ self.mel_fb_pinv.to(power_tf.device)).clamp_min(0.0).T

    def invert(self, power_ft: torch.Tensor, iterations: int = GRIFFIN_LIM_ITERATIONS,
               momentum: float = 0.99, phase_ft: torch.Tensor | None = None) -> torch.Tensor:
        """(n_freqs, T) linear power -> (T * hop,) audio, deterministic.

        The fast Griffin-Lim with momentum of torchaudio's ``griffinlim``, step for step, with a
        cheaper inverse STFT (``_istft``), started from ``phase_ft`` (radians) if given, else from
        ``initial_phase``: from it, 4 iterations come as close to the magnitude as 32 from zero
        phase (docs/benchmarks.md). Frame k is centred on sample k * hop;
        the last hop after the last centre is silent."""
        c = self.config
        frames = power_ft.shape[-1]
        minimum = c.n_fft // (2 * c.hop_length) + 2  # the STFT's reflect padding needs > n_fft/2 samples
        if frames < minimum:  # very short audio: add silent frames, then trim
            padded = torch.nn.functional.pad(power_ft, (0, minimum - frames))
            if phase_ft is not None:
                phase_ft = torch.nn.functional.pad(phase_ft, (0, minimum - frames))
            return self.invert(padded, iterations, momentum, phase_ft)[: frames * c.hop_length]
        length = (frames - 1) * c.hop_length
        magnitude = power_ft.sqrt()
        window = self.window.to(power_ft.device)
        if phase_ft is None:
            phase_ft = self.initial_phase(magnitude)
        angles = torch.polar(torch.ones_like(magnitude), phase_ft.to(magnitude.dtype))
        previous = torch.zeros_like(angles)
        for _ in range(iterations):
            audio = self._istft(magnitude * angles, length)
            rebuilt = torch.stft(audio, c.n_fft, c.hop_length, c.win_length, window,
                                 center=True, pad_mode="reflect", return_complex=True)
            angles = torch.sgn(torch.add(rebuilt, previous, alpha=-momentum / (1 + momentum)))
            previous = rebuilt
        audio = self._istft(magnitude * angles, length)
        return torch.nn.functional.pad(audio, (0, c.hop_length))

    def initial_phase(self, magnitude_ft: torch.Tensor) -> torch.Tensor:
        """(n_freqs, T) STFT magnitude -> (n_freqs, T) phase in radians for Griffin-Lim to start from.

        Phase-gradient integration (Prusa et al. 2017, see ``HANN_LAMBDA``): for a Gaussian-like
        window the phase's rate of change along time (the instantaneous frequency) follows from
        the slope of the log-magnitude across frequency, and its rate along frequency (the time
        position of energy) from the slope of the log-magnitude across time. Their PGHI
        integrates these gradients with a heap, coefficient by coefficient from the loudest,
        which in Python costs more than all the Griffin-Lim iterations it saves. Instead, in
        every frame each bin takes the phase of the spectral peak whose lobe it lies in (from the
        valley below the peak to the valley above it), plus the frequency gradient integrated
        from the peak to it (identity phase locking, Laroche and Dolson 1999); a peak takes the
        phase its bin had in the previous frame plus the time gradient integrated over the hop.
        That recursion runs along chains of peaks through the frames; it is evaluated for all
        frames at once by pointer jumping (log2 of the chain length rounds of gathers), not by a
        loop over frames. On real speech and music its start is closer than the heap's, and
        after 16 iterations within about 10 % of it in spectral convergence (docs/benchmarks.md).
        Phases are not wrapped to [0, 2 pi)."""
        c = self.config
        log_mag = magnitude_ft.T.float().clamp_min(1e-30).log()  # (T, F), frame-major
        log_mag = log_mag.clamp_min(log_mag.max() - c.db_range / 20 * math.log(10))
        time_gradient, along = self._phase_gradients(log_mag)
        return integrate_along_peaks(log_mag, time_gradient, along).T.to(magnitude_ft.dtype)

    def _phase_gradients(self, log_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, F) log-magnitude -> the phase advance per hop (T, F), and the phase integrated
        along frequency from bin 0 to each bin (T, F)."""
        c = self.config
        a, m_fft = c.hop_length, c.n_fft
        lam = HANN_LAMBDA * c.win_length ** 2
        pad = torch.nn.functional.pad
        d_freq = pad((log_mag[:, 2:] - log_mag[:, :-2]) / 2, (1, 1))
        d_time = pad((log_mag[2:] - log_mag[:-2]) / 2, (0, 0, 1, 1))
        bin_index = torch.arange(log_mag.shape[1], device=log_mag.device)
        # Phase advance per hop (the instantaneous frequency), and per bin from the frequency
        # gradient, trapezoid rule; the pi per bin is torch.stft's phase reference, the frame's
        # first sample, n_fft / 2 before the window's centre.
        time_gradient = (a * m_fft / lam) * d_freq + (2 * math.pi * a / m_fft) * bin_index
        bin_step = (-lam / (2 * a * m_fft)) * (d_time[:, 1:] + d_time[:, :-1]) + math.pi
        return time_gradient, pad(torch.cumsum(bin_step, 1), (1, 0))

    def _istft(self, spec_ft: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of a centred ``torch.stft`` with this front-end's window.

        ``torch.istft`` rebuilds the window envelope and overlap-adds all n_fft samples of every
        frame on each call; here only the win_length samples the window keeps are added, by a
        few strided tensor adds, and the envelope is cached per frame count."""
        c = self.config
        lo = (c.n_fft - c.win_length) // 2
        window = self.window.to(spec_ft.device)
        signal = torch.fft.irfft(spec_ft.T, n=c.n_fft)[:, lo: lo + c.win_length] * window
        envelope = self._envelope(spec_ft.shape[-1], spec_ft.device)
        audio = torch.nn.functional.pad(self._overlap_add(signal) / envelope, (lo, 0))
        start = c.n_fft // 2
        return audio[start: start + length]

    def _overlap_add(self, frames_tw: torch.Tensor) -> torch.Tensor:
        """(T, win_length) frames hop apart -> ((T-1) * hop + win_length,) summed signal."""
        hop, width = self.config.hop_length, self.config.win_length
        frames, parts = frames_tw.shape[0], math.ceil(width / hop)
        blocks = torch.nn.functional.pad(frames_tw, (0, parts * hop - width))
        blocks = blocks.reshape(frames, parts, hop)
        out = frames_tw.new_zeros(frames + parts - 1, hop)
        for part in range(parts):
            out[part: part + frames] += blocks[:, part]
        return out.reshape(-1)[: (frames - 1) * hop + width]

    def _envelope(self, frames: int, device: torch.device) -> torch.Tensor:
        key = (frames, str(device))
        if getattr(self, "_envelope_key", None) != key:
            squared = (self.window.to(device) ** 2).expand(frames, -1)
            self._envelope_key = key
            self._envelope_value = self._overlap_add(squared).clamp_min(1e-11)
        return self._envelope_value

    def synthesize(self, power_tf: torch.Tensor, block_frames: int = 1024, overlap: int = 32,
                   iterations: int = GRIFFIN_LIM_ITERATIONS) -> torch.Tensor:
        """(T, n_mels) mel power -> (T * hop,) audio; see ``synthesize_stream``."""
        return torch.cat(list(self.synthesize_stream([power_tf], block_frames, overlap, iterations)))

    def synthesize_stream(self, power_chunks: Iterable[torch.Tensor], block_frames: int = 1024,
                          overlap: int = 32, iterations: int = GRIFFIN_LIM_ITERATIONS) -> Iterator[torch.Tensor]:
        """(T_i, n_mels) mel power chunks -> audio chunks, T * hop samples in all.

        Each block of ``block_frames`` is inverted with ``overlap`` frames of context on both
        sides, and consecutive blocks are cross-faded over ``overlap`` frames; only a block and
        its context are held, so memory does not grow with the length of the audio."""
        hop = self.config.hop_length
        fade = overlap * hop
        ramp = torch.linspace(0.0, 1.0, fade + 2)[1:-1]
        chunks = iter(power_chunks)
        buffer, buffer_start = torch.zeros(0, self.config.n_mels), 0
        start, tail, exhausted = 0, None, False
        previous_phase, previous_lo = None, 0  # the last block's STFT phase and first frame
        while True:
            while not exhausted and buffer_start + buffer.shape[0] < start + block_frames + overlap:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    buffer = torch.cat([buffer, chunk.float()])
            known = buffer_start + buffer.shape[0]
            if start >= known:
                return
            lo, hi = max(start - overlap, 0), min(start + block_frames + overlap, known)
            end = min(start + block_frames, known)
            power = self.mel_to_linear(buffer[lo - buffer_start: hi - buffer_start])
            phase = None
            if previous_phase is not None:
                # Start the frames this block shares with the last one from that block's phase:
                # blocks inverted independently disagree in phase, and cross-fading them cancels
                # (spectral convergence 5-10x worse around each seam, measured).
                phase = self.initial_phase(power.sqrt())
                shared = previous_phase[:, lo - previous_lo:]
                width = min(shared.shape[1], phase.shape[1])
                phase[:, :width] = shared[:, :width]
            audio = self.invert(power, iterations, phase_ft=phase)
            # The next block shares only this one's frames from its own first frame on (the last
            # 2 x overlap): the STFT of the audio from a few frames before them gives exactly
            # those, since a centred frame reaches back only n_fft / 2 samples.
            shared_from = max(end - overlap - lo, 0)
            back = min(shared_from, -(-self.config.n_fft // (2 * hop)))
            previous_lo = lo + shared_from
            previous_phase = torch.stft(audio[(shared_from - back) * hop:], self.config.n_fft, hop,
                                        self.config.win_length, self.window, center=True,
                                        pad_mode="constant", return_complex=True)[:, back:].angle()
            piece = audio[start * hop - (fade if start else 0) - lo * hop: end * hop - lo * hop]
            if tail is not None:
                piece = torch.cat([tail * (1.0 - ramp) + piece[:fade] * ramp, piece[fade:]])
            if exhausted and end >= known:
                yield piece
                return
            yield piece[:-fade]
            tail = piece[-fade:]
            start = end
            drop = start - overlap - buffer_start
            if drop > 0:
                buffer, buffer_start = buffer[drop:], buffer_start + drop


def integrate_along_peaks(log_mag: torch.Tensor, time_gradient: torch.Tensor,
                          along: torch.Tensor) -> torch.Tensor:
    """(T, F) log-magnitude and phase gradients (``GriffinLim._phase_gradients``) -> (T, F)
    phase: each bin the phase of its lobe's peak plus ``along`` from the peak to it; each peak
    the phase of the bin it was in a frame before plus the trapezoid of ``time_gradient``."""
    two_pi = 2 * math.pi
    pad = torch.nn.functional.pad
    below = pad(log_mag[:, :-1], (1, 0), value=-math.inf)
    above = pad(log_mag[:, 1:], (0, 1), value=-math.inf)
    is_peak = (log_mag > below) & (log_mag >= above)  # every frame has one: its first maximum
    is_valley = (log_mag <= below) & (log_mag < above)
    # Along a frame, peaks and valleys alternate, starting and ending with a peak: a peak is
    # where the magnitude stops rising, a valley where it starts again. So the lobe a bin lies
    # in (from the valley below a peak to the valley above it) is numbered by the valleys at or
    # before it, and its peak's number in frame-major order is that count plus the peaks of
    # the earlier frames. Peak i sits at (frame[i], peak_bin[i]).
    frame, peak_bin = is_peak.nonzero(as_tuple=True)
    peaks_before = pad(torch.cumsum(is_peak.sum(1), 0)[:-1], (1, 0))
    owner = peaks_before[:, None] + torch.cumsum(is_valley, 1)  # (T, F) peak numbers
    along_at_peak = along[frame, peak_bin]
    earlier = (frame - 1).clamp_min(0)
    first = frame == 0
    earlier_owner = owner[earlier, peak_bin]  # the peak owning this bin a frame before
    parent = torch.where(first, torch.arange(frame.numel(), device=log_mag.device), earlier_owner)
    offset = (along[earlier, peak_bin] - along_at_peak[earlier_owner]
              + (time_gradient[earlier, peak_bin] + time_gradient[frame, peak_bin]) / 2)
    offset = torch.where(first, 0.0, torch.remainder(offset, two_pi))  # first-frame peaks: 0
    # Pointer jumping: offset[i] is the phase of peak i minus that of peak parent[i]; each
    # round doubles the distance jumped, until every parent is a first-frame peak.
    while True:
        grandparent = parent[parent]
        if torch.equal(grandparent, parent):
            break
        offset = torch.remainder(offset + offset[parent], two_pi)
        parent = grandparent
    base = offset - along_at_peak  # each peak's phase less its own frequency integral
    return base[owner] + along
