"""Request and response bodies; the caps of a server are baked into its request models (so its OpenAPI shows them)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from gpt2tune.config import SEED_MAX, SamplingConfig
from gpt2tune.serve.options import ServeConfig

_D = {f.name: f.default for f in dataclasses.fields(SamplingConfig)}
SEED = dict(ge=0, le=SEED_MAX)


class GenerateRequest(BaseModel):
    """Sample sentences for each prompt (the model sees `<sos> prompt`, as in training)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored

    prompts: list[str] = Field(min_length=1, description="keyword prompts, e.g. [\"Tokyo is the\"]")
    n: int = Field(_D["n"], ge=1, description="samples per prompt")
    top_k: int = Field(_D["top_k"], ge=0, description="sample from the k most likely tokens (0 = off)")
    top_p: float = Field(_D["top_p"], gt=0, le=1, description="nucleus sampling mass (1 = off)")
    temperature: float = Field(_D["temperature"], ge=0, le=100, description="softmax temperature (0 = greedy)")
    repetition_penalty: float = Field(_D["repetition_penalty"], gt=0, le=100, description="1 = off")
    max_new_tokens: int = Field(_D["max_new_tokens"], ge=1, description="new tokens at most per sample")
    seed: int | None = Field(None, **SEED, description="same seed, same samples; none = a random seed "
                             "(the response says which)")
    stop: str | None = Field(None, min_length=1, description="cut each sample at this text")
    best_of: int = Field(1, ge=1, description="candidates drawn per sample (in one batch); the most likely that "
                         "ends its sentence, recites no training sentence, repeats no 4-gram and continues its "
                         "prompt is kept (1 = off)")
    about: str | None = Field(None, min_length=1, max_length=200, description="a page title to write about (a run "
                              "trained with --condition title)")
    model: Literal["tuned", "base"] = Field("tuned", description="which loaded model samples")


class SampleOut(BaseModel):
    prompt: str
    text: str = Field(description="prompt + continuation")
    ended: bool = Field(description="the model produced its end token before the length cap")
    new_tokens: int
    logprob: float | None = Field(None, description="mean log-probability of its tokens (with best_of)")
    failed: list[str] | None = Field(None, description="with best_of: the checks it failed (kept only when too "
                                     "few candidates passed)")


class GenerateResponse(BaseModel):
    model: str
    seed: int
    samples: list[SampleOut] = Field(description="n samples per prompt, in prompt order")
    best_of: dict | None = Field(None, description="with best_of: candidates drawn, kept, dropped by check, "
                                 "outranked")
    elapsed_s: float = Field(description="seconds the model spent on this request (queue wait excluded)")


class CompletionRequest(BaseModel):
    """The OpenAI completions request (fields this server doesn't use, e.g. presence_penalty, are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("tuned", description="'tuned' or 'base' (or the id /v1/models lists)")
    prompt: str | list[str] = Field(description="a prompt or a list of prompts")
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences, not included in the text")
    seed: int | None = Field(None, **SEED)
    echo: bool = Field(False, description="put the prompt in front of the completion")
    stream: bool = Field(False, description="not supported: must be false")
    logprobs: int | None = Field(None, description="not supported: must be null")
    user: str | None = None


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gpt2tune"
    source: str = Field(description="the model it serves: a hub id, or the last part of its local path (never "
                                    "an absolute path; never taken from a request)")
    context: int | None = Field(None, description="the model's context length in tokens")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
    auth: bool = Field(description="the API needs 'Authorization: Bearer KEY'")
    queued: int = Field(description="requests waiting for or running on the model")
    limits: dict[str, int]


class RunInfo(BaseModel):
    """The training run the tuned model came from."""

    run: str = Field(description="run directory name")
    keywords: list[str]
    metrics: list[dict] = Field(description="metrics.jsonl rows")
    samples: list[dict] = Field(description="samples.jsonl rows from the last evaluation")
    loss_png: str | None = Field(None, description="URL of the loss plot, when the run has one")
    report_html: str | None = Field(None, description="URL of the run report, when the run has one")


def _listify(value: object) -> object:
    """OpenAI's prompt is a string or a list of strings: make it a list."""
    return [value] if isinstance(value, str) else value


def limited(cfg: ServeConfig) -> tuple[type[_GenerateBase], type[_CompletionBase]]:
    """Request models carrying this server's caps: over-cap requests fail validation (422) like any other."""
    Prompt = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_prompt_chars)]

    class GenerateRequest(_GenerateBase):
        __doc__ = _GenerateBase.__doc__
        prompts: list[Prompt] = Field(min_length=1, max_length=cfg.max_prompts,
                                      description="keyword prompts, e.g. [\"Tokyo is the\"]")
        n: int = Field(min(_D["n"], cfg.max_n), ge=1, le=cfg.max_n, description="samples per prompt")
        best_of: int = Field(1, ge=1, le=cfg.max_n, description="candidates drawn per sample (n x best_of at most "
                             f"{cfg.max_n}); the most likely that passes the checks is kept (1 = off)")
        max_new_tokens: int = Field(min(_D["max_new_tokens"], cfg.max_new_tokens), ge=1, le=cfg.max_new_tokens,
                                    description="new tokens at most per sample")

    class CompletionRequest(_CompletionBase):
        __doc__ = _CompletionBase.__doc__
        prompt: Annotated[list[Prompt], BeforeValidator(_listify, json_schema_input_type=str | list[str])] = Field(
            min_length=1, max_length=cfg.max_prompts, description="a prompt or a list of prompts")
        max_tokens: int = Field(min(16, cfg.max_new_tokens), ge=1, le=cfg.max_new_tokens)
        n: int = Field(1, ge=1, le=cfg.max_n)

    return GenerateRequest, CompletionRequest


_GenerateBase, _CompletionBase = GenerateRequest, CompletionRequest
