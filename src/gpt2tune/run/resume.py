"""Resuming a run: its saved config under the options given now, and what may not change on the way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gpt2tune.config import TrainConfig, build, read_config_file, to_dict
from gpt2tune.data import read
from gpt2tune.errors import UserError
from gpt2tune.run import directory as rundir

# Options that decide which blocks each step trains on, or which model (and optimizer state) it trains: a
# resumed run with another value would continue a different run from a saved position that no longer means
# anything. lr, schedule, warmup and weight decay live in the saved optimizer and scheduler, which would
# silently keep the old values. Everything else (epochs, max steps, max minutes, patience, eval and save
# cadence, samples, threads) may change.
FIXED = ("data", "text_column", "condition", "title_column", "condition_format", "val_fraction", "val_size", "near_dedupe", "seed", "block_size", "batch_size",
         "grad_accum", "special_tokens", "model", "lora", "lora_r", "lora_alpha", "lora_dropout", "freeze_layers",
         "lr", "schedule", "warmup", "weight_decay")
NOT_SAVED = ("resume", "overwrite")


def given_options(config: TrainConfig | None, options: dict[str, Any]) -> dict[str, Any]:
    """The options a caller set: a config's fields that differ from the defaults, then keyword options."""
    layer: dict[str, Any] = {}
    if config is not None:
        defaults = to_dict(TrainConfig())
        layer = {k: v for k, v in to_dict(config).items() if v != defaults[k]}
    return {**layer, **options}


def settle(config: TrainConfig | None = None, options: dict[str, Any] | None = None) -> TrainConfig:
    """The run's config: on --resume the saved config.yaml with the given options over it (refusing a change to
    an option in FIXED), else the given options over the defaults."""
    layer = given_options(config, options or {})
    out = Path(str(layer.get("out", TrainConfig().out)))
    resuming = layer.get("resume") is True  # any other value is reported by build() below
    if resuming:
        rundir.check_resumable(out)  # before reading a config.yaml that may not be a run's
    saved_file = out / "config.yaml"
    if not resuming or not saved_file.is_file():
        return build(TrainConfig, layer)  # no saved config: the run-directory check says what is missing
    saved = {k: v for k, v in read_config_file(saved_file).items() if k not in NOT_SAVED}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in known}  # a key of a newer or older version: ignored
    # a run saved before the held-out cap and near-dedupe existed split without them: keep its split
    saved.setdefault("val_size", None)
    saved.setdefault("near_dedupe", False)
    base = build(TrainConfig, saved)
    cfg = build(TrainConfig, saved, layer)
    for name in FIXED:
        if name in known and name in layer and not _same(name, getattr(base, name), getattr(cfg, name)):
            raise UserError(f"cannot change {name.replace('_', '-')} on --resume: the run has "
                            f"{getattr(base, name)!r}, given {getattr(cfg, name)!r} (start a new run with "
                            "another --out instead)")
    return cfg


def _same(name: str, a: Any, b: Any) -> bool:
    if name == "data" and a and b:
        return read.same(a, b)
    return a == b


def check_data_unchanged(path: str, saved_hash: str | None, now: str) -> None:
    """Refuse to resume on a data file whose content changed since the run started."""
    if saved_hash and saved_hash != now:
        raise UserError(f"cannot --resume: the data file {path} changed since the run started (sha256 "
                        f"{saved_hash[:12]}… then, {now[:12]}… now); its saved position would point at other "
                        "sentences (start a new run with another --out instead)")
