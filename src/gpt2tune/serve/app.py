"""The FastAPI app: /v1/generate, OpenAI-style /v1/completions, /v1/models, /health, /v1/run and the page at /."""

# no `from __future__ import annotations`: FastAPI reads the request models of the endpoints, made
# inside _add_generate_routes, from their real annotations
import dataclasses
import random
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gpt2tune.config import SamplingConfig, read_config_file
from gpt2tune.errors import UserError
from gpt2tune.run.logs import read_metrics, read_samples
from gpt2tune.serve.guard import HostPolicy, RequestGuard, request_limit
from gpt2tune.serve.holder import Busy, ModelHolder, Worker
from gpt2tune.serve.options import ServeConfig
from gpt2tune.serve.schemas import (
    Choice,
    CompletionResponse,
    GenerateResponse,
    Health,
    ModelCard,
    ModelList,
    RunInfo,
    SampleOut,
    Usage,
    limited,
)


def _holder(name: str, model: str | Path | ModelHolder) -> ModelHolder:
    return model if isinstance(model, ModelHolder) else ModelHolder.load(name, model)


def _invalid(field: str | None, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for mistakes found after parsing (unknown model, prompt too long...)."""
    loc = ("body", field) if field else ("body",)
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _run_keywords(run_dir: Path) -> list[str]:
    try:  # the same checks as every config file: size, nesting, aliases, UTF-8
        cfg = read_config_file(run_dir / "config.yaml")
    except UserError:
        return []
    keywords = cfg.get("keywords")
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",")]
    return [str(k) for k in keywords if str(k).strip()] if isinstance(keywords, list) else []


MAX_ERRORS = 10  # validation errors listed in a 422 at most


def _clip(value: object, limit: int) -> object:
    """An echoed value cut to `limit` characters (numbers pass as they are)."""
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut a continuation at the earliest stop sequence; True when one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


@dataclasses.dataclass
class _State:
    """What the route groups share: the config, the loaded models, the worker and the auth dependency."""
    cfg: ServeConfig
    models: dict[str, ModelHolder]
    worker: Worker
    created: int
    auth: list

    @property
    def run_dir(self) -> Path | None:
        return self.models["tuned"].run_dir

    def pick(self, name: str) -> ModelHolder:
        if name not in self.models:
            if name == "base":
                raise _invalid("model", "no base model loaded (start the server with --base MODEL)")
            raise _invalid("model", f"unknown model '{name}' (loaded: {', '.join(self.models)})")
        return self.models[name]

    @staticmethod
    def sampling_config(**options) -> SamplingConfig:
        """A SamplingConfig checked by the same rules as the CLI's; a value they refuse is a 422 at once."""
        sampling = SamplingConfig(**options)
        try:
            sampling.validate()
        except UserError as e:
            raise _invalid(None, str(e)) from None
        return sampling

    async def run(self, holder: ModelHolder, prompts: list[str],
                  sampling: SamplingConfig) -> tuple[list, list[int], float]:
        """What was sampled (a best_of.BestOf), prompt token counts and model seconds; tokenizer and model are
        touched on the worker only."""
        def call() -> tuple[list, list[int], float]:
            start = time.perf_counter()
            counts = [holder.count_tokens(p) for p in prompts]
            if holder.context and max(counts) + sampling.max_new_tokens > holder.context:
                raise UserError(f"prompt ({max(counts)} tokens) + {sampling.max_new_tokens} new tokens exceeds "
                                f"the {holder.name} model's context of {holder.context} tokens")
            out = holder.pick(prompts, sampling)
            return out, counts, time.perf_counter() - start
        try:
            return await self.worker.run(call)
        except UserError as e:
            raise _invalid(None, str(e)) from None


def create_app(tuned: str | Path | ModelHolder, base: str | Path | ModelHolder | None = None,
               config: ServeConfig | None = None, api_key: str | None = None) -> FastAPI:
    """An app serving `tuned` (and `base` to compare with), within `config`'s caps; api_key turns on bearer auth."""
    cfg = dataclasses.replace(config or ServeConfig(), **({"api_key": api_key} if api_key else {}))
    cfg.validate()
    models = {"tuned": _holder("tuned", tuned)}
    if base is not None:
        models["base"] = _holder("base", base)
    worker = Worker(cfg.max_queue)
    state = _State(cfg, models, worker, int(time.time()), [Depends(_authorizer(cfg))])

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        worker.close()

    app = FastAPI(title="gpt2tune serve", version="1", lifespan=lifespan,
                  description="Sample sentences from a fine-tuned model and its base model. "
                              "Limits: " + ", ".join(f"{k}={v}" for k, v in _limits(cfg).items()))
    app.state.models, app.state.worker, app.state.config = models, worker, cfg
    app.add_middleware(RequestGuard, policy=HostPolicy(cfg), max_body=request_limit(cfg))
    _add_error_handlers(app)
    _add_page_route(app)
    _add_model_routes(app, state)
    _add_generate_routes(app, state)
    _add_run_routes(app, state)
    return app


def _authorizer(cfg: ServeConfig):
    """The dependency that checks the bearer key (a no-op when the server has none)."""
    bearer = HTTPBearer(auto_error=False, description="the key the server was started with (--api-key)")

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cfg.api_key is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    return authorized


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape ({"detail": [{loc, msg, type}]}) plus one readable line; inputs are never echoed and
        # the list is capped, so a body of a thousand unknown keys gets a short answer
        errors = exc.errors()
        detail = [{"loc": [_clip(x, 60) for x in e["loc"]], "msg": _clip(e["msg"], 300), "type": e["type"]}
                  for e in errors[:MAX_ERRORS]]
        message = "; ".join(f"{'.'.join(str(x) for x in d['loc'][1:]) or 'request'}: {d['msg']}" for d in detail)
        if len(errors) > MAX_ERRORS:
            message += f"; and {len(errors) - MAX_ERRORS} more"
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(_request: Request, exc: Exception) -> JSONResponse:
        # a bug or a model failure: the client gets JSON (not a bare text page) and the server keeps serving
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {_clip(exc, 300)}"}, status_code=500)

    @app.exception_handler(Busy)
    async def busy(_request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


def _add_page_route(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8"))


def _add_model_routes(app: FastAPI, state: _State) -> None:
    cfg, models = state.cfg, state.models

    @app.get("/health", response_model=Health, summary="Liveness, loaded models, whether auth is on")
    def health() -> Health:
        return Health(models=list(models), auth=cfg.api_key is not None, queued=state.worker.pending,
                      limits=_limits(cfg))

    @app.get("/v1/models", response_model=ModelList, dependencies=state.auth, summary="Loaded models (OpenAI shape)")
    def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=h.name, created=state.created, source=h.source, context=h.context)
                               for h in models.values()])


def _add_generate_routes(app: FastAPI, state: _State) -> None:
    GenerateRequest, CompletionRequest = limited(state.cfg)

    @app.post("/v1/generate", response_model=GenerateResponse, dependencies=state.auth,
              summary="Sample n sentences per prompt from the tuned or base model")
    async def generate(req: GenerateRequest) -> GenerateResponse:  # type: ignore[valid-type]
        holder = state.pick(req.model)
        seed = random.randrange(2**31) if req.seed is None else req.seed
        if req.n * req.best_of > state.cfg.max_n:
            raise _invalid("best_of", f"n x best_of is {req.n * req.best_of}, above this server's max_n of "
                                      f"{state.cfg.max_n} (the candidates are drawn in one batch)")
        sampling = state.sampling_config(n=req.n, top_k=req.top_k, top_p=req.top_p, temperature=req.temperature,
                                         repetition_penalty=req.repetition_penalty,
                                         max_new_tokens=req.max_new_tokens, seed=seed, stop=req.stop,
                                         best_of=req.best_of, about=req.about)
        picked, _, elapsed = await state.run(holder, req.prompts, sampling)
        many = req.best_of > 1
        return GenerateResponse(model=holder.name, seed=seed, elapsed_s=round(elapsed, 4),
                                samples=[SampleOut(**dataclasses.asdict(p.sample), **({"failed": p.failed}
                                                                                     if many else {}))
                                         for p in picked.picks],
                                best_of=picked.totals if many else None)

    @app.post("/v1/completions", response_model=CompletionResponse, dependencies=state.auth,
              summary="OpenAI-compatible completions")
    async def completions(req: CompletionRequest) -> CompletionResponse:  # type: ignore[valid-type]
        if req.stream:
            raise _invalid("stream", "streaming is not supported: send stream=false")
        if req.logprobs is not None:
            raise _invalid("logprobs", "logprobs are not supported: send logprobs=null")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise _invalid("stop", "stop takes up to 4 non-empty sequences")
        holder = state.pick(req.model)
        seed = random.randrange(2**31) if req.seed is None else req.seed
        # OpenAI semantics: no top-k unless asked, top_p 1 = off
        sampling = state.sampling_config(n=req.n, top_k=0, top_p=req.top_p, temperature=req.temperature,
                                         max_new_tokens=req.max_tokens, seed=seed)
        picked, counts, _ = await state.run(holder, req.prompt, sampling)
        samples = picked.samples
        prompt_tokens = sum(counts)
        completion_tokens = sum(s.new_tokens for s in samples)
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=holder.name,
            choices=_choices(samples, stops, req.echo),
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens))


def _choices(samples: list, stops: list[str], echo: bool) -> list[Choice]:
    """Completion choices: the continuation past the prompt, cut at the first stop, the prompt put back on echo."""
    choices = []
    for i, s in enumerate(samples):
        head = s.prompt.strip()
        text = s.text[len(head):] if s.text.startswith(head) else s.text
        text, stopped = _cut(text, stops)
        finish = "stop" if s.ended or stopped else "length"
        choices.append(Choice(text=(s.prompt + text) if echo else text, index=i, finish_reason=finish))
    return choices


def _add_run_routes(app: FastAPI, state: _State) -> None:
    run_dir = state.run_dir

    @app.get("/v1/run", response_model=RunInfo, dependencies=state.auth,
             summary="The tuned model's training run: keywords, metrics, last samples, plot and report links",
             responses={404: {"description": "the tuned model did not come from a run directory"}})
    def run_info() -> RunInfo:
        if run_dir is None:
            raise HTTPException(404, "the tuned model was not loaded from a run directory")
        samples = read_samples(run_dir)
        last = samples[-1]["step"] if samples and "step" in samples[-1] else None
        return RunInfo(
            run=run_dir.name, keywords=_run_keywords(run_dir), metrics=read_metrics(run_dir),
            samples=[s for s in samples if s.get("step") == last],
            loss_png="/v1/run/loss.png" if (run_dir / "loss.png").is_file() else None,
            report_html="/v1/run/report.html" if (run_dir / "report.html").is_file() else None)

    def run_file(name: str) -> Path:
        # fixed names only: no part of a path ever comes from the request
        if run_dir is None or not (run_dir / name).is_file():
            raise HTTPException(404, f"the run has no {name}")
        return run_dir / name

    @app.get("/v1/run/loss.png", dependencies=state.auth, response_class=FileResponse, summary="The run's loss plot")
    def loss_png() -> FileResponse:
        return FileResponse(run_file("loss.png"), media_type="image/png")

    @app.get("/v1/run/report.html", dependencies=state.auth, response_class=FileResponse,
             summary="The run's report")
    def report_html() -> FileResponse:
        return FileResponse(run_file("report.html"), media_type="text/html")


def _limits(cfg: ServeConfig) -> dict[str, int]:
    limits = {k: getattr(cfg, k) for k in ("max_prompts", "max_prompt_chars", "max_n", "max_new_tokens", "max_queue")}
    return {**limits, "max_request_bytes": request_limit(cfg)}
