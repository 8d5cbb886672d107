"""`gpt2tune push`: a run's best/ model, its model card (and its exported GGUF file) to the Hugging Face Hub, as
one commit through huggingface_hub: either every file arrives or the repository gets no commit at all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpt2tune.errors import UserError
from gpt2tune.export.options import PushConfig
from gpt2tune.model.source import best_model
from gpt2tune.run import card
from gpt2tune.run import directory as rundir


@dataclass
class PushResult:
    """What arrived on the Hub."""

    repo: str
    url: str  # the commit's URL
    files: list[str]
    size: int

    def line(self) -> str:
        return f"pushed {len(self.files)} files ({self.size / 1e6:.1f} MB) to {self.repo}: {self.url}"


def exported_gguf(run: Path, best: Path) -> Path:
    """The GGUF file last exported from the run's current best/ model, or a UserError saying what to do."""
    exports = card.read_json(run / "exports.json") or {}
    entries = [g for g in exports.get("gguf", []) if isinstance(g, dict) and isinstance(g.get("path"), str)]
    if not entries:
        raise UserError(f"--gguf: {run} has no GGUF export; write one with: gpt2tune export {run} --gguf FILE.gguf")
    latest = entries[-1]
    path = Path(latest["path"])
    if not path.is_file():
        raise UserError(f"--gguf: {path}, the run's last export, is gone; export again with: gpt2tune export {run} "
                        f"--gguf {path}")
    if latest.get("model_sha256") != card.file_sha256(best / "model.safetensors"):
        raise UserError(f"--gguf: {path} was exported from an earlier best/ model of {run}; export again with: "
                        f"gpt2tune export {run} --gguf {path} --overwrite")
    return path


def upload_plan(run: Path, cfg: PushConfig) -> tuple[list[tuple[str, Path | bytes]], int]:
    """(path in the repo, file or content) for every file to upload, and their total size."""
    best = best_model(run)  # best/, or best.old/ when a kill interrupted its swap
    if best is None or not (run / "config.yaml").is_file():
        raise UserError(f"{run} holds no trained run with a best/ model to push (a run directory of gpt2tune train)")
    files: list[tuple[str, Path | bytes]] = [
        (p.relative_to(best).as_posix(), p) for p in sorted(best.rglob("*"))
        if p.is_file() and p.name not in (card.CARD, rundir.STATE_FILE)]
    if cfg.gguf:
        gguf = exported_gguf(run, best)
        files.append((gguf.name, gguf))
    text = card.card_text(run, "best", name=cfg.repo)
    files.append((card.CARD, text.encode("utf-8")))
    return files, sum(len(x) if isinstance(x, bytes) else x.stat().st_size for _, x in files)


def hub_error(e: Exception, endpoint: str, created: bool) -> UserError:
    """One line for a failed push; no commit was made, which it says."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    nothing = ("the repository exists but got no commit: nothing was uploaded" if created
               else "nothing was uploaded")
    if isinstance(e, OfflineModeIsEnabled):
        return UserError(f"HF_HUB_OFFLINE is set, so the Hub can't be reached; {nothing}")
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status == 401:
            return UserError(f"the Hub refused the token (401 Unauthorized): check HF_TOKEN or run `hf auth login` "
                             f"again; {nothing}")
        if status == 403:
            return UserError(f"the token may not write to this repository (403 Forbidden): use a token with write "
                             f"access; {nothing}")
        reason = " ".join((e.server_message or str(e)).split())[:200]
        return UserError(f"the Hub answered {status} ({reason}); {nothing}")
    # huggingface_hub's HTTP client (httpx, or httpx2 in 2.x) raises a TransportError subclass for no network
    if isinstance(e, OSError) or any(c.__name__ == "TransportError" for c in type(e).__mro__):
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        return UserError(f"could not reach {endpoint} ({reason}); {nothing}")
    return UserError(f"the upload failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}); {nothing}")


def push(run: str | Path, cfg: PushConfig, progress: Callable[[str], None] | None = None) -> PushResult:
    """Upload a run's best/ model with its model card (and, with gguf, its exported GGUF) to cfg.repo."""
    cfg.validate()
    say = progress or (lambda message: None)
    run = Path(run)
    files, size = upload_plan(run, cfg)
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded")
    api = HfApi(token=token)
    say(f"uploading {len(files)} files ({size / 1e6:.1f} MB) from {run} to {api.endpoint}/{cfg.repo}")
    created = False
    try:
        api.create_repo(cfg.repo, private=cfg.private, exist_ok=True, repo_type="model")
        created = True
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(x) if isinstance(x, Path) else x)
                      for path, x in files]
        commit = api.create_commit(cfg.repo, operations, commit_message=cfg.message or f"Upload {run.name} "
                                   "(gpt2tune)", repo_type="model")
    except Exception as e:  # httpx, huggingface_hub and OS errors: each becomes one line that says nothing arrived
        raise hub_error(e, api.endpoint, created) from None
    return PushResult(cfg.repo, commit.commit_url, [path for path, _ in files], size)
