"""train and export: a training run and its model."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from bsqaudio.cli.app import app, fail
from bsqaudio.train.settings import SECTIONS, TrainSettings, resumed_settings


class GroupedOptions(typer.core.TyperCommand):
    """Options listed under the headings of their settings' sections (``train.settings.SECTIONS``;
    --out, --resume and --force under "Run", --help under "Other")."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list] = {name: [] for name in (*SECTIONS, "Other")}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name == "option":
                run_option = param.name in ("out", "resume", "force")
                sections[SECTION_OF.get(param.name, "Run" if run_option else "Other")].append(record)
        for heading, records in sections.items():
            if records:
                with formatter.section(f"{heading} options"):
                    formatter.write_dl(records)


def _option(spec: dataclasses.Field, hints: dict) -> inspect.Parameter:
    """The ``train`` option of one settings field: its name, type, default and help."""
    meta = spec.metadata
    kind = hints[spec.name]
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    names = [meta.get("flag", "--" + spec.name.replace("_", "-"))]
    if kind is bool:
        names = [f"{names[0]}/--no-{names[0][2:]}"]
    if kind in (dict, list[str]):  # --set key=value and --val-dir: repeatable
        kind, default = Optional[list[str]], None
    elif default is None:
        kind = Optional[kind.__args__[0]]
    extra = {"min": meta["min"]} if "min" in meta else {}
    option = typer.Option(*names, help=meta["help"], **extra)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, option])


def _settings_options() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(TrainSettings)
    return [_option(spec, hints) for spec in dataclasses.fields(TrainSettings) if spec.metadata["section"]]


SECTION_OF = {spec.name: spec.metadata["section"] for spec in dataclasses.fields(TrainSettings)
              if spec.metadata["section"]}


def train(ctx: typer.Context, inputs: list[str], out: Path, resume: bool, force: bool, **options) -> None:
    """Train a tokenizer; resumable, DDP under torchrun; exports RUN/export at the end."""
    from bsqaudio.train.loop import train as run_training

    overrides = {}
    for item in options.pop("config_overrides") or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set needs key=value, not {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for spec in dataclasses.fields(TrainSettings):
        choices = spec.metadata.get("choices")
        if choices and options.get(spec.name) not in choices:
            fail(f"--{spec.name.replace('_', '-')} must be {', '.join(choices[:-1])} or {choices[-1]}")
    options["val_dirs"] = options["val_dirs"] or []
    settings = TrainSettings(inputs=inputs, out=str(out), config_overrides=overrides, **options)
    if resume:
        settings = _resumed(ctx, settings)
    run_training(settings, resume=resume, force=force)


train.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        list[str], typer.Argument(help="Folders (recursive), audio files or .txt lists.")]),
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        Path, typer.Option("--out", "-o", help="Run folder: cache, checkpoints, metrics, export.")]),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option(help="Continue from RUN/checkpoint with its settings; options given again "
                           "override them.")]),
    inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--force", "-f", help="Start over in a run folder that holds a run (its "
                           "checkpoint, export and metrics are removed).")]),
    *_settings_options(),
])
app.command(cls=GroupedOptions, epilog="Examples:\n\n  bsqaudio train corpus/ --out runs/small\n\n"
            "  bsqaudio train corpus/ --out runs/small --resume\n\n"
            "  torchrun --nproc-per-node 8 -m bsqaudio train corpus/ --out runs/base "
            "--preset base --batch-size 32 --lr-per-sample 4e-7")(train)


def _resumed(ctx: typer.Context, settings):
    """``settings`` with every option not given on this command line taken from the run's checkpoint."""
    from bsqaudio.train.checkpoint import read_meta

    # By the source's name: typer may bring its own copy of click's ParameterSource enum.
    explicit = {name for name in ctx.params
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
