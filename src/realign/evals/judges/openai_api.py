"""`openai`: a judge served over the OpenAI chat-completions API (OpenAI, vLLM, llama.cpp, or any
compatible server).

Each (item, metric) is one request for one token at temperature 0 with the top-20 logprobs,
scored by `score_from_top_logprobs`. The `openai` package does the transport: connection pooling,
timeouts, and retries with backoff on connection errors, 408/409/429 and 5xx (honouring the
server's Retry-After); other 4xx fail at once. realign adds what a judge run needs around it: at
most `concurrency` requests in flight, identical calls in a batch sent once, every finished call
written to the JudgeCache the moment it arrives, and per-item errors: a call that failed for good
is reported in that item's Judgement.error while the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from .base import (METRICS, JudgeCache, JudgeError, Judgement, JudgeItem, JudgeUnavailable, Progress,
                   register_judge, score_from_top_logprobs)

INSTALL_HINT = "pip install 'realign[openai]'"
# The key sent when none is given: the client refuses to run without one, local servers ignore it.
NO_KEY = "none"

Outcome = tuple[float | None, str | None]   # (score, label) of one metric call


def _require_package() -> None:
    if importlib.util.find_spec("openai") is None:
        raise JudgeUnavailable(f"the openai judge needs the openai package: {INSTALL_HINT}")


class OpenAIJudge:
    """Judge over an OpenAI-compatible endpoint; see the module docstring.

    `max_retries` and `timeout` (seconds per request) go to the openai client. `cache=None` uses
    the default on-disk cache; `cache=False` disables it.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, concurrency: int = 16, max_retries: int = 5,
                 timeout: float = 60, cache: JudgeCache | Literal[False] | None = None) -> None:
        _require_package()
        self.model = model or os.environ.get("REALIGN_JUDGE_MODEL") or "gpt-4o-2024-08-06"
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.base_url = base.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.timeout = timeout
        self.cache: JudgeCache | None = (JudgeCache() if cache is None
                                         else None if cache is False else cache)
        self.name = f"openai:{self.model}"

    def judge(self, items: Sequence[JudgeItem], progress: Progress | None = None
              ) -> list[Judgement]:
        """Judge every item on every metric; per-item failures land in Judgement.error."""
        results: dict[tuple[int, str], Outcome] = {}
        errors: dict[int, str] = {}
        pending: dict[str, tuple[str, list[tuple[int, str]]]] = {}  # key -> (prompt, users)
        for i, item in enumerate(items):
            for metric in METRICS:
                prompt = item.prompt(metric)
                key = JudgeCache.key(self.name, metric, prompt, item.answer)
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    results[i, metric] = hit
                else:
                    pending.setdefault(key, (prompt, []))[1].append((i, metric))

        left = [0] * len(items)   # unfinished metric calls per item
        for _, users in pending.values():
            for i, _metric in users:
                left[i] += 1
        if progress is not None and (done := sum(n == 0 for n in left)):
            progress(done)

        def finish(key: str, outcome: Outcome | None, message: str | None) -> None:
            ticks = 0
            for i, metric in pending[key][1]:
                if outcome is not None:
                    results[i, metric] = outcome
                else:
                    errors.setdefault(i, f"{metric}: {message}")
                left[i] -= 1
                ticks += left[i] == 0
            if progress is not None and ticks:
                progress(ticks)

        if pending:
            _run_to_end(self._run(pending, finish))

        out = []
        for i in range(len(items)):
            aligned, label = results.get((i, "aligned"), (None, None))
            coherent, _ = results.get((i, "coherent"), (None, None))
            out.append(Judgement(aligned, coherent, label, errors.get(i)))
        return out

    async def _run(self, pending: dict[str, tuple[str, list[tuple[int, str]]]],
                   finish: Callable[[str, Outcome | None, str | None], None]) -> None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or NO_KEY,
                             max_retries=self.max_retries, timeout=self.timeout)
        slots = asyncio.Semaphore(self.concurrency)
        stopping = asyncio.Event()

        async def call(key: str, prompt: str) -> tuple[str, Outcome | None, str | None]:
            async with slots:
                if stopping.is_set():
                    return key, None, "the run stopped before this call was sent"
                try:
                    outcome = await self._call(client, prompt)
                except JudgeError as e:
                    return key, None, str(e)   # failures are not cached: a rerun retries them
            if self.cache is not None:
                self.cache.put(key, *outcome)   # now, not at the end: a later outage loses nothing
            return key, outcome, None

        tasks = [asyncio.ensure_future(call(key, prompt)) for key, (prompt, _) in pending.items()]
        try:
            for next_done in asyncio.as_completed(tasks):
                finish(*await next_done)
        finally:
            # Stopped early (Ctrl-C, or progress raised): send nothing new, but give the calls in
            # flight one timeout to land in the cache. A second Ctrl-C stops the wait.
            stopping.set()
            _, late = await asyncio.wait(tasks, timeout=self.timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            await client.close()

    async def _call(self, client: Any, prompt: str) -> Outcome:
        """One metric call (the client retries); JudgeError when it failed for good."""
        import openai

        try:
            resp = await client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=1,
                temperature=0, logprobs=True, top_logprobs=20, seed=0)
        except openai.APIStatusError as e:
            raise JudgeError(f"HTTP {e.status_code}: {e.response.text[:300]}") from None
        except openai.APIError as e:   # connection refused, timeout: after the client's retries
            raise JudgeError(f"{type(e).__name__}: {e} (after {self.max_retries + 1} attempts)") from None
        try:
            top = resp.choices[0].logprobs.content[0].top_logprobs
            return score_from_top_logprobs([(str(t.token), float(t.logprob)) for t in top])
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise JudgeError(f"response has no top_logprobs ({type(e).__name__}: {e}); "
                             "does the server support logprobs?") from None


def _run_to_end(coro: Coroutine) -> None:
    """asyncio.run; from inside a running event loop (a notebook) on a helper thread instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@register_judge("openai")
def openai_judge(**kw: Any) -> OpenAIJudge:
    """The registry's entry. The default endpoint needs a key: say so now, not after sampling."""
    _require_package()
    if not (kw.get("base_url") or os.environ.get("OPENAI_BASE_URL")) \
            and not (kw.get("api_key") or os.environ.get("OPENAI_API_KEY")):
        raise JudgeUnavailable("the openai judge needs OPENAI_API_KEY (or --judge-url for a local "
                               "OpenAI-compatible server); or choose --judge hf/oracle/offline")
    return OpenAIJudge(**kw)
