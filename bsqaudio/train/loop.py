"""The training loop: one process, or one per GPU/CPU rank under ``torchrun`` (DDP).

Every knob is a field of ``TrainSettings`` (``train.settings``), from which the CLI's ``train``
command is generated. Defaults come
from measurement on a 2-core CPU (batch 8, AdamW 4e-4); the seed's GPU recipe is
``--batch-size 32 --lr-per-sample 4e-7``. All randomness (crops, gains, masks) comes from one CPU
generator per rank whose state is checkpointed, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import load_pretrained, save_pretrained
from bsqaudio.io.inputs import list_inputs
from bsqaudio.model import AudioBSQ, ModelConfig, preset
from bsqaudio.train.checkpoint import load_checkpoint, save_checkpoint
from bsqaudio.train.data import AudioCache, input_of_each_file, is_validation, validation_rank
from bsqaudio.train.distill import Teacher
from bsqaudio.train.gan import Adversary, PatchDiscriminator, adaptive_weight, judged
from bsqaudio.train.losses import reconstruction_loss, spec_augment
from bsqaudio.train.progress import TrainingProgress
from bsqaudio.train.run import Run, StopFlag, claim_run_folder
from bsqaudio.train.settings import TrainSettings
from bsqaudio.train.validation import real_audio_extent, real_frame_mask, real_token_mask, validation_metrics


def learning_rate(settings: TrainSettings, step: int, world: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak at the last step."""
    if settings.lr_per_sample is not None:
        peak = settings.lr_per_sample * settings.batch_size * settings.grad_accum * world
    else:
        peak = settings.lr
    if step < settings.warmup:
        return peak * (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    floor = settings.min_lr_ratio
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(settings: TrainSettings) -> ModelConfig:
    base = preset(settings.preset).to_dict()
    base.update(settings.config_overrides)
    return ModelConfig.from_dict(base)


def prepare_data(run: Run, config: ModelConfig) -> tuple[AudioCache, AudioCache]:
    s = run.settings
    files = list_inputs(s.inputs)
    val_files = list_inputs(s.val_dirs) if s.val_dirs else []
    if not s.val_dirs:
        val_files = [f for f in files if is_validation(f, s.val_fraction)]
        files = [f for f in files if not is_validation(f, s.val_fraction)]
        if not val_files and len(files) >= 2:  # a small folder: its hash split gave validation nothing
            val_files = [min(files, key=validation_rank)]
            files.remove(val_files[0])
            run.log(f"validating on {val_files[0]} (no file fell in --val-fraction {s.val_fraction})")
    if not files or not val_files:
        raise BsqAudioError("need at least one training and one validation file "
                            "(add files, raise --val-fraction or give --val-dir)")
    cache_root = Path(s.cache) if s.cache else run.out / "cache"
    if run.is_main:
        train = AudioCache.build(files, cache_root / "train", config.sample_rate, run.log)
        val = AudioCache.build(val_files, cache_root / "val", config.sample_rate, run.log)
    run.barrier()
    if not run.is_main:
        train = AudioCache.open(cache_root / "train")
        val = AudioCache.open(cache_root / "val")
    return train, val


def batch_sources(s: TrainSettings, cache: AudioCache, sample_rate: int
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """With ``batch_per_input``: ((files,) input index of each training file, (inputs,) hours of
    each), inputs drawn in proportion to their hours, so the files' overall mix is unchanged."""
    if not s.batch_per_input:
        return None, None
    source = input_of_each_file(s.inputs, cache.names)
    seconds = torch.as_tensor(cache.lengths, dtype=torch.float64) / sample_rate
    hours = torch.zeros(len(s.inputs), dtype=torch.float64).index_add_(0, source, seconds) / 3600
    if int((hours > 0).sum()) < 2:
        raise BsqAudioError("--batch-per-input needs two or more inputs that hold training audio")
    return source, hours


def train(settings: TrainSettings, resume: bool = False, force: bool = False) -> dict:
    """Run (or continue) training; returns the last validation metrics."""
    if "RANK" not in os.environ or os.environ["RANK"] == "0":
        claim_run_folder(Path(settings.out), resume, force)
    run = Run(settings)
    try:
        return Trainer(run, resume).fit()
    finally:
        run.close()


def build_model(run: Run, config: ModelConfig, resume: bool) -> AudioBSQ:
    """The model a run starts from: random (seeded), or ``init_from``'s weights, with the
    quantizer's loss settings and the encoder frozen if asked."""
    s = run.settings
    torch.manual_seed(s.seed)
    model = AudioBSQ(config)
    if s.init_from and not resume:
        start = load_pretrained(s.init_from).model
        if start.config != config:
            raise BsqAudioError(f"{s.init_from}: its config differs from this run's "
                                f"(preset {s.preset} with --set overrides)")
        model.load_state_dict(start.state_dict())
        run.log(f"initialised from {s.init_from}")
    model.quantizer.gamma = s.codebook_weight
    model.quantizer.gamma_window = s.window_balance_weight
    try:
        model.quantizer.group_size = s.codebook_group
    except ValueError as err:
        raise BsqAudioError(f"--codebook-group: {err}") from None
    if s.freeze_encoder:
        if not s.init_from and not resume:
            raise BsqAudioError("--freeze-encoder needs --init-from: a random encoder would stay random")
        model.freeze_encoder()
    elif s.distill_from:
        raise BsqAudioError("--distill-from needs --freeze-encoder: the teacher decodes the codes as "
                            "its encoder writes them")
    model.set_grad_checkpointing(s.grad_checkpointing)
    return model


class Trainer:
    """One run's model, EMA, optimizers, data and random stream, and the steps that train them:
    ``fit`` alternates ``train_step`` with checkpoints (``save``) and ``validate``."""

    def __init__(self, run: Run, resume: bool) -> None:
        self.run = run
        self.s = s = run.settings
        self.config = config = model_config(s)
        self.frontend = MelFrontend(config)
        self.train_cache, self.val_cache = prepare_data(run, config)
        run.log(f"train {self.train_cache.seconds / 3600:.2f} h in {len(self.train_cache.names)} files, "
                f"val {self.val_cache.seconds / 3600:.2f} h in {len(self.val_cache.names)} files; "
                f"{config.name}: {config.bitrate:.0f} bit/s, device {run.device}, world {run.world}")
        self.batch_source, self.source_hours = batch_sources(s, self.train_cache, config.sample_rate)
        if self.batch_source is not None:
            run.log("batches per input: " + ", ".join(
                f"{name} {h:.2f} h" for name, h in zip(s.inputs, self.source_hours.tolist(), strict=True)))

        model = build_model(run, config, resume)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if run.distributed and run.device.type == "cuda":  # SyncBatchNorm is GPU-only
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.core = model.to(run.device)
        self.ema.to(run.device)
        self.model = model
        if run.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        self.forward = torch.compile(self.model) if s.compile else self.model
        self.optimizer = torch.optim.AdamW([p for p in self.core.parameters() if p.requires_grad], lr=s.lr,
                                           betas=(0.9, 0.99), weight_decay=s.weight_decay)
        self.teacher = (Teacher(load_pretrained(s.distill_from).model, model, s.distill_from).to(run.device)
                        if s.distill_from else None)
        self.adversary = (Adversary(PatchDiscriminator(), s.disc_lr, run.device, run.distributed)
                          if s.discriminator else None)
        self.generator = torch.Generator().manual_seed(s.seed * 1000 + run.rank)
        self.step = 0
        self.ckpt_dir = run.out / "checkpoint"
        if resume:
            self.restore()
        self.segment = config.segment_samples
        self.val_wave, self.val_len = self.val_cache.first_crops(self.segment, s.val_windows)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda"
                         else contextlib.nullcontext())
        # The layer whose gradient the adaptive GAN weight compares (the decoder's last).
        self.last_layer = self.core.last_decoder_layer()

    def restore(self) -> None:
        """Continue from the run's checkpoint: weights, EMA, optimizers, random streams, step."""
        run, s, ckpt_dir = self.run, self.s, self.ckpt_dir
        trainer_state, meta = load_checkpoint(ckpt_dir, self.core, self.ema)
        try:
            self.optimizer.load_state_dict(trainer_state["optimizer"])
        except ValueError:
            raise BsqAudioError(f"{ckpt_dir}: its optimizer trained a different set of weights than this run "
                                "would (was --freeze-encoder changed?)") from None
        except (KeyError, TypeError, IndexError, RuntimeError) as err:
            raise BsqAudioError(f"{ckpt_dir}: its optimizer state is damaged ({type(err).__name__}: {err})") from None
        try:
            states = trainer_state["generators"]
            if run.rank < len(states):
                self.generator.set_state(states[run.rank])
            else:  # more ranks than the checkpoint was saved with: a fresh, reproducible stream
                self.generator.manual_seed(s.seed * 1000 + run.rank + 7919 * meta["step"])
            if self.adversary is not None and "disc" in trainer_state:
                self.adversary.load_state_dict(trainer_state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise BsqAudioError(f"{ckpt_dir}: its random-number or discriminator state is damaged "
                                f"({type(err).__name__}: {err})") from None
        self.step = meta["step"]
        run.log(f"resumed from step {self.step}")
        if run.is_main:
            drop_metrics_after(run.out / "metrics.jsonl", self.step)

    def save(self) -> None:
        """A checkpoint of everything a resumed run needs (rank 0 writes; every rank's stream)."""
        run = self.run
        states = [self.generator.get_state()]
        if run.distributed:
            gathered = [None] * run.world
            dist.all_gather_object(gathered, self.generator.get_state())
            states = gathered
        if not run.is_main:
            return
        trainer_state = {"optimizer": self.optimizer.state_dict(), "generators": states}
        if self.adversary is not None:
            trainer_state.update(self.adversary.state_dict())
        save_checkpoint(self.ckpt_dir, self.step, self.core, self.ema, trainer_state,
                        {"settings": asdict(self.s), "config": self.config.to_dict()})

    def validate(self, progress: TrainingProgress) -> dict:
        """The EMA's validation metrics, appended to metrics.jsonl and shown."""
        metrics = validation_metrics(self.ema, self.frontend, self.val_wave, self.val_len, self.run.device,
                                     self.autocast)
        metrics.update(step=self.step, time=time.time())
        with open(self.run.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"kind": "val", **metrics}) + "\n")
        progress.log(f"val step {self.step}: mel MAE {metrics['mel_mae_db']:.2f} dB, "
                     f"MSE {metrics['mel_mse_db']:.1f} dB^2, bits {metrics['bit_balance_min']:.2f}-"
                     f"{metrics['bit_balance_max']:.2f} ({metrics['copied_bits']} copied), "
                     f"distinct {metrics['distinct_per_window']:.2f}, "
                     f"perplexity {metrics['perplexity']:.0f}")
        if self.s.plot:
            from bsqaudio.train.plots import plot_run

            plot_run(self.run.out, self.ema, self.frontend, self.val_wave[:1], self.run.device, self.step)
        return metrics

    def train_step(self, q_weight: float, use_gan: bool) -> tuple[dict, float]:
        """One optimizer step over ``grad_accum`` micro-batches -> (mean losses, gradient norm)."""
        s, run, config, adversary = self.s, self.run, self.config, self.adversary
        logs = {"recon": 0.0, "quant": 0.0, "gan": 0.0, "fm": 0.0, "disc": 0.0}
        for micro in range(s.grad_accum):
            among = None
            if self.batch_source is not None:
                drawn = int(torch.multinomial(self.source_hours, 1, generator=self.generator))
                among = self.batch_source == drawn
            wave, real = self.train_cache.random_crops(s.batch_size, self.segment, self.generator, among=among)
            wave = wave.to(run.device)
            frames, rows = real_audio_extent(real.to(run.device), config)
            with torch.no_grad():
                target, _ = self.frontend.normalize(self.frontend.power_mel(wave))
            inputs = target
            if s.spec_augment:
                inputs = spec_augment(target, self.generator, s.time_masks, s.time_mask_width,
                                      s.freq_masks, s.freq_mask_width)
            last_micro = micro == s.grad_accum - 1
            sync = contextlib.nullcontext() if not run.distributed or last_micro else self.model.no_sync()
            with sync:
                with self.autocast:
                    out = self.forward(inputs, real_token_mask(rows, config))
                wanted = target if self.teacher is None else self.teacher.target(out.quantizer.codes)
                recon = reconstruction_loss(out.reconstruction, wanted, s.loss, frames)
                total = recon + q_weight * out.quantizer.loss
                if use_gan:
                    fake = judged(out.reconstruction, target, real_frame_mask(frames, target.shape[1]))
                    with self.autocast:
                        adv, fm = adversary.generator_losses(fake, target)
                    gan = adv + s.feature_match_weight * fm
                    total = total + adaptive_weight(recon, gan, self.last_layer) * s.disc_weight * gan
                    logs["gan"] += float(adv.detach()) / s.grad_accum
                    logs["fm"] += float(fm.detach()) / s.grad_accum
                (total / s.grad_accum).backward()
            if use_gan:
                with self.autocast:
                    logs["disc"] += adversary.discriminator_backward(
                        target, fake, 1 / s.grad_accum, sync=last_micro) / s.grad_accum
            logs["recon"] += float(recon.detach()) / s.grad_accum
            logs["quant"] += float(out.quantizer.loss.detach()) / s.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.core.parameters(), s.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if use_gan:
            adversary.step()
        update_ema(self.ema, self.core, s.ema_decay if self.step >= s.warmup else 0.0)
        self.step += 1
        return logs, float(grad_norm)

    def fit(self) -> dict:
        """Train to ``steps`` (or a signal, or ``max_minutes``), checkpointing and validating on
        schedule; export the EMA at the end. Returns the last validation metrics."""
        s, run = self.s, self.run
        stop = StopFlag()
        start_time = time.time()
        last = {}
        tokens_per_step = s.batch_size * s.grad_accum * run.world * self.config.num_patches
        tick, tick_step = time.time(), self.step
        # A model started from trained weights already has a trained quantizer: ramping its loss
        # in again lets the bits drift out of balance (seen when continuing the default).
        quantizer_ramp = 1 if s.init_from else s.quantizer_warmup
        with TrainingProgress(s.steps, self.step, run.is_main) as progress:
            try:
                if self.step == 0 and run.is_main:
                    last = self.validate(progress)
                while self.step < s.steps and not stop.stop:
                    lr = learning_rate(s, self.step, run.world)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    q_weight = s.quantizer_weight * min(1.0, (self.step + 1) / max(1, quantizer_ramp))
                    use_gan = self.adversary is not None and self.step >= s.disc_start
                    logs, grad_norm = self.train_step(q_weight, use_gan)
                    step = self.step
                    if step % s.log_every == 0 and run.is_main:
                        now = time.time()
                        rate = (step - tick_step) / max(1e-9, now - tick)
                        tick, tick_step = now, step
                        eta = (s.steps - step) / max(rate, 1e-9)
                        record = {"kind": "train", "step": step, "lr": lr, "grad_norm": grad_norm,
                                  "tokens_per_s": rate * tokens_per_step, "steps_per_s": rate, **logs}
                        with open(run.out / "metrics.jsonl", "a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        shown = logs if use_gan else {"recon": logs["recon"], "quant": logs["quant"]}
                        progress.update(step, shown, lr, rate * tokens_per_step, eta)
                    out_of_time = s.max_minutes is not None and time.time() - start_time > s.max_minutes * 60
                    stop.stop = self.any_rank(stop.stop or out_of_time)
                    if step % s.checkpoint_every == 0 or stop.stop or step == s.steps:
                        self.save()
                    if run.is_main and (step % s.val_every == 0 or step == s.steps):
                        last = self.validate(progress)
                    run.barrier()
            finally:
                stop.restore()
        if run.is_main and self.step >= s.steps:
            save_pretrained(self.ema, run.out / "export", dtype=getattr(torch, s.export_dtype))
            run.log(f"exported {run.out / 'export'}")
        elif stop.stop:
            run.log(f"stopped at step {self.step}; continue with --resume")
        return last

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (a stop on one rank stops all)."""
        if not self.run.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.run.device)
        dist.all_reduce(value)
        return bool(value.item())


def drop_metrics_after(path: Path, step: int) -> None:
    """A run killed after its last checkpoint logged steps that the resumed run repeats: drop
    them so each step appears once."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """A lerp, not decay * e + (1 - decay) * m: a weight the model holds still (a frozen encoder)
    stays bit-exact instead of drifting by rounding."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(m.detach(), 1 - decay)
        else:
            e.copy_(m)
