"""Signal processing between audio and the model: the log-mel analysis (``mel``), its inverse
(``griffin_lim``), resampling (``resample``) and the cutting of audio into coded windows
(``windows``). Torch and numpy only; nothing here reads or writes files."""
