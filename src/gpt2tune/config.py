"""Options as dataclasses: one source of truth for the CLI, config files and the Python API."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gpt2tune.errors import UserError
from gpt2tune.files import check_regular_file, is_text
from gpt2tune.hardware import DEVICE_HELP, DEVICES
from gpt2tune.threads import MAX_THREADS

ARTICLE_KEYWORDS = [
    "Osaka", "Japan", "Kyoto", "Yokohama", "Kanto", "Nikko",
    "Japan has", "Tokyo is the", "Osaka is the", "Kyoto is the",
]


SEED_MAX = 2**32 - 1  # numpy's seeding (which accelerate's set_seed calls) takes 0..2**32-1; torch's takes these too
INT_MAX = 2**63 - 1  # what torch takes as an integer argument
TEMPERATURE_RANGE = (1e-3, 100.0)  # below 1e-3 the logits / temperature overflow to inf (then NaN); 0 is greedy
PENALTY_RANGE = (1e-2, 100.0)  # repetition penalty: outside this it under- or overflows the logits as well
MAX_N = 10_000  # samples per prompt: all of them are one batch
REPORT_TO = ("tensorboard", "wandb", "mlflow")  # the experiment trackers a run can report to (trackers.py)
CONFIG_MAX_BYTES = 1 << 20  # a config file of options is a few hundred bytes
CONFIG_MAX_DEPTH = 20  # nesting: options are scalars or lists of strings
CONFIG_MAX_NODES = 100_000  # values once aliases are expanded (a "billion laughs" file expands to 10**9)


# GPT-2 shapes from tiny to 124M (n_layer, n_head, n_embd); weights are random: for tests and speed benchmarks
SHAPES = {
    "tiny": (2, 2, 64),
    "mini": (4, 4, 128),
    "small-6x384": (6, 6, 384),
    "gpt2-124m": (12, 12, 768),
}


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with CLI help text (and optional extra CLI metadata)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


DATA_FORMATS = (".txt (one per line), .jsonl (a field), .csv (a column), each also .gz; .parquet; a folder written "
                "by datasets' save_to_disk; or hf:NAME[:CONFIG][:SPLIT] (datasets.load_dataset)")
TEXT_COLUMN_HELP = "the column (.csv, .parquet, datasets) or field (.jsonl) that holds the sentence"
THREADS_HELP = ("CPU threads for PyTorch (default: auto = one per physical core that other processes are not "
                "keeping busy; OMP_NUM_THREADS, when set, wins)")


def check_threads(threads: int | None) -> None:
    """--threads: none (auto), or 1 up to MAX_THREADS."""
    check(threads is None or threads >= 1, "threads must be at least 1")
    check(threads is None or threads <= MAX_THREADS,
          f"threads must be at most {MAX_THREADS} (4 per CPU here, 64 at least), got {_short(threads)}")


def threads_opt() -> Any:
    """The --threads field every command that runs a model has (threads.use_threads applies it)."""
    return opt(None, THREADS_HELP)


def device_opt() -> Any:
    """The --device field every command that runs a model has (hardware.choose_device applies it)."""
    return opt("auto", DEVICE_HELP)


def check_device(device: str) -> None:
    """A device name hardware.choose_device knows (whether this machine has it is checked when it is used)."""
    check(device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {_short(device)}")


@dataclass
class SamplingConfig:
    """How sentences are sampled (the article: top-k 30, top-p 0.9, 50 new tokens, stop at <eos>)."""

    n: int = opt(1, "samples per prompt", flag="-n")
    top_k: int = opt(30, "sample from the k most likely tokens (0 = off)")
    top_p: float = opt(0.9, "nucleus sampling: smallest token set with this much probability (1 = off)")
    temperature: float = opt(1.0, "softmax temperature (0 = greedy)")
    repetition_penalty: float = opt(1.0, "penalty for repeating tokens (1 = off)")
    max_new_tokens: int = opt(50, "new tokens at most per sample")
    seed: int = opt(42, "random seed: same seed, same samples")
    stop: str | None = opt(None, "cut each sample at the first occurrence of this text")
    best_of: int = opt(1, "draw this many candidates for each sample in the same batch and keep the most likely "
                          "one that ends its sentence, recites no training sentence, repeats no 4-gram and "
                          "continues its prompt (1 = off)")
    about: str | None = opt(None, "the title to write about: a run trained with --condition title samples "
                                  "sentences of that page")
    precision: str = opt("auto", "auto|fp32|bf16|fp16 autocast while sampling (auto = bf16 where the hardware "
                                 "runs it natively, fp16 on older GPUs, else fp32)")
    threads: int | None = threads_opt()
    device: str = device_opt()

    def validate(self) -> None:
        check_fields(self)
        check(1 <= self.n <= MAX_N, f"n must be in 1..{MAX_N:,}, got {self.n}")
        check_threads(self.threads)
        check(1 <= self.best_of and self.n * self.best_of <= MAX_N,
              f"best-of must be at least 1, and n x best-of at most {MAX_N:,}, got {self.best_of}")
        check(self.best_of == 1 or self.temperature > 0,
              "best-of needs a temperature above 0 (greedy draws the same candidate every time)")
        check(self.about is None or bool(self.about.strip()), "about must not be empty")
        check(self.top_k >= 0, "top-k must be 0 (off) or positive")
        check(0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}")
        low, high = TEMPERATURE_RANGE
        check(self.temperature == 0 or low <= self.temperature <= high,
              f"temperature must be 0 (greedy) or in [{low:g}, {high:g}], got {self.temperature:g}")
        check(self.temperature > 0 or self.n == 1,
              "temperature 0 (greedy) gives one sample per prompt: use n 1, or a temperature above 0")
        low, high = PENALTY_RANGE
        check(low <= self.repetition_penalty <= high,
              f"repetition-penalty must be in [{low:g}, {high:g}] (1 = off), got {self.repetition_penalty:g}")
        check_seed(self.seed)
        check(self.max_new_tokens >= 1, "max-new-tokens must be at least 1")
        check(self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16")
        check_device(self.device)


@dataclass
class TrainConfig:
    """Everything `gpt2tune train` takes; every field is a CLI flag and a config-file key."""

    data: str = opt("", "the sentences: " + DATA_FORMATS, required=True)
    out: str = opt("runs/run", "run directory (config, metrics, samples, best/, last/)")
    model: str = opt("gpt2", "hub id, local HF directory, or .gguf file")
    text_column: str = opt("text", TEXT_COLUMN_HELP)
    condition: str | None = opt(None, "title: train on '<title>: <sentence>' lines, so generate --about TITLE "
                                      "writes about that page (the data needs a title per sentence: a .jsonl "
                                      "field, a .csv column, or the manifest of a `gpt2tune corpus` file)")
    title_column: str = opt("title", "column (.csv) or field (.jsonl) that holds the title, for --condition title")
    condition_format: str = opt("{title}: {text}", "how --condition title writes a training line ({title} once, "
                                                   "ending with {text})")
    val_fraction: float = opt(0.1, "share of unique sentences held out for validation (capped by --val-size)")
    val_size: int | None = opt(2000, "held-out sentences at most: the run validates on min(val-fraction x unique "
                                     "sentences, val-size) (none = no cap)")
    near_dedupe: bool = opt(True, "on|off: keep near-duplicate sentences (equal up to case, punctuation and digits, "
                                  "within two word edits, or word-bigram Jaccard >= 0.8) on one side of the "
                                  "train/val split", onoff=True)
    cache_dir: str | None = opt(None, "where tokenized, packed blocks are cached (default: $GPT2TUNE_CACHE_DIR, "
                                      "else ~/.cache/gpt2tune)")
    special_tokens: str = opt(
        "auto", "auto|article|model: article adds <sos>/<eos>/<pad>; model keeps the model's own; "
        "auto = article for GPT-2-like tokenizers (bos == eos), model otherwise")
    block_size: int = opt(128, "tokens per packed block (whole sentences packed, no padding computed)")
    epochs: int = opt(4, "passes over the training sentences")
    max_steps: int | None = opt(None, "stop after this many optimizer steps")
    max_minutes: float | None = opt(None, "stop after this many minutes of training (then evaluate and save)")
    batch_size: int = opt(8, "blocks per micro-batch on each process")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and norms)")
    warmup: float = opt(0.05, "share of the steps spent warming the learning rate up")
    schedule: str = opt("cosine", "cosine|linear|constant decay after warm-up")
    clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    precision: str = opt("auto", "auto|fp32|bf16|fp16 (auto = bf16 where the device supports it, else fp16 with a "
                                 "GradScaler on a GPU, else fp32)")
    device: str = device_opt()
    dropout: float | None = opt(None, "override the model's dropout (default: keep the model's)")
    seed: int = opt(42, "seed for the split, data order, dropout and samples")
    eval_every: int | None = opt(None, "also evaluate and sample every N optimizer steps")
    patience: int | None = opt(2, "stop after this many evaluations without a better val loss (none = never)")
    keywords: list[str] = opt(["auto"], "keyword prompts sampled at every evaluation: auto (chosen from the "
                                        "training sentences: their most frequent subjects and openings), article "
                                        "(the article's ten Japan prompts) or a comma-separated list")
    samples: int = opt(2, "samples per keyword at every evaluation")
    save_every: str | None = opt(None, "also checkpoint last/ every N steps (200) or minutes (10m)")
    report_to: list[str] = opt([], "comma-separated experiment trackers to log each evaluation to: tensorboard, "
                                   "wandb, mlflow (none = only the run's own files)")
    threads: int | None = threads_opt()
    compile: bool = opt(False, "torch.compile each transformer layer (a minute or two of compiling; pays on "
                                  "GPUs and long CPU runs)")
    gradient_checkpointing: bool = opt(False, "recompute each layer's activations in the backward pass instead "
                                              "of keeping them: less memory, about a third more compute")
    lora: bool = opt(False, "train LoRA adapters (PEFT) instead of all weights; saved models are merged")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: float = opt(32.0, "LoRA scaling alpha (effective scale alpha/r)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA path")
    freeze_layers: int | None = opt(None, "train only the top N transformer layers and the final norm; "
                                          "embeddings, LM head and lower layers stay frozen")
    resume: bool = opt(False, "continue the run in --out from its last/ checkpoint")
    overwrite: bool = opt(False, "replace a different run already in --out")

    def validate(self) -> None:
        check_fields(self)
        check_seed(self.seed)
        check(bool(self.data), "no data: give --data FILE")
        check(0 < self.val_fraction < 1, f"val-fraction must be in (0, 1), got {self.val_fraction}")
        check(self.val_size is None or self.val_size >= 1, "val-size must be at least 1 (or none)")
        check(self.special_tokens in ("auto", "article", "model"), "special-tokens must be auto, article or model")
        check(self.condition in (None, "title"), f"condition must be title (or none), got {self.condition!r}")
        check(self.condition_format.count("{title}") == 1 and self.condition_format.count("{text}") == 1
              and self.condition_format.endswith("{text}"),
              f"condition-format must hold {{title}} once and end with {{text}}, got {self.condition_format!r}")
        check(self.block_size >= 8, f"block-size must be at least 8, got {self.block_size}")
        check(self.epochs >= 1, "epochs must be at least 1")
        check(self.max_steps is None or self.max_steps >= 1, "max-steps must be at least 1")
        check(self.max_minutes is None or self.max_minutes > 0, "max-minutes must be positive")
        check(self.batch_size >= 1, "batch-size must be at least 1")
        check(self.grad_accum >= 1, "grad-accum must be at least 1")
        check(self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight-decay must be >= 0")
        check(0 <= self.warmup < 1, "warmup must be in [0, 1)")
        check(self.schedule in ("cosine", "linear", "constant"), "schedule must be cosine, linear or constant")
        check(self.clip >= 0, "clip must be >= 0")
        check(self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16")
        check_device(self.device)
        check(self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)")
        check(self.eval_every is None or self.eval_every >= 1, "eval-every must be at least 1")
        check(self.patience is None or self.patience >= 1, "patience must be at least 1")
        check(self.samples >= 0, "samples must be >= 0")
        check_threads(self.threads)
        check_keywords(self.keywords)
        check(self.lora_r >= 1, "lora-r must be at least 1")
        check(self.lora_alpha > 0, "lora-alpha must be positive")
        check(0 <= self.lora_dropout < 1, "lora-dropout must be in [0, 1)")
        check(self.freeze_layers is None or self.freeze_layers >= 1, "freeze-layers must be at least 1")
        check(not (self.lora and self.freeze_layers), "use --lora or --freeze-layers, not both")
        self.report_to = list(dict.fromkeys(n.strip().lower() for n in self.report_to if n.strip().lower() != "none"))
        for name in self.report_to:
            check(name in REPORT_TO, f"report-to: unknown tracker {name!r} (known: {', '.join(REPORT_TO)}, or none)")


# the Japan corpus (40k Wikipedia sentences, GPT-2 tokens): 18.6 tokens per sentence on average, 87 at most
CORPUS_MEAN_TOKENS = 18.6
CORPUS_MAX_TOKENS = 87


@dataclass
class InspectConfig:
    """What `gpt2tune data inspect` takes besides the file."""

    model: str = opt("gpt2", "whose tokenizer counts the tokens and whose size sets the epoch estimate")
    text_column: str = opt("text", TEXT_COLUMN_HELP)
    block_size: int = opt(128, "tokens per block")
    json: str | None = opt(None, "also write the report as JSON here")

    def validate(self) -> None:
        check_fields(self)
        check(self.block_size >= 8, "block-size must be at least 8")


@dataclass
class BenchConfig:
    """What `gpt2tune bench` measures."""

    shapes: list[str] = opt(["tiny", "small-6x384", "gpt2-124m"], "GPT-2 shapes (random-initialised) to measure")
    steps: int = opt(3, "timed optimizer steps per training loop (after one warm-up step)")
    data: str | None = opt(None, "sentence file to measure on (default: synthetic sentences with the "
                                 "Japan corpus's length distribution)")
    sentences: int = opt(4000, "sentences used (synthetic ones, or the first N of --data)")
    batch_size: int = opt(8, "gpt2tune: packed blocks per step")
    block_size: int = opt(128, "gpt2tune: tokens per block")
    article_batch: int = opt(32, "the article's loop: sentences per step")
    precision: str = opt("auto", "gpt2tune's precision: auto|bf16|fp32 (the article's loop is always fp32)")
    threads: int | None = opt(None, THREADS_HELP + "; the same for every loop, decided once at the start")
    compile: bool = opt(False, "also measure gpt2tune's loop with --compile")
    gradient_checkpointing: bool = opt(False, "also measure gpt2tune's loop with --gradient-checkpointing")
    generation: bool = opt(True, "measure keyword sampling too")
    samples: int = opt(2, "samples per keyword")
    max_new_tokens: int = opt(50, "new tokens per sample")
    seed: int = opt(0, "seed for the synthetic sentences and the models")
    isolate: bool = opt(True, "run each measurement in its own process (its own peak memory)")

    def validate(self) -> None:
        check_fields(self)
        check_seed(self.seed)
        check(bool(self.shapes), "give at least one shape")
        for s in self.shapes:
            check(s in SHAPES, f"unknown shape {s!r} (known: {', '.join(SHAPES)})")
        check(self.steps >= 1, "steps must be at least 1")
        check(self.sentences >= self.article_batch, "sentences must be at least article-batch")
        check(self.batch_size >= 1 and self.article_batch >= 1, "batch sizes must be at least 1")
        check(self.data is not None or self.block_size >= CORPUS_MAX_TOKENS + 2,
              f"block-size must hold the longest synthetic sentence ({CORPUS_MAX_TOKENS + 2} tokens)")
        check(self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32")
        check(self.samples >= 1 and self.max_new_tokens >= 1, "samples and max-new-tokens must be >= 1")
        check_threads(self.threads)


def check(ok: bool, message: str) -> None:
    """Raise a UserError with `message` unless `ok`."""
    if not ok:
        raise UserError(message)


def check_keywords(keywords: list[str]) -> None:
    """auto and article stand alone; no keyword is empty."""
    check(all(k.strip() for k in keywords), "keywords must not be empty")
    for word in ("auto", "article"):
        check(word not in keywords or keywords == [word], f"keywords: {word} stands alone (not in a list)")


def check_seed(seed: int) -> None:
    """A seed every random generator we seed accepts."""
    check(0 <= seed <= SEED_MAX, f"seed must be in 0..{SEED_MAX}, got {_short(seed)}")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def check_fields(cfg: Any) -> None:
    """The rules every option shares: integers fit in 64 bits, numbers are finite, text is valid UTF-8."""
    for f in dataclasses.fields(cfg):
        flag = f.name.replace("_", "-")
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int):
                check(abs(v) <= INT_MAX, f"{flag} {_short(v)} is out of range (at most {INT_MAX})")
            elif isinstance(v, float):
                check(math.isfinite(v), f"{flag} must be a finite number, got {v}")
            elif isinstance(v, str):
                check(is_text(v), f"{flag} is not valid text: {ascii(v)[:40]} holds a lone surrogate "
                                  "(bytes that are not UTF-8?)")


C = TypeVar("C")


def coerce(name: str, value: Any, f: dataclasses.Field, cls: type) -> Any:
    """Check and convert one config value to its field's type, or raise a UserError."""
    tp = typing.get_type_hints(cls)[f.name]
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        optional = type(None) in typing.get_args(tp)
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{name}' must not be empty")
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config key '{name}' must be a list of strings")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{name}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{name}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key '{name}' must be a string, got {value!r}")
        return str(value)
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, or raise a UserError (also for one too big, deep or alias-expanding
    to hold options: such a file is an attack on the memory, not a config)."""
    p = check_regular_file(path, "config file")
    size = p.stat().st_size
    if size > CONFIG_MAX_BYTES:
        raise UserError(f"config file {p} is {size:,} bytes; a file of options is at most {CONFIG_MAX_BYTES:,}")
    try:
        text = p.read_text(encoding="utf-8")
        check_yaml_shape(text, p)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_yaml_shape(text: str, path: Path) -> None:
    """Refuse YAML nested deeper than CONFIG_MAX_DEPTH or holding more than CONFIG_MAX_NODES values once its
    aliases are expanded, from the parser's events (flat: nothing is built, nothing recurses)."""
    open_nodes: list[list[Any]] = []  # [anchor, values so far] of each collection being read
    sizes: dict[str, int] = {}  # values an anchor stands for
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            check(len(open_nodes) <= CONFIG_MAX_DEPTH, f"config file {path} nests deeper than "
                                                       f"{CONFIG_MAX_DEPTH} levels; options are values or lists")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, n = open_nodes.pop()
        elif isinstance(event, yaml.AliasEvent):
            anchor, n = None, sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            anchor, n = event.anchor, 1
        else:
            continue
        if anchor:
            sizes[anchor] = n
        if open_nodes:
            open_nodes[-1][1] += n  # a collection's count reaches its parent when it closes
        check(max(n, open_nodes[-1][1] if open_nodes else 0) <= CONFIG_MAX_NODES,
              f"config file {path} expands to more than {CONFIG_MAX_NODES:,} values (aliases of aliases?); "
              "options are a few values")


def build(cls: type[C], *layers: dict[str, Any]) -> C:
    """Make a config of `cls` from defaults overridden by each layer in turn; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in names:
                raise UserError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
            values[key] = coerce(key, value, names[key], cls)
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (for config.yaml)."""
    return dataclasses.asdict(cfg)


def write_config(cfg: Any, path: Path) -> None:
    """Write the effective config as YAML."""
    from gpt2tune.files import atomic_write

    atomic_write(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
