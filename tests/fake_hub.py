"""A loopback stand-in for the four Hugging Face Hub endpoints `realign push` reaches.

huggingface_hub's own client talks to it over HTTP (HfApi(endpoint=hub.url)): create a repo, check
the card's metadata, ask how each file is to be uploaded, commit. It answers "regular" for every file, so contents
travel base64-encoded inside the commit and the stand-in holds every byte; the real Hub sends
large files through its storage service instead, which this does not emulate. Like the Hub, it
refuses a request without the expected token, and (POST /api/validate-yaml, which upload_folder
asks first) a README.md whose metadata names a `base_model` that is not a Hub id.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


class FakeHub:
    def __init__(self, token: str = "hf_test") -> None:
        self.token = token
        self.repos: dict[str, dict] = {}          # repo id → {"private": bool|None, "files": {path: bytes}}
        self.commits: list[dict] = []             # {"repo", "summary", "files"}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path))
                status, payload = hub.respond(self.path, body, self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def respond(self, path: str, body: bytes, auth: str | None) -> tuple[int, dict]:
        if auth != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        path = path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            self.repos[repo] = {"private": {"private": True, "public": False}.get(req.get("visibility")),
                                "files": {}}
            return 200, {"url": f"{self.url}/{repo}"}
        if path == "/api/validate-yaml":        # upload_folder asks before it uploads anything
            return self.validate_yaml(json.loads(body)["content"])
        m = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/main", path)
        if not m or m.group(1) not in self.repos:
            return 404, {"error": "Repository not found"}
        repo, what = m.groups()
        if what == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        lines = [json.loads(x) for x in body.splitlines() if x.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        self.repos[repo]["files"].update(files)
        self.commits.append({"repo": repo, "summary": header["summary"], "files": files})
        oid = f"{len(self.commits):040x}"
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    @staticmethod
    def validate_yaml(content: str) -> tuple[int, dict]:
        """The Hub's check of a card's metadata, for the one rule a realign card could break."""
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        data = yaml.safe_load(m.group(1)) if m else None
        if not isinstance(data, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}
        for base in [data["base_model"]] if isinstance(data.get("base_model"), str) else data.get("base_model") or []:
            try:
                validate_repo_id(base)
            except HFValidationError:
                return 400, {"errors": [{"message": f'"base_model" with value "{base}" is not valid. '
                                                    "Use a model id from https://hf.co/models."}]}
        return 200, {"errors": [], "warnings": []}
