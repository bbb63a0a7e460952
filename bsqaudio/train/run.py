"""Where a run happens: its process group and device, its output folder, and its stop signal."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from bsqaudio.errors import BsqAudioError
from bsqaudio.train.settings import TrainSettings


class Run:
    """Process group, device and output folder of one training run."""

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = settings
        self.distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
        if settings.device == "auto":
            use_cuda = torch.cuda.is_available()
        else:
            use_cuda = settings.device.startswith("cuda")
            if use_cuda and not torch.cuda.is_available():
                raise BsqAudioError("--device cuda was asked for, but no CUDA GPU is available")
        if self.distributed:
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            local = int(os.environ.get("LOCAL_RANK", 0))
        else:
            self.rank, self.world, local = 0, 1, 0
        if use_cuda:
            torch.cuda.set_device(local)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.out = Path(settings.out)
        self.is_main = self.rank == 0
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def close(self) -> None:
        if self.distributed:
            dist.destroy_process_group()


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self) -> None:
        self.stop = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.stop = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


RUN_OUTPUTS = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "export", "metrics.jsonl")


def claim_run_folder(out: Path, resume: bool, force: bool) -> None:
    """A new run into a folder that holds another would overwrite its checkpoint and export and
    mix two runs in one metrics.jsonl: refuse unless ``resume`` (continue it) or ``force`` (start
    over: its checkpoint, export and metrics are removed; the audio cache is kept)."""
    present = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if resume or not present:
        return
    if not force:
        raise BsqAudioError(f"{out}: already holds a training run ({', '.join(present)}); use --resume to "
                            "continue it, or --force to start over")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
