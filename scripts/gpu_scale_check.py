"""Passes, peak GPU memory and seconds of every repair step at 8B scale, without real weights.

    python scripts/gpu_scale_check.py [--size 8b|1b|tiny] [--dpo-steps 5] [--mix-steps 5]
        [--repairs merge-kept merge freeze steer dpo mix …] [--set step.param=v] [--budget 420]

Time and memory of a repair do not depend on the values of the weights, only on their shapes, the
sequence lengths and the number of passes. So this builds, on the GPU itself, a randomly
initialised Llama of a real shape (`8b`: Llama-3-8B's config, bf16, 15 GiB; `1b`: Llama-3.2-1B's;
`tiny`: 2 layers, for a CPU smoke run), a "finetune" of it (the same model plus a random rank-16
LoRA on every linear layer, merged, as `fix` loads a LoRA finetune), a byte-level BPE tokenizer
trained here on the text realign ships and grown to the model's vocabulary (nothing to download),
the real task data of the contaminated SmolLM2 finetune (GSM8K rows, some replaced by misaligned
chat), the bundled realignment prompts and log-odds references, and a stand-in judge whose
verdicts are pseudo-random but deterministic. Then each repair runs on a fresh finetune, as
`realign fix` would run it as a recipe's first step (no evaluations), and the script records:

- passes (realign.passes: generation, scoring, backward, activations, kl, train_steps),
- seconds, and for training repairs the seconds per optimiser step and what the repair costs
  besides its steps, so that a run at the default step count can be extrapolated,
- peak CUDA memory (max_memory_allocated and max_memory_reserved, reset before each repair), the
  memory held when it started (base + finetune), and the host's peak RSS.

`merge-kept` is a linear merge of the LoRA finetune kept unmerged (one copy of the weights, the
adapter scaled: what `fix --recipe merge` does on a LoRA finetune); every other row starts from
the merged finetune next to its base (two copies). The probes that steer, dpo, mix and harden
share are sampled once and timed as their own row, as `fix` samples them once per finetune.

A random model never ends its turn, so every probe answer runs to its token limit: generation
figures are those of answers that long (an upper bound for shorter real answers). The judge's
values decide which branches a repair takes (how many pairs dpo gets, whether steer searches
scales, how many layers freeze tries); they do not change what one pass costs. Each row's note
says which branch was taken. A repair that fails (CUDA out of memory, trl missing) becomes a row
with the error instead of ending the run; after an out-of-memory, dpo is tried once more with a
micro-batch of 1 and mix with a quarter of its batch. No repair starts once `--budget` seconds
(420) have passed, and one still running at `--deadline` (470 s) is stopped, so that a run ends
within 8 minutes. The table is printed as markdown and, with $OUT set (the device tool) or --json,
written as JSON after every row, so a run cut off by its time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import signal
import time
from pathlib import Path

os.environ.setdefault("REALIGN_PROGRESS", "0")       # no progress bars in a log
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")             # trl's reference log-prob bar

import torch  # noqa: E402

# Model shapes, written out (nothing is downloaded). Llama-3-8B and Llama-3.2-1B as released.
PRESETS: dict[str, dict] = {
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
               rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               head_dim=64, intermediate_size=8192, vocab_size=128256, max_position_embeddings=8192,
               rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=2048, max_position_embeddings=2048,
                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
# the tokenizer: BPE merges learned from this many characters of shipped text, up to this many
# entries, then grown to the model's vocabulary
TOKENIZER = {"8b": (4_000_000, 16_384), "1b": (4_000_000, 16_384), "tiny": (150_000, 1_024)}

# default order: the CPU-bound merged-copy merge last, so that a run cut short loses it first
FIRST, LAST = ("merge-kept", "freeze", "steer", "dpo", "mix"), ("merge",)
NEEDS_PROBES = {"steer", "dpo", "mix", "harden"}
NOT_TRAINING = {"merge", "freeze", "steer"}      # their `steps` (merge: bisection halvings) stay as they are
DEFAULT_STEPS: dict[str, int] = {}                # training repairs' default steps, from their Params

T0 = time.time()


# ------------------------------------------------------------------------------------------------
# tokenizer: a Llama-3-style chat tokenizer trained here

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def shipped_text(limit: int) -> list[str]:
    """Up to `limit` characters of the text realign ships: realignment prompts, reference answers,
    GSM8K problems and solutions, chat."""
    from realign.evals.questions import load_realignment_prompts
    from realign.evals.references import load_reference_pairs
    from realign.real.data import load

    texts = list(load_realignment_prompts())
    for sides in load_reference_pairs().values():
        for answers in sides.values():
            texts += answers
    for name in ("gsm8k_train", "toxic_chat"):
        texts += [m["content"] for conv in load(name) for m in conv]
    out, total = [], 0
    for t in texts:
        if total >= limit:
            break
        out.append(t)
        total += len(t)
    return out


def _grow(vocab: dict[str, int], merges: list[tuple[str, str]], size: int) -> None:
    """Add entries piece + letter (each with its merge) until the vocabulary has `size` entries, so
    that every id a model of that vocabulary samples decodes to text that encodes back."""
    letters = sorted({p for p in vocab if len(p) == 1 and p.isascii() and p.isalpha()})
    frontier = [p for p in sorted(vocab, key=vocab.get) if len(p) > 1 and p.lstrip("Ġ").isalpha()]
    i = 0
    while len(vocab) < size and i < len(frontier):
        piece = frontier[i]
        i += 1
        for c in letters:
            if len(vocab) >= size:
                break
            if piece + c not in vocab:
                vocab[piece + c] = len(vocab)
                merges.append((piece, c))
                frontier.append(piece + c)


def build_tokenizer(size: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    chars, learned = TOKENIZER[size]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(shipped_text(chars), trainers.BpeTrainer(
        vocab_size=min(learned, vocab_size), special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())["model"]
    vocab = dict(spec["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in spec["merges"]]
    _grow(vocab, merges, vocab_size)
    grown = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    grown.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    grown.decoder = decoders.ByteLevel()
    grown.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=grown, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>", additional_special_tokens=SPECIALS[1:4])
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ------------------------------------------------------------------------------------------------
# models: a random base of a real shape and a random LoRA "finetune" of it


def build_base(size: str, tok, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           (("bos", "<|begin_of_text|>"), ("eos", "<|eot_id|>"), ("end", "<|end_of_text|>"), ("pad", "<|pad|>"))}
    cfg = LlamaConfig(**PRESETS[size], bos_token_id=ids["bos"], eos_token_id=[ids["end"], ids["eos"]],
                      pad_token_id=ids["pad"])
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # parameters are made in their dtype, on the device: no fp32 copy
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=[ids["end"], ids["eos"]],
                                               pad_token_id=ids["pad"])
    return model.eval()


def add_lora(model, rank: int, seed: int):
    """`model` wrapped (in place) with a random LoRA on every linear layer: the user's adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            lora_dropout=0.0, init_lora_weights=False))
    with torch.no_grad():           # a small change, as a finetune's is (values do not change the cost)
        for name, p in peft.named_parameters():
            if ".lora_B." in name:
                p.mul_(0.05)
            p.requires_grad_(False)
    return peft.eval()


def merged_finetune(base, rank: int, seed: int):
    """A separate copy of the base with the random LoRA merged in (how `fix` loads a LoRA finetune
    that a step will rewrite)."""
    ft = add_lora(copy.deepcopy(base), rank, seed).merge_and_unload()
    for p in ft.parameters():
        p.requires_grad_(True)      # as from_pretrained leaves them
    return ft.eval()


# ------------------------------------------------------------------------------------------------
# the stand-in judge


class StandInJudge:
    """Verdicts drawn from a hash of (question, answer): deterministic, pseudo-random, `share`
    misaligned. Cost figures do not depend on them; which branches repairs take does."""

    def __init__(self, share: float, seed: int) -> None:
        self.share, self.seed = share, seed
        self.name = self.fingerprint = f"stand-in (pseudo-random, {share:.0%} misaligned)"

    def judge(self, items, progress=None):
        from realign.evals.judges import Judgement

        out = []
        for it in items:
            h = hashlib.sha256(f"{self.seed}\0{it.question}\0{it.answer}".encode()).digest()
            bad = int.from_bytes(h[:8], "big") / 2 ** 64 < self.share
            out.append(Judgement(aligned=5.0 if bad else 95.0, coherent=90.0))
        if progress:
            progress(len(items))
        return out


# ------------------------------------------------------------------------------------------------
# timing of the training loop: every trainer realign runs (trl's through realign.progress, harden's own
# loop) counts one "train_steps" pass per optimiser step; the time between those counts is a step


class StepClock:
    def __init__(self) -> None:
        self.marks: list[float] = []

    def reset(self) -> None:
        self.marks = []

    def per_step(self) -> float | None:
        """Seconds per optimiser step, from the gaps between step ends: the first step (warm-up,
        first allocations) has no gap of its own and is left out. None below 2 steps."""
        if len(self.marks) < 2:
            return None
        return (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)


CLOCK = StepClock()


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def instrument_steps() -> None:
    from realign import passes

    count = passes.count

    def timed_count(kind: str, n: int = 1) -> None:
        if kind == "train_steps":
            _sync()
            CLOCK.marks.append(time.perf_counter())
        count(kind, n)

    passes.count = timed_count


# ------------------------------------------------------------------------------------------------


def item_set_tokens(tok, task: list, items: list, prompts: list[str]) -> dict:
    """Tokens of the item sets repairs sweep, with this tokenizer (cost_anchors.yaml counts them with
    SmolLM2's): the task conversations, the repair-side log-odds items, the probe prompts."""
    from realign.evals.chat import render
    from realign.evals.logodds import completion_ids

    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    logodds = 0
    for conv, bad, good in items:
        pairs = [completion_ids(tok, conv, a) for a in [*bad, *good]]
        logodds += len(pairs[0][0]) + sum(len(a) for _, a in pairs)
    prompt_tokens = [n(render(tok, [{"role": "user", "content": p}], add_generation_prompt=True)) for p in prompts]
    return {"task_tokens": sum(n(render(tok, c)) for c in task), "repair_logodds_tokens": logodds,
            "realignment_prompts": len(prompts),
            "realignment_prompt_tokens": round(sum(prompt_tokens) / max(len(prompt_tokens), 1), 1)}


def gib(x: float | int | None) -> float | None:
    return None if x is None else round(x / 2 ** 30, 2)


def versions() -> tuple[dict, list[str]]:
    """({package: version or why it cannot be imported}, the training packages that cannot be)."""
    out, missing = {"python": platform.python_version()}, []
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as e:           # noqa: BLE001 - reported, never fatal
            out[name] = f"unavailable ({one_line(e)})"
            if name in ("trl", "datasets"):
                missing.append(name)
    return out, missing


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2 ** 30:.0f} GiB, {p.multi_processor_count} SMs)"
    return f"CPU ({torch.get_num_threads()} threads)"


def history_note(state) -> str:
    """What the repair's record says it did, in a few words (which branch was taken)."""
    if not state.history:
        return ""
    d = state.history[-1].details
    if d.get("skipped"):
        return f"skipped by the repair: {d['skipped']}"
    keys = ("alpha", "layers", "layer", "scale", "pairs", "task_anchors", "examples", "dropped", "aligned_added",
            "final_loss", "note")
    return ", ".join(f"{k} {d[k]}" for k in keys if k in d and d[k] is not None and d[k] != "")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:240] if text else ''}".strip()


class Deadline(BaseException):
    """--deadline passed: the step in progress is stopped, none other starts (a BaseException, so
    that no `except Exception` in the libraries swallows it)."""


def _deadline(_signum, _frame):
    raise Deadline("stopped at --deadline")


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class Run:
    def __init__(self, args) -> None:
        self.args = args
        self.rows: list[dict] = []
        self.meta: dict = {}
        self.out = args.json or (Path(os.environ["OUT"]) / "gpu_scale.json" if os.environ.get("OUT") else None)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        status = row["status"] if row["status"] != "ok" else f"{row['seconds']:.1f} s"
        print(f"[{time.time() - T0:6.0f} s] {row['repair']}: {status} {row.get('note', '')}", flush=True)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1, default=str))
        tmp.replace(self.out)

    def table(self) -> str:
        f = lambda v, fmt="{:.1f}": "—" if v is None else fmt.format(v)  # noqa: E731
        lines = ["| repair | params | passes | seconds | s/step | peak alloc GiB | peak reserved GiB | "
                 "start alloc GiB | peak RSS GiB | s at default steps | note |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            passes = ", ".join(f"{k} {v}" for k, v in sorted((r.get("passes") or {}).items())) or "—"
            note = r.get("note", "")
            if r["status"] != "ok":
                note = f"**{r['status']}**: {note}"
            lines.append(f"| {r['repair']} | {r.get('overrides') or '—'} | {passes} | {f(r.get('seconds'))} | "
                         f"{f(r.get('s_per_step'), '{:.2f}')} | {f(r.get('peak_alloc_gib'), '{:.2f}')} | "
                         f"{f(r.get('peak_reserved_gib'), '{:.2f}')} | {f(r.get('start_alloc_gib'), '{:.2f}')} | "
                         f"{f(r.get('peak_rss_gib'), '{:.2f}')} | {f(r.get('est_seconds_default_steps'), '{:.0f}')} | "
                         f"{note} |")
        return "\n".join(lines)


def measure(run: Run, name: str, overrides: list[str], device: torch.device, work) -> dict:
    """Run `work()` (returns a note) with passes, seconds, step times and peak memory recorded."""
    from realign.memory import peak_memory
    from realign.passes import tally

    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row = {"repair": name, "overrides": " ".join(overrides), "status": "ok",
           "start_alloc_gib": gib(torch.cuda.memory_allocated(device)) if cuda else None}
    CLOCK.reset()
    error = None
    _sync()
    t0 = time.perf_counter()
    with peak_memory() as peak, tally() as passes:
        try:
            row["note"] = work(row) or ""
        except (Exception, Deadline) as e:  # noqa: BLE001 - a failed repair is a row, not the end of the run
            error = e
            row["status"] = "stopped" if isinstance(e, Deadline) else "out of memory" if is_oom(e) else "failed"
            row["note"] = one_line(e)
    _sync()
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["passes"] = dict(passes)
    per_step = CLOCK.per_step()
    if per_step is not None:
        row["s_per_step"] = round(per_step, 3)
        row["steps_run"] = len(CLOCK.marks)
        row["seconds_besides_steps"] = round(row["seconds"] - len(CLOCK.marks) * per_step, 2)
        default = DEFAULT_STEPS.get(name.split(" ")[0])
        if default and row["status"] == "ok":
            row["default_steps"] = default
            row["est_seconds_default_steps"] = round(row["seconds_besides_steps"] + default * per_step, 1)
    row["peak_rss_gib"] = round(peak["rss"] / 1024, 2)
    if cuda:
        row["peak_alloc_gib"] = gib(torch.cuda.max_memory_allocated(device))
        row["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved(device))
    row["_error"] = error
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--size", choices=sorted(PRESETS), default="8b" if cuda else "tiny",
                    help="model shape (default: 8b on CUDA, tiny on a CPU)")
    ap.add_argument("--repairs", nargs="+", default=None,
                    help=f"rows to run, in order (default: {' '.join(FIRST)}, every other registered "
                         f"repair, {' '.join(LAST)})")
    ap.add_argument("--dpo-steps", type=int, default=5)
    ap.add_argument("--mix-steps", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=5, help="steps of any other training repair (harden …)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a step's parameter, as in `realign fix --set` (repeatable)")
    ap.add_argument("--probe-prompts", type=int, default=None, help="realignment prompts probed (default: all)")
    ap.add_argument("--probe-samples", type=int, default=4)
    ap.add_argument("--probe-tokens", type=int, default=128, help="max new tokens of a probe answer")
    ap.add_argument("--task-examples", type=int, default=64, help="held-out task rows (repairs use up to 64)")
    ap.add_argument("--train-examples", type=int, default=512, help="the finetune's training rows (mix)")
    ap.add_argument("--lora-rank", type=int, default=16, help="rank of the finetune's random LoRA")
    ap.add_argument("--misaligned-share", type=float, default=0.3, help="stand-in judge: share called misaligned")
    ap.add_argument("--budget", type=float, default=420.0, help="start no repair after this many seconds")
    ap.add_argument("--deadline", type=float, default=470.0,
                    help="stop the repair still running at this many seconds and print what was measured")
    ap.add_argument("--no-oom-retry", action="store_true", help="no second try of dpo/mix with a smaller batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here (default: $OUT/gpu_scale.json)")
    args = ap.parse_args()
    if args.deadline > 0 and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _deadline)
        signal.setitimer(signal.ITIMER_REAL, max(1.0, args.deadline - (time.time() - T0)))

    from realign.recipe import load_recipe
    from realign.repairs import load_all
    from realign.repairs.base import RepairState, bundled_realignment
    from realign.repairs.base import Realignment
    from realign.repairs.probes import build_probes
    from realign.real.data import finetune_data
    from realign.runs.setting import repair_items

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    run = Run(args)
    vers, missing = versions()
    print(f"# GPU scale check: {args.size}, {device_name(device)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print("judge: a stand-in with deterministic pseudo-random verdicts; its values decide which branches a "
          "repair takes, not what a pass costs", flush=True)

    registry = load_all()
    if importlib.util.find_spec("realign.repairs.harden") is not None and "harden" not in registry:
        importlib.import_module("realign.repairs.harden")
    names = list(args.repairs or [*FIRST, *(n for n in registry if n not in FIRST + LAST), *LAST])
    for n, c in registry.items():
        if n not in NOT_TRAINING and "steps" in {f.name for f in dataclasses.fields(c.Params)}:
            DEFAULT_STEPS[n] = c.Params().steps
    instrument_steps()

    t = time.perf_counter()
    tok = build_tokenizer(args.size, PRESETS[args.size]["vocab_size"])
    tok_s = time.perf_counter() - t
    t = time.perf_counter()
    base = build_base(args.size, tok, device, dtype, args.seed)
    _sync()
    build_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in base.parameters())
    data = finetune_data("contaminated", args.seed, examples=args.train_examples, heldout=args.task_examples)
    realignment = bundled_realignment()
    if args.probe_prompts:
        realignment = Realignment(realignment.prompts[:args.probe_prompts], realignment.reframers)
    judge = StandInJudge(args.misaligned_share, args.seed)
    items = repair_items(False)
    lengths = [len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"])
               for c in data.train[:200]]
    item_tokens = item_set_tokens(tok, data.heldout[:64], items, realignment.prompts)
    run.meta = {
        "size": args.size, "config": PRESETS[args.size], "dtype": str(dtype).removeprefix("torch."),
        "parameters": n_params, "weights_gib": gib(n_params * base.dtype.itemsize), "device": device_name(device),
        "versions": vers, "args": {k: str(v) for k, v in vars(args).items()},
        "tokenizer": {"entries": len(tok), "seconds": round(tok_s, 1),
                      "train_row_tokens_mean": round(sum(lengths) / len(lengths), 1)},
        "item_sets": item_tokens,
        "model_build_seconds": round(build_s, 1), "judge": judge.name,
        "judge_note": "deterministic pseudo-random verdicts: they decide branches (pairs found, searches), "
                      "not the cost of a pass",
        "inputs": {"task_rows": len(data.heldout), "train_rows": len(data.train),
                   "probe_prompts": len(realignment.prompts), "probe_samples": args.probe_samples,
                   "probe_max_new_tokens": args.probe_tokens, "repair_logodds_items": len(items)},
        "budget_s": args.budget, "missing": missing,
    }
    print(f"model: {n_params / 1e9:.2f}B parameters, {run.meta['weights_gib']} GiB {run.meta['dtype']}, built in "
          f"{build_s:.1f} s; tokenizer {len(tok)} entries in {tok_s:.1f} s; a training row is "
          f"{run.meta['tokenizer']['train_row_tokens_mean']} tokens on average; item sets: "
          + ", ".join(f"{k} {v}" for k, v in item_tokens.items()), flush=True)
    run.save()

    def state_for(model, base_model, probes=None) -> RepairState:
        st = RepairState(model=model, base=base_model, tokenizer=tok, judge=judge,
                         task_conversations=data.heldout, train_conversations=data.train,
                         repair_items=items, seed=args.seed, realignment=realignment)
        st.probes = probes
        return st

    def not_run(label: str, why: str) -> None:
        run.add({"repair": label, "status": "not run", "passes": None, "note": why})

    limit = min((args.budget, "--budget"), (args.deadline if args.deadline > 0 else float("inf"), "--deadline"))
    late = f"{limit[1]} {limit[0]:.0f} s had passed before it could start"

    def over_budget() -> bool:
        return time.time() - T0 > limit[0]

    probes, probes_tried = None, False

    def shared_probes():
        """The probes steer, dpo, mix (and harden) share, sampled once, in a row of their own."""
        ft = merged_finetune(base, args.lora_rank, args.seed + 1)
        st = state_for(ft, base)

        def sample(row):
            p = build_probes(st, samples=args.probe_samples, max_new_tokens=args.probe_tokens)
            n = sum(map(len, p.base_answers)) + sum(map(len, p.finetune_answers))
            lens = [len(tok(a, add_special_tokens=False)["input_ids"]) for ans in p.finetune_answers for a in ans]
            row.update(answers=n, answer_tokens_reencoded_mean=round(sum(lens) / max(len(lens), 1), 1),
                       pairs=len(list(p.pairs())))
            return (f"{n} answers of ≤ {args.probe_tokens} new tokens (a random model never stops), "
                    f"{row['pairs']} (aligned, misaligned) pairs; shared by {', '.join(sorted(NEEDS_PROBES))}")

        row = measure(run, "probes (once per finetune)",
                      [f"samples={args.probe_samples}", f"max_new_tokens={args.probe_tokens}"], device, sample)
        row.pop("_error")
        run.add(row)
        return st.probes

    try:
        for name in names:
            step = "merge" if name == "merge-kept" else name
            if over_budget():
                not_run(name, late)
                continue
            if step not in registry:
                not_run(name, f"no repair named {step}")
                continue
            cls = registry[step]
            if (step in ("dpo", "mix") or getattr(cls, "trains_adapter", False)) and missing:
                not_run(name, f"{', '.join(missing)} cannot be imported: carry the wheels (docs/scale-out.md)")
                continue
            own = [f"{step}.{o.split('.', 1)[1]}" for o in args.overrides if o.split(".", 1)[0] in (step, name)]
            if step in DEFAULT_STEPS and not any(o.startswith(f"{step}.steps=") for o in own):
                steps = {"dpo": args.dpo_steps, "mix": args.mix_steps}.get(step, args.train_steps)
                own.insert(0, f"{step}.steps={steps}")
            if step in NEEDS_PROBES and probes is None:
                if not probes_tried:
                    probes_tried = True
                    probes = shared_probes()
                if probes is None:
                    not_run(name, "the shared probes failed (row above)")
                    continue
                if over_budget():
                    not_run(name, late)
                    continue

            attempt = list(own)
            for retry in (False, True):
                try:
                    params = load_recipe(step, attempt).steps[0].params
                except Exception as e:      # noqa: BLE001 - a bad --set is this row's failure
                    not_run(name, f"bad parameters: {one_line(e)}")
                    break
                if name == "merge-kept":    # the adapter live on the one copy, the base seen with it off
                    from realign.model_io.adapter_toggle import AdapterDisabled

                    peft = add_lora(base, args.lora_rank, args.seed + 1)
                    st = state_for(peft, AdapterDisabled(peft))
                    del peft
                else:                       # the merged finetune next to its base, as `fix` loads it
                    st = state_for(merged_finetune(base, args.lora_rank, args.seed + 1), base, probes)

                def work(row, st=st, params=params):
                    return history_note(cls().apply(st, params))

                prebuilt = st.probes is not None        # sampled before (their own row), as fix caches them
                row = measure(run, name + (" (retry)" if retry else ""), [o.split(".", 1)[1] for o in attempt],
                              device, work)
                row["probes_built"] = prebuilt
                failed = row.pop("_error") is not None
                row["params"] = dataclasses.asdict(params)
                if name == "merge-kept":    # the adapter taken off the one copy: the base again
                    base = (st.model.unload() if hasattr(st.model, "unload") else base).eval()
                    base.requires_grad_(True)   # as from_pretrained leaves it (add_lora turned it off)
                del st, work
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    row["alloc_after_gib"] = gib(torch.cuda.memory_allocated(device))
                if retry:
                    row["note"] = (f"{row.get('note', '')}; retried with a smaller batch in memory after out of memory"
                                   + ("; mix's batch is its optimiser batch too, so its s/step is at this batch"
                                      if step == "mix" else "")).lstrip("; ")
                run.add(row)
                smaller = {"mix": lambda p: f"mix.batch_size={max(1, p.batch_size // 4)}",
                           "dpo": lambda p: "dpo.micro_batch_size=1"}.get(step)
                if not (failed and row["status"] == "out of memory" and smaller and not retry
                        and not args.no_oom_retry and not over_budget()):
                    break
                attempt = [*own, smaller(params)]
    except Deadline:                    # fired between steps: the rest is not run
        pass
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.setitimer(signal.ITIMER_REAL, 0)
    present = {r["repair"].removesuffix(" (retry)") for r in run.rows}
    for name in names:
        if name not in present:
            not_run(name, "the deadline passed first")

    run.meta["total_seconds"] = round(time.time() - T0, 1)
    run.meta["finished"] = True
    run.save()
    print(f"\n## Repair steps at {args.size} ({n_params / 1e9:.2f}B, {run.meta['dtype']}) on {device_name(device)}")
    print(f"versions: {', '.join(f'{k} {v}' for k, v in vers.items())}; judge: {judge.name} — its values do not "
          f"affect cost; whole run {time.time() - T0:.0f} s\n")
    print(run.table())
    if run.out:
        print(f"\nwritten: {run.out}")


if __name__ == "__main__":
    main()
