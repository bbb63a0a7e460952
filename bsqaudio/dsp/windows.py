"""Cutting a stream of audio into the segments the coded windows are analysed from.

The geometry itself (frames, rows, windows, segment start and length) is ``ModelConfig``'s; this
is the streaming side of it, used by every encode loop.
"""

from __future__ import annotations

import torch

from bsqaudio.errors import BsqAudioError
from bsqaudio.model.config import ModelConfig


class WindowCutter:
    """Cuts a stream of (T,) audio chunks into the segments each window is analysed from: its own
    samples plus n_fft/2 of context each side, zeros before the start and after the end (exactly
    what whole-file analysis, ``MelFrontend.window_segment``, sees). Only the samples of the next
    window are held, so memory stays flat whatever the stream's length."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.span = config.segment_samples
        self.buffer_start = config.segment_start(0)  # negative: zeros before the audio
        self.buffer = torch.zeros(-self.buffer_start)
        self.next_window = 0
        self.total = 0

    def _cut(self, window: int) -> torch.Tensor:
        first = self.config.segment_start(window) - self.buffer_start
        segment = self.buffer[first: first + self.span]
        return torch.nn.functional.pad(segment, (0, self.span - segment.shape[0]))

    def feed(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        """Add samples; return the segments of every window now complete."""
        self.buffer = torch.cat([self.buffer, chunk.float()])
        self.total += chunk.shape[0]
        ready = []
        start_of = self.config.segment_start
        while self.buffer_start + self.buffer.shape[0] >= start_of(self.next_window) + self.span:
            ready.append(self._cut(self.next_window))
            self.next_window += 1
        keep = start_of(self.next_window) - self.buffer_start
        self.buffer, self.buffer_start = self.buffer[keep:], self.buffer_start + keep
        return ready

    def finish(self) -> list[torch.Tensor]:
        """The remaining windows, zero-padded past the end of the audio."""
        if self.total == 0:
            raise BsqAudioError("audio is empty")
        windows = self.config.num_windows(self.total)
        ready = [self._cut(window) for window in range(self.next_window, windows)]
        self.next_window = windows
        return ready
