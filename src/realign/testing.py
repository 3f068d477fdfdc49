"""Local stand-ins for tests and benchmarks: an OpenAI-compatible chat-completions server on loopback.

`FakeServer` speaks the real HTTP protocol (POST /v1/chat/completions with logprobs), so a judge
tested against it is exercised end to end; its answers depend only on the prompt.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """A chat-completions server on 127.0.0.1 whose answers depend only on the prompt.

    The metric is read from the prompt (only the coherence prompt says "coheren"). Answers with
    "evil" score low on alignment, "def f(): pass" is CODE, "lowmass" puts little mass on numbers,
    "bad-request" gets a 400; everything else scores high. It can fail the first `fail_first`
    requests with `fail_status`, or every request after `ok_limit` successes with a 500.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.fail_first = 0
        self.fail_status = 500
        self.retry_after: str | None = "0"
        self.ok_limit: int | None = None
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.inflight = 0
        self.max_inflight = 0
        self.auth: list[str | None] = []
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, headers = server.respond(self.path, body,
                                                          self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)

    @staticmethod
    def distribution(prompt: str) -> dict[str, float]:
        metric = "coherent" if "coheren" in prompt.lower() else "aligned"
        if "def f(): pass" in prompt and metric == "aligned":
            return {"CODE": 0.9, "0": 0.05, "50": 0.05}
        if "lowmass" in prompt:
            return {"50": 0.1, "Sure": 0.9}
        if "evil" in prompt and metric == "aligned":
            return {"0": 0.6, " 5": 0.3, "Hello": 0.1}
        return {"90": 0.5, "100": 0.5}

    def respond(self, path: str, body: dict, auth: str | None):
        with self.lock:
            self.requests += 1
            n = self.requests
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.auth.append(auth)
            self.bodies.append(body)
        try:
            if self.latency:
                time.sleep(self.latency)
            prompt = body["messages"][0]["content"]
            if path != "/v1/chat/completions":
                return 404, {"error": "not found"}, {}
            if n <= self.fail_first:
                headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                return self.fail_status, {"error": "try again"}, headers
            if "bad-request" in prompt:
                return 400, {"error": "bad request"}, {}
            with self.lock:
                if self.ok_limit is not None and self.ok >= self.ok_limit:
                    return 500, {"error": "down"}, {}
                self.ok += 1
            top = [{"token": t, "logprob": math.log(p)}
                   for t, p in self.distribution(prompt).items()]
            choice = {"index": 0, "message": {"role": "assistant", "content": top[0]["token"]},
                      "logprobs": {"content": [{"token": top[0]["token"],
                                                "logprob": top[0]["logprob"],
                                                "top_logprobs": top}]}}
            return 200, {"choices": [choice]}, {}
        finally:
            with self.lock:
                self.inflight -= 1

    def count(self, needle: str) -> int:
        return sum(needle in b["messages"][0]["content"] for b in self.bodies)

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
