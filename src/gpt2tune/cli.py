"""The command line: each command turns flags (and a --config file) into a config and calls the Python API."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

import click

from .config import BenchConfig, SamplingConfig, TrainConfig, build, read_config_file
from .errors import UserError


class _OptionalType(click.ParamType):
    """A number flag that also takes 'none' (for options whose default is off)."""

    def __init__(self, inner: type):
        self.inner = inner
        self.name = f"{inner.__name__}|none"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "off", "")):
            return _NONE
        try:
            return self.inner(value)
        except ValueError:
            self.fail(f"{value!r} is not a valid {self.inner.__name__} (or 'none')", param, ctx)


_NONE = object()  # "the user said none", as opposed to "flag not given" (None)


def dataclass_options(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Add one click option per dataclass field: the dataclass is the single source of options."""
    hints = typing.get_type_hints(cls)

    def decorate(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            if fld.name in skip:
                continue
            tp = hints[fld.name]
            optional = False
            if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
                optional = type(None) in typing.get_args(tp)
                tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            flag = "--" + fld.name.replace("_", "-")
            decls = [flag] + ([fld.metadata["flag"]] if "flag" in fld.metadata else [])
            default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
            shown = ",".join(default) if isinstance(default, list) else default
            help_text = f"{fld.metadata.get('help', '')} [default: {shown}]"
            if tp is bool:
                opt = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None, help=help_text)
            elif typing.get_origin(tp) is list:
                opt = click.option(*decls, fld.name, type=str, default=None, help=help_text)
            elif optional and tp in (int, float):
                opt = click.option(*decls, fld.name, type=_OptionalType(tp), default=None, help=help_text)
            else:
                opt = click.option(*decls, fld.name, type=tp, default=None, help=help_text)
            f = opt(f)
        return f

    return decorate


def given(kwargs: dict[str, Any], cls: type) -> dict[str, Any]:
    """The flags the user actually gave, for fields of `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (None if v is _NONE else v) for k, v in kwargs.items() if k in names and v is not None}


def config_option(f: Callable) -> Callable:
    return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                        help="YAML file of options (keys = flag names); flags given here override it")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="gpt2tune")
def cli() -> None:
    """Fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about that topic."""


@cli.command()
@config_option
@dataclass_options(TrainConfig)
def train(config_file: str | None, **kwargs: Any) -> None:
    """Fine-tune a model on a sentence file; writes a run directory (--out)."""
    from .train import train as run_train

    flags = given(kwargs, TrainConfig)
    layers = [read_config_file(config_file) if config_file else {}, flags]
    out = flags.get("out") or layers[0].get("out")
    if flags.get("resume") and out and (Path(out) / "config.yaml").is_file():
        saved = read_config_file(Path(out) / "config.yaml")
        saved.pop("resume", None)
        saved.pop("overwrite", None)
        layers.insert(0, saved)  # a resumed run keeps its own settings unless flags say otherwise
    run_train(build(TrainConfig, *layers))


@cli.command()
@click.argument("model")
@click.argument("prompts", nargs=-1, required=True)
@config_option
@dataclass_options(SamplingConfig)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per sample")
def generate(model: str, prompts: tuple[str, ...], config_file: str | None, as_json: bool, **kwargs: Any) -> None:
    """Sample sentences from MODEL (run directory, HF directory, hub id or .gguf) for each PROMPT."""
    from .sampling import as_dicts, generate as run_generate

    options = {**(read_config_file(config_file) if config_file else {}), **given(kwargs, SamplingConfig)}
    samples = run_generate(model, list(prompts), **options)
    if as_json:
        for row in as_dicts(samples):
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        for s in samples:
            click.echo(s.text)


@cli.command()
@config_option
@dataclass_options(BenchConfig)
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def bench(config_file: str | None, as_json: bool, **kwargs: Any) -> None:
    """Measure training and sampling speed: gpt2tune's paths vs the article's, side by side."""
    from .bench import format_table, run

    cfg = build(BenchConfig, read_config_file(config_file) if config_file else {}, given(kwargs, BenchConfig))
    result = run(cfg, progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="gpt2tune", standalone_mode=False)
    except UserError as e:
        click.echo(f"gpt2tune: error: {e}", err=True)
        return 1
    except click.exceptions.NoArgsIsHelp as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return 2
    except click.UsageError as e:
        hint = f" (see gpt2tune {e.ctx.info_name} --help)" if e.ctx and e.ctx.parent else ""
        click.echo(f"gpt2tune: error: {e.format_message()}{hint}", err=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("gpt2tune: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("gpt2tune: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
