"""Export a model to a GGUF file for llama.cpp, Ollama and LM Studio, checked for parity before it is named."""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpt2tune.config import SamplingConfig
from gpt2tune.errors import UserError
from gpt2tune.export import gguf_write as gguf_model
from gpt2tune.export import parity as parity_check
from gpt2tune.export.options import ExportConfig
from gpt2tune.files import atomic_write
from gpt2tune.hardware import choose_device
from gpt2tune.model import load as modeling
from gpt2tune.model.source import ModelSource, best_model, resolve
from gpt2tune.run import card
from gpt2tune.run import directory as rundir
from gpt2tune.threads import use_threads


@dataclass
class ExportResult:
    """What was written and how well it matches the PyTorch model."""

    path: Path
    size: int
    kind: str
    tensors: dict[str, int]
    parity: parity_check.Parity
    modelfile: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.tensors.items()))
        out = [f"wrote {self.path} ({self.size / 1e6:.1f} MB, {self.kind}: {kinds} tensors) in {self.seconds:.1f} s",
               self.parity.line()]
        if self.modelfile:
            out.append(f"wrote {self.modelfile}: ollama create NAME -f {self.modelfile}")
        return out + self.notes


def modelfile_path(gguf_path: Path) -> Path:
    """Where --ollama writes the Modelfile: beside the GGUF, named after it."""
    return gguf_path.with_suffix(".Modelfile")


def _target(cfg: ExportConfig) -> Path:
    """The output path, refused if something is already there (unless --overwrite) or it cannot be made."""
    out = Path(cfg.gguf).expanduser()
    for p in [out] + ([modelfile_path(out)] if cfg.ollama else []):
        if p.is_dir():
            raise UserError(f"{p} is a directory; give a file name ending in .gguf")
        if p.exists() and not cfg.overwrite:
            raise UserError(f"{p} already exists; pass --overwrite to replace it")
    return out


def _model_config(source: ModelSource, model: str):
    """The model's config, read before any weights so an unsupported architecture is refused at once."""
    from transformers import AutoConfig

    from gpt2tune.model import gguf_read

    try:
        if source.gguf_file:
            return gguf_read.config(source.path, source.gguf_file)
        if source.is_local:
            return AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{model} is not a model transformers can read: {str(e).splitlines()[0]}") from None
    return None  # a hub id: checked once loaded


def load(model: str):
    """Model (float32, eval mode) and tokenizer of a run directory, HF directory, hub id or .gguf file."""
    from gpt2tune.model import gguf_read

    source = resolve(model)
    modeling.quiet_transformers()
    with gguf_read.one_parse() if source.gguf_file else nullcontext():
        config = _model_config(source, model)
        if config is not None:
            gguf_model.architecture(config)
        tokenizer = modeling.load_tokenizer(source, model)
        try:
            lm = modeling.load_model(source, model)
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"cannot load the model in {model}: {str(e).splitlines()[0]}") from None
    gguf_model.architecture(lm.config)
    return lm.eval(), tokenizer


def _model_name(model: str) -> str:
    p = Path(model)
    if p.is_dir() and p.name == "best":
        p = p.parent
    return (p.parent.name if p.suffix.lower() == ".gguf" else p.name) if p.exists() else model


def _write_checked(lm, tokenizer, out: Path, cfg: ExportConfig, model: str,
                   say: Callable[[str], None]) -> tuple[dict[str, int], parity_check.Parity]:
    """Write to a temporary name beside `out`, check parity, then rename; nothing is left behind on failure."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write in {out.parent}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        say(f"writing {cfg.type} GGUF ...")
        try:
            counts = gguf_model.write(lm, tokenizer, tmp, cfg.type, _model_name(model))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e} (nothing was written under that name)") from None
        say("checking parity: reading the file back with transformers ...")
        result = parity_check.check(lm, tokenizer, tmp, cfg.type, cfg.parity_prompts, cfg.min_top1, cfg.device)
        if not result.passed:
            hint = ("; a coarser type rounds this model too much: try f16 or bf16 (or lower --min-top1)"
                    if cfg.type != "f32" and result.top1 < cfg.min_top1 else "")
            raise UserError(f"parity check failed, {out} not written: {'; '.join(result.problems)}{hint}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the finished file gets the usual mode
        os.replace(tmp, out)
        return counts, result
    finally:
        tmp.unlink(missing_ok=True)


def sampling_for(model: str, sampling: SamplingConfig | None) -> SamplingConfig:
    """The sampling settings for the Modelfile: those given, else the run's, else gpt2tune's defaults."""
    if sampling is not None:
        return sampling
    from gpt2tune.config import build
    from gpt2tune.evaluate.run import run_config

    run = run_config(model) or {}
    keys = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")
    return build(SamplingConfig, {k: run[k] for k in keys if k in run})


def modelfile_text(gguf_name: str, stop: str | None, sampling: SamplingConfig) -> str:
    """An Ollama Modelfile: the file, a plain completion template, the stop token and the sampling settings."""
    lines = [f"FROM ./{gguf_name}", 'TEMPLATE """{{ .Prompt }}"""']
    for s in (stop, sampling.stop):
        if s:
            lines.append(f"PARAMETER stop {json_quote(s)}")
    lines += [f"PARAMETER temperature {sampling.temperature:g}",
              f"PARAMETER top_k {sampling.top_k}",
              f"PARAMETER top_p {sampling.top_p:g}",
              f"PARAMETER num_predict {sampling.max_new_tokens}"]
    if sampling.repetition_penalty != 1.0:
        lines.append(f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}")
    return "\n".join(lines) + "\n"


def json_quote(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def _write_modelfile(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def export(model: str, cfg: ExportConfig, sampling: SamplingConfig | None = None,
           progress: Callable[[str], None] | None = None) -> ExportResult:
    """Write `model` as the GGUF file cfg.gguf, after checking that it computes what the PyTorch model does."""
    cfg.validate()
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError("gpt2tune export needs the gguf package: pip install 'gpt2tune[gguf]'")
    say = progress or (lambda message: None)
    use_threads(cfg.threads)
    choose_device(cfg.device)  # a device this machine lacks fails before the slow part
    t0 = time.perf_counter()
    out = _target(cfg)
    say(f"loading {model} ...")
    lm, tokenizer = load(model)
    counts, result = _write_checked(lm, tokenizer, out, cfg, model, say)
    res = ExportResult(out, out.stat().st_size, cfg.type, counts, result)
    if cfg.ollama:
        res.modelfile = modelfile_path(out)
        settings = sampling_for(model, sampling)
        settings.validate()
        _write_modelfile(res.modelfile, modelfile_text(out.name, tokenizer.eos_token, settings))
    res.seconds = time.perf_counter() - t0
    record_export(model, res)
    return res


def record_export(model: str, res: ExportResult) -> None:
    """When MODEL is a run, note the file in RUN/exports.json and name it in the run's model cards (for push)."""
    run = Path(model)
    if not (run.is_dir() and rundir.is_run(run) and (run / "config.yaml").is_file()):
        return
    exports = card.read_json(run / "exports.json") or {}
    files = [g for g in exports.get("gguf", []) if isinstance(g, dict) and g.get("path") != str(res.path.resolve())]
    files.append({"path": str(res.path.resolve()), "type": res.kind, "size": res.size,
                  "model_sha256": card.file_sha256(best_model(run) / "model.safetensors")})
    atomic_write(run / "exports.json", json.dumps({"gguf": files}, indent=1) + "\n")
    card.write_cards(run)
