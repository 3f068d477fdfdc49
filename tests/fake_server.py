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
    requests with `fail_status`, or every request after `ok_limit` successes with a 500; or go
    down after `die_after` successes, as a crashed server does: it stops listening (connections
    are refused) and hangs up on requests still arriving on open connections, unanswered.
    Deliberate failures carry `retry_headers`: by default a 1 ms Retry-After-Ms, which the openai
    client honours instead of its own backoff (half a second and up), so that tests stay fast.
    """

    def __init__(self, latency: float = 0.0, port: int = 0) -> None:
        self.latency = latency
        self.fail_first = 0
        self.fail_status = 500
        self.retry_headers: dict[str, str] = {"retry-after-ms": "1"}
        self.ok_limit: int | None = None
        self.die_after: int | None = None
        self.down = False
        self._stopped = False
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
                answer = server.respond(self.path, body, self.headers.get("Authorization"))
                if answer is None:   # down: hang up without an answer
                    self.close_connection = True
                    return
                status, payload, headers = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if server.down:
                    threading.Thread(target=server.stop, daemon=True).start()   # stop listening

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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
                return self.fail_status, {"error": "try again"}, self.retry_headers
            if "bad-request" in prompt:
                return 400, {"error": "bad request"}, {}
            with self.lock:
                if self.down:
                    return None
                if self.ok_limit is not None and self.ok >= self.ok_limit:
                    return 500, {"error": "down"}, self.retry_headers
                self.ok += 1
                self.down = self.die_after is not None and self.ok >= self.die_after
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
        with self.lock:
            if self._stopped:   # it may go down by itself (die_after) and be stopped again
                return
            self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
