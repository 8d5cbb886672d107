"""The command line: each command turns flags (and a --config file) into a config and calls the Python API."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from typing import Any, Callable

import click

from gpt2tune.config import BenchConfig, InspectConfig, SamplingConfig, TrainConfig, build, read_config_file
from gpt2tune.corpus.options import CleanConfig, WikipediaConfig
from gpt2tune.demo import DemoConfig
from gpt2tune.errors import Interrupted, UserError
from gpt2tune.evaluate.options import CompareConfig, EvaluateConfig
from gpt2tune.export.options import ExportConfig, PushConfig
from gpt2tune.process import long_job, rerun_with_tcmalloc
from gpt2tune.serve.options import ServeConfig


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


class _OnOff(click.ParamType):
    """A switch given as on|off (also true/false, yes/no, 1/0)."""

    name = "on|off"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        v = str(value).strip().lower()
        if v in ("on", "true", "yes", "1"):
            return True
        if v in ("off", "false", "no", "0"):
            return False
        self.fail(f"{value!r} is not on or off", param, ctx)


_NONE = object()  # "the user said none", as opposed to "flag not given" (None)


def must_exist(*models: str | None, data: str | None = None) -> None:
    """A model or data argument that names nothing here fails in a moment, before torch and transformers load
    (seconds); the commands' own checks say the same later, for callers of the Python API."""
    from gpt2tune.data.read import source
    from gpt2tune.model.source import resolve

    for model in models:
        if model:
            resolve(model)
    if data:
        source(data)


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
            if fld.metadata.get("onoff"):
                shown = "on" if default else "off"
            # only a field that says so is required: an empty default can also mean "derived" (compare's --data)
            mark = " [required]" if fld.metadata.get("required") else "" if shown == "" else f" [default: {shown}]"
            help_text = fld.metadata.get("help", "") + mark
            if tp is bool and fld.metadata.get("onoff"):
                opt = click.option(flag, fld.name, type=_OnOff(), default=None, help=help_text)
            elif tp is bool:
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
    from gpt2tune.run.resume import settle

    # with --resume, the run's own config.yaml fills what is not given here; a bad option fails before the
    # heavy libraries load
    cfg = settle(None, {**(read_config_file(config_file) if config_file else {}), **given(kwargs, TrainConfig)})
    must_exist(cfg.model, data=cfg.data)

    from gpt2tune.train.loop import train as run_train

    run_train(cfg)


@cli.command()
@click.argument("model")
@click.argument("prompts", nargs=-1, required=True)
@config_option
@dataclass_options(SamplingConfig)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per sample (with --best-of: what "
              "each prompt's candidates failed)")
@click.option("--verbose", "-v", is_flag=True, help="with --best-of: say on stderr how many candidates were "
              "dropped, and why")
def generate(model: str, prompts: tuple[str, ...], config_file: str | None, as_json: bool, verbose: bool,
             **kwargs: Any) -> None:
    """Sample sentences from MODEL (run directory, HF directory, hub id or .gguf) for each PROMPT."""
    cfg = build(SamplingConfig, read_config_file(config_file) if config_file else {}, given(kwargs, SamplingConfig))
    must_exist(model)

    from gpt2tune.evaluate.generate import draw
    from gpt2tune.model.sample import as_dicts

    result = draw(model, list(prompts), cfg)
    if verbose and cfg.best_of > 1:
        click.echo(result.summary(), err=True)
    if as_json:
        rows = [p.as_dict() for p in result.picks] if cfg.best_of > 1 else as_dicts(result.samples)
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        for s in result.samples:
            click.echo(s.text)


@cli.group()
def corpus() -> None:
    """Build a sentence file to train on: from Wikipedia pages or from your own files."""


def _corpus_api(name: str) -> Callable:
    try:
        from gpt2tune import corpus as corpus_package

        return getattr(corpus_package, name)
    except ImportError as e:
        raise UserError(f"gpt2tune corpus needs the corpus extra: pip install 'gpt2tune[corpus]' ({e})") from None


def _corpus_summary(result: Any) -> None:
    totals = result.manifest["totals"]
    dropped = ", ".join(f"{k} {v}" for k, v in totals["dropped"].items() if v)
    click.echo(f"wrote {totals['sentences_kept']} sentences ({totals['words_per_sentence_mean']} words on average) "
               f"to {result.out}; manifest: {result.manifest_path}")
    click.echo(f"dropped: {dropped or 'none'}")


@corpus.command()
@click.argument("topic")
@config_option
@dataclass_options(WikipediaConfig, skip=("topic", "category"))
@click.option("--category", "categories", multiple=True,
              help="include the article members of this category (repeatable; 'Category:' prefix optional)")
def wikipedia(topic: str, config_file: str | None, categories: tuple[str, ...], **kwargs: Any) -> None:
    """Fetch the Wikipedia page TOPIC and the pages around it; write their clean sentences to --out."""
    build_wikipedia_corpus = _corpus_api("build_wikipedia_corpus")
    flags = {**given(kwargs, WikipediaConfig), "topic": topic}
    if categories:
        flags["category"] = list(categories)
    result = build_wikipedia_corpus(build(WikipediaConfig, read_config_file(config_file) if config_file else {},
                                          flags))
    click.echo(f"{result.manifest['totals']['pages']} pages from {result.manifest['api_url']} "
               f"({result.manifest['totals']['http_requests']} requests, "
               f"{result.manifest['totals']['cache_hits']} from the cache)")
    _corpus_summary(result)


@corpus.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@config_option
@dataclass_options(CleanConfig)
def clean(files: tuple[str, ...], config_file: str | None, **kwargs: Any) -> None:
    """Clean your own .txt, .md and .html FILES into one sentence file (--out)."""
    clean_files = _corpus_api("clean_files")
    options = build(CleanConfig, read_config_file(config_file) if config_file else {}, given(kwargs, CleanConfig))
    _corpus_summary(clean_files(files, options))


@cli.group(name="data")
def data_group() -> None:
    """Look at a sentence file before training on it."""


@data_group.command(name="inspect")
@click.argument("file")
@config_option
@dataclass_options(InspectConfig)
def data_inspect(file: str, config_file: str | None, **kwargs: Any) -> None:
    """Sentences, duplicates and near-duplicates, tokens, lengths, non-prose lines, the time of one epoch."""
    from gpt2tune.data.inspect import format_summary, inspect_file

    cfg = build(InspectConfig, read_config_file(config_file) if config_file else {}, given(kwargs, InspectConfig))
    result = inspect_file(file, cfg)
    click.echo(format_summary(result))
    if cfg.json:
        click.echo(f"wrote {cfg.json}")


@cli.command()
@click.argument("model")
@config_option
@dataclass_options(ServeConfig)
def serve(model: str, config_file: str | None, **kwargs: Any) -> None:
    """Serve MODEL (run directory, HF directory, hub id or .gguf): HTTP API and a playground page at /.

    The API key can also come from the GPT2TUNE_API_KEY environment variable."""
    # the key can come from the environment, so it needn't show in `ps` or shell history
    env = {"api_key": os.environ["GPT2TUNE_API_KEY"]} if os.environ.get("GPT2TUNE_API_KEY") else {}
    cfg = build(ServeConfig, read_config_file(config_file) if config_file else {}, env, given(kwargs, ServeConfig))
    must_exist(model, cfg.base)

    from gpt2tune.serve.run import serve as run_serve

    run_serve(model, cfg)


# click >= 8.2 raises NoArgsIsHelpError for a bare `gpt2tune`; older clicks print the help themselves
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@cli.command()
@click.argument("model")
@config_option
@dataclass_options(EvaluateConfig)
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def evaluate(model: str, config_file: str | None, as_json: bool, **kwargs: Any) -> None:
    """Held-out perplexity of MODEL on --data, scored exactly as training scores its val split."""
    cfg = build(EvaluateConfig, read_config_file(config_file) if config_file else {}, given(kwargs, EvaluateConfig))
    must_exist(model, data=cfg.data)

    from gpt2tune.evaluate.run import evaluate as run_evaluate

    result = run_evaluate(model, cfg)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(f"perplexity {result['perplexity']:.3f} (loss {result['loss']:.4f} per token) over "
                   f"{result['tokens']:,} tokens in {result['sentences']:,} sentences; {result['seconds']:.1f} s, "
                   f"{result['tokens_per_s']:,.0f} tokens/s")


@cli.command()
@config_option
@dataclass_options(CompareConfig)
@dataclass_options(SamplingConfig, skip=("n", "precision", "threads", "device", "about"))
def compare(config_file: str | None, **kwargs: Any) -> None:
    """Base vs tuned: held-out perplexity and sample metrics with the same keywords and seeds; writes --out."""
    layer = read_config_file(config_file) if config_file else {}
    sampling_keys = {f.name for f in dataclasses.fields(SamplingConfig)} - {"n", "precision", "threads", "device",
                                                                          "about"}
    cfg = build(CompareConfig, {k: v for k, v in layer.items() if k not in sampling_keys},
                given(kwargs, CompareConfig))
    sampling = build(SamplingConfig, {k: v for k, v in layer.items() if k in sampling_keys},
                     given(kwargs, SamplingConfig))
    from gpt2tune.evaluate.run import compare_into, format_table

    done = compare_into(cfg, sampling, warn=_warn)
    click.echo(format_table(done.result))
    click.echo(f"wrote {done.json} and {done.markdown}")
    if done.report:
        click.echo(f"report: {done.report}")


def _warn(message: str) -> None:
    click.echo(f"gpt2tune: warning: {message}", err=True)


@cli.command("export")
@click.argument("model")
@config_option
@dataclass_options(ExportConfig)
@dataclass_options(SamplingConfig, skip=("n", "seed", "precision", "threads", "device", "best_of", "about"))
def export_command(model: str, config_file: str | None, **kwargs: Any) -> None:
    """Write MODEL (run directory, HF directory, hub id or .gguf) as a GGUF file for llama.cpp, Ollama and
    LM Studio; the file is read back and must reproduce the model's next-token logits before it is named.

    The sampling flags only go into the --ollama Modelfile (default: the run's settings)."""
    layer = read_config_file(config_file) if config_file else {}
    sampling_keys = {f.name for f in dataclasses.fields(SamplingConfig)} - {"n", "seed", "precision", "threads",
                                                                          "device", "best_of", "about"}
    cfg = build(ExportConfig, {k: v for k, v in layer.items() if k not in sampling_keys}, given(kwargs, ExportConfig))
    must_exist(model)

    from gpt2tune.export.run import export as run_export
    from gpt2tune.export.run import sampling_for

    sampling_layer = {**{k: v for k, v in layer.items() if k in sampling_keys}, **given(kwargs, SamplingConfig)}
    sampling = build(SamplingConfig, dataclasses.asdict(sampling_for(model, None)), sampling_layer) \
        if cfg.ollama else None
    result = run_export(model, cfg, sampling, progress=lambda m: click.echo(m, err=True))
    for line in result.lines():
        click.echo(line)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@config_option
@dataclass_options(PushConfig)
def push(run_dir: str, config_file: str | None, **kwargs: Any) -> None:
    """Upload RUN_DIR's best/ model with its model card (and, with --gguf, its exported GGUF file) to the Hugging
    Face Hub as one commit. The token comes from HF_TOKEN or `hf auth login`."""
    from gpt2tune.export.push import push as run_push

    cfg = build(PushConfig, read_config_file(config_file) if config_file else {}, given(kwargs, PushConfig))
    click.echo(run_push(run_dir, cfg, progress=lambda m: click.echo(m, err=True)).line())


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """(Re)build RUN_DIR/report.html and loss.png from the run's config, metrics, samples and compare.json."""
    from gpt2tune.run.report import write_report

    click.echo(write_report(run_dir, warn=_warn))


@cli.command()
@config_option
@dataclass_options(DemoConfig)
def demo(config_file: str | None, **kwargs: Any) -> None:
    """The article's experiment in one command, offline: fine-tune on Japan sentences, compare, report."""
    from gpt2tune.demo import run_demo

    run_demo(build(DemoConfig, read_config_file(config_file) if config_file else {}, given(kwargs, DemoConfig)),
             echo=click.echo)


@cli.command()
@config_option
@dataclass_options(BenchConfig)
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def bench(config_file: str | None, as_json: bool, **kwargs: Any) -> None:
    """Measure training and sampling speed: gpt2tune's paths vs the article's, side by side."""
    from gpt2tune.bench import format_table, run

    cfg = build(BenchConfig, read_config_file(config_file) if config_file else {}, given(kwargs, BenchConfig))
    result = run(cfg, progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback."""
    if argv is None and long_job(sys.argv[1:]):  # `python -m gpt2tune` has re-run already (__main__.py)
        rerun_with_tcmalloc(sys.argv[1:])  # long CPU jobs: tcmalloc when installed (GPT2TUNE_TCMALLOC=0: off)
    try:
        cli.main(args=argv, prog_name="gpt2tune", standalone_mode=False)
    except UserError as e:
        click.echo(f"gpt2tune: error: {e}", err=True)
        return 1
    except Interrupted as e:
        click.echo(f"gpt2tune: {e}", err=True)
        return 130
    except _NO_ARGS_IS_HELP as e:
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
