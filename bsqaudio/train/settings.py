"""Every setting of a training run, declared once: its type, default, help text and section.

``TrainSettings`` is what the loop reads and what a checkpoint stores; the ``train`` command's
options are generated from it (``bsqaudio.cli.train_command``), so adding a setting here adds
the option, its help and its place in ``train --help``. Standard library only: ``train --help``
must not wait for torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SECTIONS = ("Run", "Model", "Data", "Optimisation", "Quantizer", "Adversarial decoder (GAN)")


def setting(default: Any, help: str, section: str | None, **option: Any) -> Any:
    """A settings field. ``section`` None: no command-line option (a fixed part of the recipe).
    ``option``: further ``typer.Option`` arguments (``min``, ``flag`` for a "--x/--no-x" pair
    or a different name, ``choices`` checked before the run starts)."""
    assert section is None or section in SECTIONS, section
    kind = "default_factory" if callable(default) else "default"
    return field(**{kind: default}, metadata={"help": help, "section": section, **option})


@dataclass
class TrainSettings:
    inputs: list[str] = setting(list, "Folders (recursive), audio files or .txt lists.", None)
    out: str = setting("", "Run folder: cache, checkpoints, metrics, export.", None)
    # Run
    steps: int = setting(20000, "Optimizer steps in all (the schedule's length).", "Run", min=1)
    max_minutes: float | None = setting(None, "Stop with a checkpoint after this many minutes.", "Run")
    checkpoint_every: int = setting(200, "Save a resumable checkpoint every this many steps.", "Run", min=1)
    seed: int = setting(0, "Seed of the weights, crops and masks.", "Run")
    device: str = setting("auto", "auto, cpu or cuda.", "Run")
    compile: bool = setting(False, "torch.compile the model.", "Run")
    grad_checkpointing: bool = setting(False, "Recompute activations in backward: less memory, more time.", "Run")
    plot: bool = setting(False, "Write loss and spectrogram PNGs at each validation.", "Run")
    export_dtype: str = setting("float32", "float32, float16 or bfloat16 for the exported weights.", "Run",
                                choices=("float32", "float16", "bfloat16"))
    log_every: int = setting(10, "Log a training record every this many steps.", None)
    # Model
    preset: str = setting("small", "Model preset: tiny, small or base.", "Model")
    config_overrides: dict = setting(dict, "Override a config field, e.g. --set code_bits=18.", "Model",
                                     flag="--set")
    init_from: str | None = setting(None, "Start from these weights (a model folder or file, e.g. a previous "
                                    "export).", "Model")
    freeze_encoder: bool = setting(False, "Train only the decoder: the codes stay as --init-from's encoder "
                                   "writes them (after scripts/calibrate_bits.py).", "Model")
    distill_from: str | None = setting(None, "Train the decoder to reproduce this model's decoded "
                                       "spectrograms (same codes) instead of the true ones: a smaller "
                                       "decoder from scripts/shrink_decoder.py. Needs --freeze-encoder.",
                                       "Model")
    # Data
    val_dirs: list[str] = setting(list, "Validation folders (instead of a split).", "Data", flag="--val-dir")
    val_fraction: float = setting(0.05, "Share of files held out for validation (by a hash of the file "
                                  "name).", "Data")
    val_every: int = setting(500, "Validate every this many steps.", "Data", min=1)
    val_windows: int = setting(32, "Validation windows (the first of each file).", "Data", min=1)
    cache: str | None = setting(None, "Audio cache folder (default RUN/cache).", "Data")
    batch_per_input: bool = setting(False, "Draw each batch from one of the inputs (e.g. speech/ or music/, "
                                    "in proportion to their hours), so the bit-balance term balances each "
                                    "input, not only their mix.", "Data")
    spec_augment: bool = setting(True, "Mask time and mel bands of the encoder input.", "Data")
    time_masks: int = setting(2, "SpecAugment time masks per window.", "Data", min=0)
    time_mask_width: int = setting(40, "Widest time mask, in frames.", "Data", min=0)
    freq_masks: int = setting(2, "SpecAugment mel-band masks per window.", "Data", min=0)
    freq_mask_width: int = setting(12, "Widest mel-band mask, in mels.", "Data", min=0)
    # Optimisation
    batch_size: int = setting(8, "Windows per step per rank.", "Optimisation", min=1)
    grad_accum: int = setting(1, "Micro-batches summed into each step.", "Optimisation", min=1)
    lr: float = setting(4e-4, "Peak learning rate.", "Optimisation")
    lr_per_sample: float | None = setting(None, "Peak lr per sample of global batch (BSQ-ViT: 4e-7); "
                                          "overrides --lr.", "Optimisation")
    warmup: int = setting(500, "Steps of linear learning-rate warmup.", "Optimisation", min=0)
    loss: str = setting("mse", "mse or l1, on dB/40.", "Optimisation", choices=("mse", "l1"))
    ema_decay: float = setting(0.999, "Decay of the weights' moving average (what is exported).", "Optimisation")
    min_lr_ratio: float = setting(0.1, "Cosine decay ends at this share of the peak rate.", None)
    weight_decay: float = setting(1e-4, "AdamW weight decay.", None)
    grad_clip: float = setting(1.0, "Gradient norm clip.", None)
    # Quantizer
    quantizer_weight: float = setting(0.1, "Weight of the quantizer loss (commit + entropy).", "Quantizer")
    quantizer_warmup: int = setting(1000, "Steps over which the quantizer loss ramps in.", None)
    codebook_weight: float = setting(1.0, "Weight of the bit-balance (codebook entropy) term within the "
                                     "quantizer loss.", "Quantizer")
    codebook_group: int = setting(1, "Bits per group in that term (divides L): above 1 it also penalizes bits "
                                  "that copy each other (BSQ-ViT's grouped entropy).", "Quantizer", min=1)
    window_balance_weight: float = setting(0.0, "Weight of the per-bit balance within each window, so each "
                                           "recording (not only the batch's mix) uses both values of every "
                                           "bit.", "Quantizer")
    # Adversarial decoder
    discriminator: bool = setting(False, "PatchGAN on the mel (off by default on CPU).",
                                  "Adversarial decoder (GAN)")
    disc_start: int = setting(5000, "Step at which the discriminator starts.", "Adversarial decoder (GAN)",
                              min=0)
    disc_weight: float = setting(0.1, "GAN terms' weight, relative to the reconstruction's gradient at the "
                                 "last layer.", "Adversarial decoder (GAN)")
    disc_lr: float = setting(1e-4, "Discriminator learning rate.", "Adversarial decoder (GAN)")
    feature_match_weight: float = setting(1.0, "Feature matching beside the hinge loss, within --disc-weight.",
                                          "Adversarial decoder (GAN)")


# Settings that describe the machine a run happens to use, not the run: a resume keeps the run's
# other settings, but takes these from the new command (default or given).
MACHINE_SETTINGS = frozenset({"device", "compile", "grad_checkpointing", "cache", "max_minutes"})


def resumed_settings(given: TrainSettings, stored: dict, explicit: set[str]) -> tuple[TrainSettings, list[str]]:
    """The settings a resumed run continues with, and the changes to report.

    A run resumed without repeating, say, ``--codebook-group 9`` or ``--preset base`` would
    otherwise continue with a different objective or fail to load: every setting not named in
    ``explicit`` (given on this command line) keeps the checkpoint's value. Named ones win, so a
    run can be extended (``--steps``) or retuned (``--lr``) on purpose; each change is listed."""
    merged, changes = asdict(given), []
    for name, value in stored.items():
        if name not in merged or name in MACHINE_SETTINGS:
            continue
        if name not in explicit:
            merged[name] = value
        elif merged[name] != value:
            changes.append(f"{name} {value!r} -> {merged[name]!r}")
    return TrainSettings(**merged), changes
