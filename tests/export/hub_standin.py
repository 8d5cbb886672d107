"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub's create_repo and create_commit
call (repos/create, validate-yaml, preupload, the LFS batch API with basic PUT transfers, and the ndjson commit),
keeping the files of each commit so that tests can assert what arrived."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

HUB_LICENSES = {"mit", "apache-2.0", "cc-by-sa-4.0", "cc-by-4.0", "cc0-1.0", "other"}  # a few of the Hub's ids
LFS_FROM = 10_000  # files this large go through LFS, as on the Hub (which draws the line at 10 MB or binaries)


class Hub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}, "commits": [...]}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.fail_commit = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self.answer(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_PUT(self):
                hub.requests.append(f"PUT {self.path}")
                oid = self.path.rsplit("/", 1)[-1]
                data = self.body()
                if hashlib.sha256(data).hexdigest() != oid:
                    return self.answer(400, {"error": "sha256 mismatch"})
                hub.lfs[oid] = data
                self.answer(200)

            def do_POST(self):
                hub.requests.append(f"POST {self.path.split('?')[0]}")
                data = self.body()
                if not self.authorized():
                    return
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    return self.create(json.loads(data))
                if path == "/api/validate-yaml":
                    return self.validate(json.loads(data)["content"])
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = json.loads(data)["objects"]
                    return self.answer(200, {"transfer": "basic", "objects": [
                        {"oid": o["oid"], "size": o["size"],
                         "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}} for o in objects]})
                parts = path.split("/")  # /api/models/user/name/preupload|commit/main
                repo = "/".join(parts[3:5])
                if repo not in hub.repos:
                    return self.answer(404, {"error": "Repository not found"})
                if parts[5] == "preupload":
                    files = json.loads(data)["files"]
                    return self.answer(200, {"files": [
                        {"path": f["path"], "uploadMode": "lfs" if f["size"] >= LFS_FROM else "regular",
                         "shouldIgnore": False} for f in files]})
                if parts[5] == "commit":
                    return self.commit(repo, data)
                self.answer(404, {"error": f"no such endpoint {path}"})

            def create(self, payload: dict) -> None:
                repo = f"{payload['organization']}/{payload['name']}"
                if repo in hub.repos:
                    return self.answer(409, {"error": "You already created this model repo"})
                hub.repos[repo] = {"private": payload.get("visibility") == "private", "files": {}, "commits": []}
                self.answer(200, {"url": f"{hub.url}/{repo}"})

            def validate(self, content: str) -> None:
                errors = []
                if not content.startswith("---\n"):
                    errors.append("no YAML front matter")
                else:
                    meta = yaml.safe_load(content.split("\n---", 1)[0][4:])
                    if not isinstance(meta, dict):
                        errors.append("the front matter is not a mapping")
                    else:
                        if "license" in meta and meta["license"] not in HUB_LICENSES:
                            errors.append(f"license {meta['license']!r} is not a license id")
                        if not isinstance(meta.get("tags", []), list):
                            errors.append("tags must be a list")
                        if not isinstance(meta.get("base_model", ""), (str, list)):
                            errors.append("base_model must be a model id")
                self.answer(400 if errors else 200, {"errors": [{"message": m} for m in errors], "warnings": []})

            def commit(self, repo: str, data: bytes) -> None:
                if hub.fail_commit:
                    return self.answer(500, {"error": "Internal Error - We're working hard to fix this"})
                lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
                files = {}
                for line in lines[1:]:
                    value = line["value"]
                    if line["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif line["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs:
                            return self.answer(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                        files[value["path"]] = hub.lfs[value["oid"]]
                record = hub.repos[repo]
                record["files"].update(files)
                oid = hashlib.sha1(data).hexdigest()
                record["commits"].append({"message": lines[0]["value"]["summary"], "files": sorted(files), "oid": oid,
                                          "lfs": sorted(x["value"]["path"] for x in lines if x["key"] == "lfsFile")})
                self.answer(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})

        return Handler
