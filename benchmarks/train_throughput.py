"""Training throughput of each preset on this machine, eager and ``torch.compile``d.

    python benchmarks/train_throughput.py                       # tiny, small, base
    python benchmarks/train_throughput.py --presets tiny small --steps 5 --json out.json

Each measured step is the training loop's own step (``bsqaudio.train.loop``) on synthetic audio
windows: mel front-end, SpecAugment, forward, reconstruction + quantizer loss, backward, gradient
clipping, AdamW and the EMA update (no data loading, no validation). It reports samples
(windows) and tokens a second, the FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode`` (the matmuls, convolutions and attention of forward
+ backward, and the mel filterbank matmul; the STFT, optimizer and elementwise work are not
counted; two of its formulas are corrected, see ``flop_formula_fixes``), and that rate as a
fraction of the machine's measured matmul peak (fp32 2048x2048 on CPU; on CUDA the peak of the
dtype the loop trains in, bf16).

``base`` (about 215M parameters) runs 2 steps of batch 1 unless told otherwise: a step takes tens
of seconds on a small CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.model import AudioBSQ, preset
from bsqaudio.train.loop import update_ema
from bsqaudio.train.losses import reconstruction_loss, spec_augment

# Per preset (steps, batch) when --steps / --batch-size are not given.
DEFAULTS = {"tiny": (5, 8), "small": (3, 4), "base": (2, 1)}


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "logical_cpus": os.cpu_count(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Core(s) per socket", "Socket(s)",
                               "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        info["Model name"] = platform.processor()
    with contextlib.suppress(OSError):
        info["load_average_1m"] = os.getloadavg()[0]  # other work on the machine skews timings
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048,
                seconds: float = 2.0) -> float:
    """Sustained FLOP/s of n x n matmuls (best of a few timed batches)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    a @ b
    sync(device)
    once = max(time.perf_counter() - start, 1e-6)
    per_batch = max(1, int(seconds / 4 / once))
    best = 0.0
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(per_batch):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * per_batch / (time.perf_counter() - start))
    return best


def flop_formula_fixes() -> dict:
    """Formulas FlopCounterMode (torch 2.9) lacks or gets wrong for this model.

    * ``convolution_backward`` ignores ``groups`` when counting the weight gradient, which
      overcounts the Conformer's depthwise convolution by orders of magnitude; each requested
      gradient (input, weight) of a convolution costs what its forward does.
    * The CPU flash-attention kernel ``scaled_dot_product_attention`` dispatches to has no formula,
      so attention would count as zero.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                      transposed, _output_padding, _groups, output_mask, out_shape=None, **_):
        forward = fc.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
        return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    fixes = {aten.convolution_backward: conv_backward}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        fixes[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_attention
        fixes[aten._scaled_dot_product_flash_attention_for_cpu_backward] = cpu_attention_backward
    return fixes


class Trainer:
    """One preset's model, optimizer and step, built like ``bsqaudio.train.loop`` builds them."""

    def __init__(self, name: str, batch: int, device: torch.device, compiled: bool) -> None:
        torch.manual_seed(0)
        self.config = preset(name)
        self.device = device
        self.batch = batch
        self.frontend = MelFrontend(self.config)
        self.model = AudioBSQ(self.config).to(device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.99),
                                           weight_decay=1e-4)
        self.generator = torch.Generator().manual_seed(0)
        segment = self.config.window_samples - self.config.hop_length + self.config.n_fft
        self.wave = 0.1 * torch.randn(batch, segment, generator=self.generator)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def losses(self, forward) -> torch.Tensor:
        wave = self.wave.to(self.device)
        with torch.no_grad():
            target, _ = self.frontend.normalize(self.frontend.power_mel(wave))
        inputs = spec_augment(target, self.generator, 2, 40, 2, 12)
        with self.autocast:
            out = forward(inputs)
        return reconstruction_loss(out.reconstruction, target, "mse") + 0.1 * out.quantizer.loss

    def step(self) -> None:
        self.losses(self.forward).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema, self.model, 0.999)

    def flops(self) -> int:
        """Model FLOPs of one forward + backward (counted eagerly; the step is not applied)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False, custom_mapping=flop_formula_fixes())
        with counter:
            self.losses(self.model).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def measure(name: str, steps: int, batch: int, device: torch.device, compiled: bool,
            flops: int | None) -> dict:
    row = {"preset": name, "mode": "compile" if compiled else "eager", "batch": batch,
           "steps": steps}
    try:
        trainer = Trainer(name, batch, device, compiled)
        row["parameters"] = trainer.parameters
        row["tokens_per_window"] = trainer.config.num_patches
        if flops is None:
            flops = trainer.flops()
        row["flops_per_step"] = flops
        start = time.perf_counter()
        trainer.step()  # warm-up (and compilation)
        sync(device)
        row["first_step_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        sync(device)
        elapsed = time.perf_counter() - start
    except Exception as err:  # compile may be unsupported or fail: report, do not stop
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
        return row
    row["step_s"] = elapsed / steps
    row["samples_per_s"] = batch * steps / elapsed
    row["tokens_per_s"] = row["samples_per_s"] * row["tokens_per_window"]
    row["flop_per_s"] = flops / row["step_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"],
                        choices=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, help="windows per step")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = machine()
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # The fp32 peak without TF32 on CUDA, as a reference, and the peak the loop can reach.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        info["fp32_matmul_peak_flops"] = matmul_peak(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = True
        peak = matmul_peak(device, peak_dtype)
    else:
        peak = info["fp32_matmul_peak_flops"] = matmul_peak(device, torch.float32)
    info["peak_dtype"] = str(peak_dtype).replace("torch.", "")
    info["peak_flops"] = peak
    info["device"] = str(device)
    print(f"# {info.get('Model name', '?')}, {info.get('CPU(s)', os.cpu_count())} CPUs, "
          f"{info['threads']} torch threads, torch {info['torch']}, {info['date']}"
          + (f", GPU {info['gpu']}" if "gpu" in info else "")
          + f", load average {info.get('load_average_1m', float('nan')):.1f}")
    print(f"# {info['peak_dtype']} matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s", flush=True)

    rows = []
    for name in args.presets:
        default_steps, default_batch = DEFAULTS[name]
        steps, batch = args.steps or default_steps, args.batch_size or default_batch
        flops = None
        for compiled in ([False] if args.no_compile else [False, True]):
            row = measure(name, steps, batch, device, compiled, flops)
            flops = row.get("flops_per_step", flops)
            if "flop_per_s" in row:
                row["fraction_of_peak"] = row["flop_per_s"] / peak
            rows.append(row)
            print(f"# done {name} {row['mode']}: "
                  + (row["error"] if "error" in row else f"{row['step_s']:.3f} s/step"),
                  flush=True)

    header = (f"{'preset':<6} {'params':>8} {'mode':<7} {'batch':>5} {'s/step':>8} "
              f"{'samples/s':>10} {'tokens/s':>10} {'GFLOP/step':>10} {'GFLOP/s':>8} "
              f"{'of peak':>7} {'1st step s':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f}M" if "parameters" in r else "?"
        if "error" in r:
            print(f"{r['preset']:<6} {params:>8} {r['mode']:<7} {r['batch']:>5} failed: "
                  f"{r['error']}")
            continue
        print(f"{r['preset']:<6} {params:>8} {r['mode']:<7} {r['batch']:>5} {r['step_s']:>8.3f} "
              f"{r['samples_per_s']:>10.3g} {r['tokens_per_s']:>10.0f} "
              f"{r['flops_per_step'] / 1e9:>10.1f} {r['flop_per_s'] / 1e9:>8.1f} "
              f"{r['fraction_of_peak']:>7.1%} {r['first_step_s']:>10.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": info, "results": rows}, handle, indent=2)
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
