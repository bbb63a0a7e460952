"""train and export: a training run and its model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bsqaudio.cli.app import DeviceOpt, app, fail

# `train --help` in sections, by option name (plain Click help has no rich panels).
TRAIN_OPTION_GROUPS = {
    "Run": ["--out", "--resume", "--force", "--steps", "--max-minutes", "--checkpoint-every", "--seed",
            "--device", "--compile", "--grad-checkpointing", "--plot", "--export-dtype"],
    "Model": ["--preset", "--set", "--init-from", "--freeze-encoder"],
    "Data": ["--val-dir", "--val-fraction", "--val-every", "--val-windows", "--cache", "--batch-per-input",
             "--spec-augment", "--time-masks", "--time-mask-width", "--freq-masks", "--freq-mask-width"],
    "Optimisation": ["--batch-size", "--grad-accum", "--lr", "--lr-per-sample", "--warmup", "--loss",
                     "--ema-decay"],
    "Quantizer": ["--quantizer-weight", "--codebook-weight", "--codebook-group", "--window-balance-weight"],
    "Adversarial decoder (GAN)": ["--discriminator", "--disc-start", "--disc-weight", "--disc-lr",
                                  "--feature-match-weight"],
}


class GroupedOptions(typer.core.TyperCommand):
    """Options listed under TRAIN_OPTION_GROUPS' headings (any not named there under "Other")."""

    def format_options(self, ctx, formatter) -> None:
        rows = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name == "option":
                rows[param.opts[0]] = record
        placed = set()
        for heading, names in TRAIN_OPTION_GROUPS.items():
            records = [rows[name] for name in names if name in rows]
            placed.update(names)
            with formatter.section(f"{heading} options"):
                formatter.write_dl(records)
        rest = [record for name, record in rows.items() if name not in placed]
        with formatter.section("Other options"):
            formatter.write_dl(rest)


@app.command(cls=GroupedOptions, epilog="Examples:\n\n  bsqaudio train corpus/ --out runs/small\n\n"
                    "  bsqaudio train corpus/ --out runs/small --resume\n\n"
                    "  torchrun --nproc-per-node 8 -m bsqaudio train corpus/ --out runs/base "
                    "--preset base --batch-size 32 --lr-per-sample 4e-7")
def train(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Folders (recursive), audio files or .txt lists.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: cache, checkpoints, metrics, export.")],
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small or base.")] = "small",
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config field, e.g. --set code_bits=18.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in all (the schedule's length).")] = 20000,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per step per rank.")] = 8,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches summed into each step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 4e-4,
    lr_per_sample: Annotated[Optional[float], typer.Option(
        help="Peak lr per sample of global batch (BSQ-ViT: 4e-7); overrides --lr.")] = None,
    warmup: Annotated[int, typer.Option(help="Steps of linear learning-rate warmup.")] = 500,
    loss: Annotated[str, typer.Option(help="mse or l1, on dB/40.")] = "mse",
    quantizer_weight: Annotated[float, typer.Option(help="Weight of the quantizer loss (commit + entropy).")] = 0.1,
    codebook_weight: Annotated[float, typer.Option(
        help="Weight of the bit-balance (codebook entropy) term within the quantizer loss.")] = 1.0,
    codebook_group: Annotated[int, typer.Option(
        help="Bits per group in that term (divides L): above 1 it also penalizes bits that copy "
             "each other (BSQ-ViT's grouped entropy).")] = 1,
    window_balance_weight: Annotated[float, typer.Option(
        help="Weight of the per-bit balance within each window, so each recording (not only the "
             "batch's mix) uses both values of every bit.")] = 0.0,
    spec_augment: Annotated[bool, typer.Option(
        "--spec-augment/--no-spec-augment", help="Mask time and mel bands of the encoder input.")] = True,
    time_masks: Annotated[int, typer.Option(help="SpecAugment time masks per window.")] = 2,
    time_mask_width: Annotated[int, typer.Option(help="Widest time mask, in frames.")] = 40,
    freq_masks: Annotated[int, typer.Option(help="SpecAugment mel-band masks per window.")] = 2,
    freq_mask_width: Annotated[int, typer.Option(help="Widest mel-band mask, in mels.")] = 12,
    discriminator: Annotated[bool, typer.Option(
        "--discriminator/--no-discriminator", help="PatchGAN on the mel (off by default on CPU).")] = False,
    disc_start: Annotated[int, typer.Option(help="Step at which the discriminator starts.")] = 5000,
    disc_weight: Annotated[float, typer.Option(
        help="GAN terms' weight, relative to the reconstruction's gradient at the last layer.")] = 0.1,
    disc_lr: Annotated[float, typer.Option(help="Discriminator learning rate.")] = 1e-4,
    feature_match_weight: Annotated[float, typer.Option(
        help="Feature matching beside the hinge loss, within --disc-weight.")] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="Decay of the weights' moving average (what is exported).")] = 0.999,
    val_fraction: Annotated[float, typer.Option(
        help="Share of files held out for validation (by a hash of the file name).")] = 0.05,
    val_dir: Annotated[Optional[list[str]], typer.Option(help="Validation folders (instead of a split).")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every this many steps.")] = 500,
    val_windows: Annotated[int, typer.Option(help="Validation windows (the first of each file).")] = 32,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every this many steps.")] = 200,
    max_minutes: Annotated[Optional[float], typer.Option(
        help="Stop with a checkpoint after this many minutes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights, crops and masks.")] = 0,
    grad_checkpointing: Annotated[bool, typer.Option(
        help="Recompute activations in backward: less memory, more time.")] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = False,
    device: DeviceOpt = "auto",
    cache: Annotated[Optional[str], typer.Option(help="Audio cache folder (default RUN/cache).")] = None,
    plot: Annotated[bool, typer.Option(help="Write loss and spectrogram PNGs at each validation.")] = False,
    export_dtype: Annotated[str, typer.Option(help="float32 or float16 for the exported weights.")] = "float32",
    resume: Annotated[bool, typer.Option(
        help="Continue from RUN/checkpoint with its settings; options given again override them.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Start over in a run folder that holds a run (its checkpoint, export and "
        "metrics are removed).")] = False,
    init_from: Annotated[Optional[str], typer.Option(
        help="Start from these weights (a model folder or file, e.g. a previous export).")] = None,
    freeze_encoder: Annotated[bool, typer.Option(
        help="Train only the decoder: the codes stay as --init-from's encoder writes them "
             "(after scripts/calibrate_bits.py).")] = False,
    batch_per_input: Annotated[bool, typer.Option(
        help="Draw each batch from one of the inputs (e.g. speech/ or music/, in proportion to their "
             "hours), so the bit-balance term balances each input, not only their mix.")] = False,
) -> None:
    """Train a tokenizer; resumable, DDP under torchrun; exports RUN/export at the end."""
    from bsqaudio.train.loop import TrainSettings
    from bsqaudio.train.loop import train as run_training

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set needs key=value, not {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if export_dtype not in ("float32", "float16", "bfloat16"):
        fail("--export-dtype must be float32, float16 or bfloat16")
    settings = TrainSettings(
        inputs=inputs, out=str(out), preset=preset, config_overrides=overrides, steps=steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, lr_per_sample=lr_per_sample,
        warmup=warmup, loss=loss, quantizer_weight=quantizer_weight, codebook_weight=codebook_weight,
        window_balance_weight=window_balance_weight,
        codebook_group=codebook_group,
        spec_augment=spec_augment,
        time_masks=time_masks, time_mask_width=time_mask_width, freq_masks=freq_masks,
        freq_mask_width=freq_mask_width, discriminator=discriminator, disc_start=disc_start,
        disc_weight=disc_weight, disc_lr=disc_lr, feature_match_weight=feature_match_weight,
        ema_decay=ema_decay, val_fraction=val_fraction,
        val_dirs=val_dir or [], val_every=val_every, val_windows=val_windows,
        checkpoint_every=checkpoint_every, seed=seed, grad_checkpointing=grad_checkpointing,
        compile=compile, device=device, cache=cache, plot=plot, export_dtype=export_dtype,
        max_minutes=max_minutes, init_from=init_from, freeze_encoder=freeze_encoder,
        batch_per_input=batch_per_input,
    )
    if loss not in ("mse", "l1"):
        fail("--loss must be mse or l1")
    if resume:
        settings = _resumed(ctx, settings)
    run_training(settings, resume=resume, force=force)


def _resumed(ctx: typer.Context, settings):
    """``settings`` with every option not given on this command line taken from the run's checkpoint."""
    from bsqaudio.train.checkpoint import read_meta
    from bsqaudio.train.loop import resumed_settings

    field_of = {"set_": "config_overrides", "val_dir": "val_dirs"}
    # By the source's name: typer may bring its own copy of click's ParameterSource enum.
    explicit = {field_of.get(name, name) for name in ctx.params
                if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    stored = read_meta(Path(settings.out) / "checkpoint").get("settings", {})
    settings, changes = resumed_settings(settings, stored, explicit)
    if changes:
        print("resuming with changed settings: " + "; ".join(changes))
    return settings


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A `bsqaudio train` run folder.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model folder (default RUN/export).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Export the EMA weights of a run's latest checkpoint as model.safetensors + config.json."""
    import torch

    from bsqaudio.train.checkpoint import export_checkpoint

    if dtype not in ("float32", "float16", "bfloat16"):
        fail("--dtype must be float32, float16 or bfloat16")
    folder = export_checkpoint(run_dir, output or run_dir / "export", getattr(torch, dtype))
    typer.echo(str(folder))
