"""Judges: one module per judge, each registered by name in JUDGES (like repairs/).

    base.py       what they share: JudgeItem, Judgement, the Judge protocol, the logprob scoring
                  rule, JudgeCache, and the registry (JUDGES, register_judge)
    openai_api.py `openai`: any OpenAI-compatible chat-completions endpoint
    hf.py         `hf`: a local causal LM, read over whole numbers
    probe.py      `offline`, `offline-fast`: logistic heads on a small model's features
    exemplar.py   `offline-exemplar`: the first offline judge; the encoder helpers the others share

Judges from outside evaluation (the organism's `oracle`) register themselves from the plugin
modules that `realign.plugins` lists, so nothing here imports them.
"""

from __future__ import annotations

from typing import Any

from .base import (DEFAULT_PROMPTS, JUDGES, METRICS, Judge, JudgeCache, JudgeError, JudgeUnavailable,  # noqa: F401
                   Judgement, JudgeItem, Progress, register_judge, render, score_from_top_logprobs)

_MODULES = ("openai_api", "hf", "probe", "exemplar")
_loaded = False


def load_all() -> dict:
    """Import every judge module and plugin (each registers itself) and return the registry."""
    global _loaded
    if not _loaded:
        from importlib import import_module

        from ... import plugins

        for name in _MODULES:
            import_module(f"{__name__}.{name}")
        plugins.load()
        _loaded = True
    return JUDGES


def make_judge(name: str, **kw: Any) -> Judge:
    """Build a registered judge by name, with that judge's options (model, base_url, ...)."""
    if name not in JUDGES:
        load_all()
    try:
        factory = JUDGES[name]
    except KeyError:
        raise ValueError(f"unknown judge {name!r}; choose one of: "
                         f"{', '.join(sorted(JUDGES))}") from None
    return factory(**kw)
