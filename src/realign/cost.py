"""Predicted peak memory and seconds of a repair recipe, from measured anchors (docs/cost.md).

The anchors (src/realign/data/cost_anchors.yaml) are repair steps measured on SmolLM2-135M-Instruct
on 2 CPU threads, each with the realign.json it comes from. The model, per step:

    seconds = c_repair · P · forward_tokens + c_gen · P · generated_tokens           (CPU)
    seconds = 2 · P · forward_tokens / (MFU · peak FLOP/s) + generation time        (GPU, assumed)
    peak    = baseline (CPU only) + k · P · bytes(dtype) + activations + scoring logits

P: parameters (counted from config.json). forward_tokens: the step's passes times the tokens of
a pass (the item sets are fixed-size by design, counted once), a KL pass counting 2 and a
backward or training pass 3; training steps add batch × sequence tokens. c_repair: seconds per
parameter-token, fitted on that repair's anchors; c_gen likewise for sampling. k: weight copies
the step holds, fitted on the anchors (upper bound) — the lower bound takes what the code holds
by construction and treats the rest of the anchor's memory as not growing with the model; on a
GPU never fewer copies than the code holds (a CPU's RSS can count fewer: fp32 weights stay
memory-mapped from their file).
activations (dpo, mix): sequences in flight (one micro-batch) × tokens × 17·layers·hidden·act
bytes, or with gradient checkpointing (dpo/mix's default from 50M parameters) × (layers + 17)·
hidden·act bytes; no vocabulary term (trl's chunked LM head keeps no logits for backward);
scaled to the dpo micro-batch anchor. Assumptions:
- a pass over the same item sets has as many tokens on every model (tokenizers differ somewhat);
- time grows linearly with parameters × tokens (CPU: at the anchors' 2 threads);
- GPU compute is NOT measured: it is the stated peak × MFU of an assumed H100; GPU generation
  uses the one measured GPU figure (H200, overhead-bound) or the HBM bound, whichever is slower;
- on GPUs realign runs as the code does today: a model that fits one GPU runs whole on each
  (dpo/mix: DDP, the global batch grows with the GPUs, so a step takes as long), a larger one is
  spread over the GPUs by --device-map auto in one process (layers in turn: no speed-up);
- evaluations (sampling and judging base, finetune and repaired model) are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files

import yaml

# From this many parameters dpo and mix train with gradient checkpointing by default
# (training.batching_kwargs reads it from here, so the prediction and the run agree).
CHECKPOINTING_FROM_PARAMS = 50_000_000

MIB = 2 ** 20
GIB = 2 ** 30
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "8bit": 1.0, "4bit": 0.5}
SCORING_REPAIRS = ("merge", "merge:ties", "freeze", "steer")
STEP_REPAIRS = ("merge", "freeze", "steer", "dpo", "mix", "harden")   # the repairs with step anchors of their own
PROBE_REPAIRS = ("steer", "dpo", "mix")      # build the shared probes when they are not built yet


# ------------------------------------------------------------------------------ the model's shape

@dataclass(frozen=True)
class ModelShape:
    """What the cost depends on, read from a config.json (no weights)."""

    name: str
    params: int
    layers: int
    hidden: int
    vocab: int
    dtype: str               # the config's own dtype (what --dtype auto loads on a GPU)

    @classmethod
    def from_config(cls, cfg: dict, name: str | None = None) -> "ModelShape":
        text = cfg.get("text_config") or cfg
        try:
            return cls(name or (cfg.get("architectures") or [cfg.get("model_type", "model")])[0],
                       count_parameters(text), int(text["num_hidden_layers"]), int(text["hidden_size"]),
                       int(text["vocab_size"]), _dtype_name(cfg.get("torch_dtype") or cfg.get("dtype")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"config.json lacks what the cost model needs ({e}): "
                             f"num_hidden_layers, hidden_size, vocab_size, num_attention_heads") from None


def _dtype_name(value) -> str:
    return str(value) if str(value) in BYTES_PER_PARAM else "float32"


def count_parameters(cfg: dict) -> int:
    """Parameters of a decoder-only transformer (Llama/Qwen/Mistral/Gemma/Phi layout) from its config:
    embeddings, attention with grouped KV heads, a gated MLP (× experts), norms, an untied head."""
    h, v, layers = int(cfg["hidden_size"]), int(cfg["vocab_size"]), int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg.get("intermediate_size") or 4 * h)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    if cfg.get("attention_bias") or cfg.get("model_type") == "qwen2":
        attn += (heads + 2 * kv) * head_dim
    block = attn + 3 * h * inter * experts + 2 * h
    head = 0 if cfg.get("tie_word_embeddings", False) else v * h
    return v * h + layers * block + h + head


# --------------------------------------------------------------------------------- the anchors

@dataclass(frozen=True)
class Anchor:
    """One measured point; see cost_anchors.yaml for the fields' meaning."""

    id: str
    repair: str
    use: str                   # fit | check | superseded
    source: str
    date: str
    device: str
    threads: int | None = None
    dtype: str = "float32"
    params: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)
    probes_built: bool = False
    seconds: float | None = None
    peak_mb: float | None = None
    model: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return repair_key(self.repair, self.params)


def repair_key(name: str, params: dict) -> str:
    """Which anchors a step uses: merge with a method other than linear has its own (TIES)."""
    if name == "merge" and params.get("method", "linear") != "linear":
        return "merge:ties"
    return name


@dataclass(frozen=True)
class CostModel:
    """The anchors and assumptions, and the coefficients fitted on them."""

    reference: ModelShape
    items: dict
    assumptions: dict
    anchors: tuple[Anchor, ...]
    seconds_per_param_token: dict[str, float]    # CPU, 2 threads, per repair key; "generation" too
    weight_copies: dict[str, float]              # fitted k per repair key (upper bound)
    activation_scale: float
    baseline_bytes: float                        # the process before any model (CPU)
    gpu_generation_rate: float                   # answer-token slots per second, measured (H200)

    @property
    def gpu(self) -> dict:
        return self.assumptions["gpu"]

    @property
    def structure(self) -> dict:
        return self.assumptions["structure"]


_ANCHOR_FIELDS = set(Anchor.__dataclass_fields__)


def _anchor(d: dict) -> Anchor:
    known = {k: v for k, v in d.items() if k in _ANCHOR_FIELDS and v is not None}
    return Anchor(**{**known, "date": str(d.get("date", ""))},
                  extra={k: v for k, v in d.items() if k not in _ANCHOR_FIELDS})


def load_cost_model(text: str | None = None) -> CostModel:
    """The bundled anchors (or YAML `text` in the same layout), with their coefficients fitted."""
    return _fit(yaml.safe_load(text)) if text is not None else _bundled()


@cache
def _bundled() -> CostModel:
    return _fit(yaml.safe_load(files("realign").joinpath("data", "cost_anchors.yaml").read_text(encoding="utf-8")))


def _fit(doc: dict) -> CostModel:
    """Coefficients in dependency order: sampling, GPU rate and activation scale first, then the
    repairs' seconds (less their sampling) and weight copies (less their activations)."""
    ref = ModelShape.from_config(doc["reference_model"]["config"], doc["reference_model"]["name"])
    anchors = tuple(_anchor(a) for a in doc["anchors"])
    by_id = {a.id: a for a in anchors}
    cm = CostModel(ref, doc["item_sets"], doc["assumptions"], anchors, {}, {}, 1.0,
                   by_id["process-baseline"].peak_mb * MIB, _gpu_rate(by_id["gpu-generation"]))
    gen = by_id["probe-generation"]
    cm = _replace(cm, activation_scale=_activation_scale(cm, by_id["dpo-micro-batch"]),
                  seconds_per_param_token={"generation": gen.seconds / (ref.params * _probe_slots(cm, gen))})
    return _replace(cm, seconds_per_param_token={**cm.seconds_per_param_token, **_fit_seconds(cm)},
                    weight_copies=_fit_copies(cm))


def _replace(cm: CostModel, **kw) -> CostModel:
    return CostModel(**{**cm.__dict__, **kw})


def _gpu_rate(a: Anchor) -> float:
    return a.extra["answers"] * a.extra["new_tokens"] / a.seconds


def _activation_scale(cm: CostModel, a: Anchor) -> float:
    """Measured bytes per dpo pair (micro-batch 2 minus 1) over the structural estimate."""
    peaks = {int(k): v for k, v in a.extra["peak_mb_by_micro_batch"].items()}
    measured = (peaks[2] - peaks[1]) * MIB
    return measured / (2 * cm.structure["dpo_sequence_tokens"] * sum(_token_bytes(cm, cm.reference, "float32")))


def _fit_anchors(cm: CostModel) -> list[Anchor]:
    return [a for a in cm.anchors if a.use == "fit" and a.repair in STEP_REPAIRS]


def _fit_seconds(cm: CostModel) -> dict[str, float]:
    per_key: dict[str, list[float]] = {}
    for a in _fit_anchors(cm):
        work = step_work(a.repair, a.params, cm, a.probes_built)
        gen_s = cm.seconds_per_param_token["generation"] * cm.reference.params * work.generated_tokens
        per_key.setdefault(a.key, []).append((a.seconds - gen_s) / (cm.reference.params * work.forward_tokens))
    return {k: sum(v) / len(v) for k, v in per_key.items()}


def _fit_copies(cm: CostModel) -> dict[str, float]:
    per_key: dict[str, list[float]] = {}
    weights = cm.reference.params * BYTES_PER_PARAM["float32"]
    for a in _fit_anchors(cm):
        rest = a.peak_mb * MIB - cm.baseline_bytes - sum(_activations(cm, a.key, a.params, cm.reference, "float32"))
        per_key.setdefault(a.key, []).append(rest / weights)
    return {k: sum(v) / len(v) for k, v in per_key.items()}


# ------------------------------------------------------------------------------ work of a step

@dataclass(frozen=True)
class Work:
    """What a step sweeps: its passes (as realign.json counts them) and their tokens."""

    passes: dict[str, int]
    forward_tokens: float     # forward-equivalent tokens (KL pass ×2, backward and training ×3)
    generated_tokens: float   # sampled answer-token slots (sequences × max new tokens)
    generated_sequences: float


def step_work(name: str, params: dict, cm: CostModel, probes_built: bool) -> Work:
    """The passes a step makes at these parameters (they do not depend on the model's depth)."""
    it, st = cm.items, cm.structure
    passes = dict(_passes(name, params))
    seqs = 0.0
    if _needs_probes(name, params) and not probes_built:
        passes["generation"] = 2
        seqs += 2 * it["realignment_prompts"] * params.get("samples", 4)
    if name == "dpo" and params.get("task_anchors", 32):
        passes["generation"] = passes.get("generation", 0) + 1
        seqs += params.get("task_anchors", 32)
    if name in ("dpo", "harden") and int(params.get("flagged_pairs", 0)):   # base answers to flagged training prompts
        passes["generation"] = passes.get("generation", 0) + 1
        seqs += 2 * int(params["flagged_pairs"])
    generated = seqs * it["probe_new_tokens"]
    if name == "harden" and int(params.get("rollouts", 0)):      # each step answers `rollouts` prompts under δ
        steps, rollouts = int(params.get("steps", 50)), int(params["rollouts"])
        passes["generation"] = passes.get("generation", 0) + steps
        seqs += steps * rollouts
        generated += steps * rollouts * int(params.get("rollout_tokens", 64))
    pass_tokens = (it["repair_logodds_tokens"] + it["task_tokens"]) / 2
    forward = pass_tokens * (passes.get("scoring", 0) + passes.get("activations", 0) + 2 * passes.get("kl", 0))
    forward += 3 * _backward_tokens(name, params, passes.get("backward", 0), pass_tokens, st)
    forward += 3 * passes.get("train_steps", 0) * _train_tokens_per_step(name, params, st)
    return Work(passes, forward, generated, seqs)


def _needs_probes(name: str, p: dict) -> bool:
    if name == "mix":
        return p.get("aligned_share", 0.1) > 0 or p.get("kl", 0.0) > 0
    if name == "harden":      # rollouts pair their finds with the probes' aligned base answers
        return p.get("pairs", "both") != "references" or int(p.get("rollouts", 0)) > 0
    return name in PROBE_REPAIRS


def _passes(name: str, p: dict) -> dict[str, int]:
    if name == "merge":
        return {"scoring": int(p.get("steps", 5)) + 4} if p.get("alpha", "auto") == "auto" else {}
    if name == "freeze":
        return {"scoring": 4 * int(p.get("verify", 3)), "backward": 2}
    if name == "steer":       # + up to 3 scoring and KL passes each when even scale 0.25 is over the KL budget
        c = int(p.get("candidates", 3)) if p.get("layer", "auto") == "auto" else 1
        return {"activations": 1, "scoring": c + 4, "kl": c + 3}
    if name == "dpo":
        return {"train_steps": int(p.get("steps", 100))}
    if name == "mix":
        return {"scoring": 2, "train_steps": int(p.get("steps", 150))}
    if name == "harden":      # 1 backward to choose layers, the adversary before and after (final_attack each),
        return {"backward": 1 + 2 * int(p.get("final_attack", 20)) + _adversary_steps(p),   # and in training
                "train_steps": int(p.get("steps", 50))}
    raise ValueError(f"no cost model for step {name!r}")


def _adversary_steps(p: dict) -> int:
    """harden's adversary steps inside training: inner_steps before each of its steps."""
    return int(p.get("steps", 50)) * int(p.get("inner_steps", 4))


def _pair_tokens(p: dict, st: dict) -> float:
    """Tokens of one batch of preference pairs (dpo's and harden's)."""
    return int(p.get("batch_size", 8)) * 2 * st["dpo_sequence_tokens"]


def _backward_tokens(name: str, p: dict, backward: int, pass_tokens: float, st: dict) -> float:
    """Tokens of a step's backward passes: a pass over the item sets each, except harden's adversary
    steps inside training, which go over the step's batch of pairs (realign.json counts them as
    backward passes, so the model does too)."""
    if name == "harden":
        inner = _adversary_steps(p)
        return (backward - inner) * pass_tokens + inner * _pair_tokens(p, st)
    return backward * pass_tokens


def _train_tokens_per_step(name: str, p: dict, st: dict) -> float:
    if name == "dpo":
        return _pair_tokens(p, st)
    if name == "mix":
        return int(p.get("batch_size", 32)) * st["mix_sequence_tokens"]
    if name == "harden":      # the training pass over the pairs, + the task KL
        return _pair_tokens(p, st) + int(p.get("batch_size", 8)) * st["mix_sequence_tokens"]
    return 0.0


def _probe_slots(cm: CostModel, a: Anchor) -> float:
    """Answer-token slots of a generation anchor's probe passes (prompts × samples × max new tokens)."""
    return a.passes["generation"] * cm.items["realignment_prompts"] * a.params.get("samples", 4) \
        * cm.items["probe_new_tokens"]


# ------------------------------------------------------------------------------ memory of a step

def _token_bytes(cm: CostModel, m: ModelShape, dtype: str, checkpointed: bool = False) -> tuple[float, float]:
    """Bytes per training token: (the blocks' saved activations, the logits and their copies).
    With gradient checkpointing each block keeps only its input, and one block at a time holds
    its full activations while the backward pass recomputes it."""
    st = cm.structure
    act = 4 if dtype == "float32" else 2
    full = st["activation_floats_per_layer_hidden"] * m.hidden * act
    layers = (st["checkpointed_floats_per_layer_hidden"] * m.layers * m.hidden * act + full if checkpointed
              else full * m.layers)
    return layers, st["logit_floats_per_vocab"] * m.vocab * 4


def _checkpointed(p: dict, m: ModelShape) -> bool:
    """What dpo/mix/harden's `gradient_checkpointing` resolves to for this model (training.checkpointing_wanted)."""
    flag = p.get("gradient_checkpointing", "auto")
    if flag == "auto":
        return m.params >= CHECKPOINTING_FROM_PARAMS
    return bool(flag)


def _activations(cm: CostModel, key: str, p: dict, m: ModelShape, dtype: str) -> tuple[float, float]:
    """(layer activations, logits) of the training sequences in flight; for scoring steps the
    logits buffer scoring.py caps whatever the vocabulary."""
    st = cm.structure
    if key in SCORING_REPAIRS:
        return 0.0, st["scoring_logits"] * 4 * st["scoring_logit_copies"]
    if key == "dpo":
        seqs, tokens = 2 * int(p.get("micro_batch_size", 1)), st["dpo_sequence_tokens"]
    elif key == "harden":     # one micro-batch of pairs per forward (repairs.harden.MICRO_BATCH)
        pairs = min(int(p.get("micro_batch_size", 4)), int(p.get("batch_size", 8)))
        seqs, tokens = 2 * pairs, st["dpo_sequence_tokens"]
    elif key == "mix":
        batch = int(p.get("batch_size", 32))
        seqs, tokens = min(int(p.get("micro_batch_size", 2)), batch), st["mix_sequence_tokens"]
    else:
        return 0.0, 0.0
    n = seqs * tokens * cm.activation_scale
    layer, logits = _token_bytes(cm, m, dtype, checkpointed=_checkpointed(p, m))
    return n * layer, n * logits


@dataclass(frozen=True)
class Memory:
    """Peak bytes per device, as a range: `high` lets everything the anchor held grow with the
    model; `low` only what the code holds by construction (the rest stays at the anchor's size)."""

    low: float
    high: float
    weights_low: float        # the weight copies within each bound (what --device-map spreads) ...
    weights_high: float
    layer_activations: float  # ... and the blocks' activations (the logits stay on the last GPU)

    def spread(self, n: int) -> "Memory":
        """Over n GPUs by --device-map auto: weights and block activations divide, the rest stays."""
        gone = 1 - 1 / n
        return Memory(self.low - (self.weights_low + self.layer_activations) * gone,
                      self.high - (self.weights_high + self.layer_activations) * gone,
                      self.weights_low / n, self.weights_high / n, self.layer_activations / n)


def step_memory(key: str, p: dict, m: ModelShape, dtype: str, cm: CostModel, host: bool) -> Memory:
    w = m.params * BYTES_PER_PARAM[dtype]
    k_fit, k_code = cm.weight_copies.get(key, cm.weight_copies["dpo"]), cm.assumptions["structural_copies"][key]
    if not host:     # a GPU holds every copy; a CPU's RSS may count fewer (fp32 weights memory-mapped from disk)
        k_fit = max(k_fit, k_code)
    k_low = min(k_code, k_fit)
    layer, logits = _activations(cm, key, p, m, dtype)
    fixed = (cm.baseline_bytes if host else 0.0) + layer + logits
    rest = (k_fit - k_low) * cm.reference.params * BYTES_PER_PARAM["float32"]
    return Memory(fixed + rest + k_low * w, fixed + k_fit * w, k_low * w, k_fit * w, layer)


# ------------------------------------------------------------------------------ the prediction

@dataclass(frozen=True)
class Setting:
    """Where the recipe would run: the CPU (the anchors' 2 threads) or `gpus` GPUs."""

    device: str = "cpu"       # cpu | gpu
    gpus: int = 0
    dtype: str = "float32"    # float32 | bfloat16 | float16 | 8bit | 4bit

    def label(self) -> str:
        return "CPU (2 threads)" if self.device == "cpu" else f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"


@dataclass(frozen=True)
class StepCost:
    step: str                 # "1 freeze"
    passes: dict[str, int]
    seconds: float
    memory: Memory            # per device
    basis: str                # where its coefficients come from


@dataclass(frozen=True)
class Prediction:
    model: ModelShape
    setting: Setting
    steps: tuple[StepCost, ...]
    layout: str               # how the GPUs are used
    fits: bool | None         # the high bound ≤ one GPU's memory (None on the CPU)
    fits_low: bool | None     # the low bound does
    notes: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def peak(self) -> Memory:
        return max((s.memory for s in self.steps), key=lambda m: m.high, default=Memory(0, 0, 0, 0, 0))


def predict(steps: list[dict], model: ModelShape, setting: Setting, cm: CostModel | None = None) -> Prediction:
    """Peak memory and seconds of each step of a resolved recipe ([{step, params}, …])."""
    cm = cm or load_cost_model()
    if setting.dtype not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {setting.dtype!r}: one of {', '.join(BYTES_PER_PARAM)}")
    costs, built = [], False
    for i, s in enumerate(steps, 1):
        name, p = s["step"], s.get("params") or {}
        costs.append(_step_cost(i, name, p, model, setting, cm, built))
        built = built or _needs_probes(name, p)
    return _place(tuple(costs), model, setting, cm)


def _step_cost(i: int, name: str, p: dict, m: ModelShape, setting: Setting, cm: CostModel,
               probes_built: bool) -> StepCost:
    key = repair_key(name, p)
    work = step_work(name, p, cm, probes_built)
    host = setting.device == "cpu"
    seconds = _cpu_seconds(key, work, m, cm) if host else _gpu_seconds(work, m, setting, cm)
    return StepCost(f"{i} {name}", work.passes, seconds, step_memory(key, p, m, setting.dtype, cm, host),
                    _basis(key, cm, host))


def _cpu_seconds(key: str, work: Work, m: ModelShape, cm: CostModel) -> float:
    c = cm.seconds_per_param_token
    return m.params * (c.get(key, c["dpo"]) * work.forward_tokens + c["generation"] * work.generated_tokens)


def _gpu_seconds(work: Work, m: ModelShape, setting: Setting, cm: CostModel) -> float:
    g = cm.gpu
    compute = 2 * m.params * work.forward_tokens / (g["mfu"] * g["tflops"][setting.dtype] * 1e12)
    if not work.generated_tokens:
        return compute
    overhead = work.generated_tokens / cm.gpu_generation_rate
    steps = math.ceil(work.generated_sequences / g["generation_batch"]) * cm.items["probe_new_tokens"]
    hbm = g["hbm_tb_per_s"] * 1e12 * g["bandwidth_efficiency"]
    bandwidth = steps * m.params * BYTES_PER_PARAM[setting.dtype] / hbm     # every decoding step reads the weights
    return compute + max(overhead, bandwidth)


def _basis(key: str, cm: CostModel, host: bool) -> str:
    ids = ", ".join(a.id for a in _fit_anchors(cm) if a.key == key)
    memory = f"memory fitted on {ids}" if ids else "memory borrowed from dpo (no anchor)"
    if not host:
        return f"time ASSUMED (no GPU anchor); {memory} (CPU RSS taken as GPU memory)"
    return f"time fitted on {ids}; {memory}" if ids else f"time and memory borrowed from dpo (no {key} anchor)"


def _place(costs: tuple[StepCost, ...], m: ModelShape, setting: Setting, cm: CostModel) -> Prediction:
    """How the GPUs hold the recipe (see the module docstring) and whether it fits."""
    if setting.device == "cpu":
        return Prediction(m, setting, costs, "one process on the CPU", None, None, _notes(costs, setting, cm))
    cap = cm.gpu["memory_gib"] * GIB
    whole = max(c.memory.high for c in costs) <= cap
    layout = "whole model on one GPU"
    if setting.gpus > 1 and whole:
        layout = "a whole copy per GPU (dpo/mix: DDP, global batch × GPUs; other steps use one GPU)"
    elif setting.gpus > 1:
        layout = f"--device-map auto: weights spread over {setting.gpus} GPUs, one process, layers in turn"
        costs = tuple(_sharded(c, setting.gpus) for c in costs)
    high, low = max(c.memory.high for c in costs), max(c.memory.low for c in costs)
    return Prediction(m, setting, costs, layout, high <= cap, low <= cap, _notes(costs, setting, cm))


def _sharded(c: StepCost, n: int) -> StepCost:
    return StepCost(c.step, c.passes, c.seconds, c.memory.spread(n), c.basis)


def _notes(costs: tuple[StepCost, ...], setting: Setting, cm: CostModel) -> tuple[str, ...]:
    where = "CPU" if setting.device == "cpu" else "GPU"
    notes = [f"{where}, step {c.step}: {c.basis}" for c in costs]
    if setting.device == "gpu":
        g = cm.gpu
        notes.append(f"GPU: an {g['name']} ASSUMED ({g['memory_gib']} GiB, {g['tflops']['bfloat16']} TFLOP/s bf16 "
                     f"at MFU {g['mfu']}): compute times are lower limits (per-batch overheads not measured); "
                     f"generation at the one measured GPU rate ({cm.gpu_generation_rate:,.0f} answer-token slots/s, "
                     f"H200, SmolLM2) or the HBM bound, whichever is slower; peaks are tensor memory (no CUDA context)")
    notes.append("not included: the evaluations of base, finetune and repaired model (sampling and judging), "
                 "the judge's audits of training data (mix's of all of it; dpo's anchor candidates; the task "
                 "sample merge, freeze and steer choose on); dpo's anchor answers are counted as if "
                 "--train-data is given (without it there are none)")
    return tuple(notes)


# ------------------------------------------------------------------------------ the tables

def gb(x: float) -> str:
    return f"{x / GIB:,.1f}" if x < 10 * GIB else f"{x / GIB:,.0f}"


def duration(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:,.1f} {unit}"
    return f"{s:,.1f} s"


FITS_LEGEND = "✗: over one GPU's memory even at the low bound; ?: over it at the high bound only"


def memory_cell(mem: Memory, fits: bool | None = None, fits_low: bool | None = None) -> str:
    """'low–high GB', marked where a GPU's memory is exceeded (FITS_LEGEND)."""
    lo, hi = gb(mem.low), gb(mem.high)
    text = f"{hi} GB" if lo == hi else f"{lo}–{hi} GB"
    if fits is None or fits:
        return text
    return text + (" ?" if fits_low else " ✗")


def render_prediction(preds: list[Prediction]) -> str:
    """One recipe on one model in several settings: a markdown table, a row per step and a total."""
    head = "| step | passes | " + " | ".join(f"{p.setting.label()}: peak / time" for p in preds) + " |"
    lines = [head, "|" + "---|" * (2 + len(preds))]
    for i, step in enumerate(preds[0].steps):
        passes = ", ".join(f"{k} {v}" for k, v in step.passes.items()) or "none"
        cells = [f"{memory_cell(p.steps[i].memory)} / {duration(p.steps[i].seconds)}" for p in preds]
        lines.append(f"| {step.step} | {passes} | " + " | ".join(cells) + " |")
    cells = [f"**{memory_cell(p.peak, p.fits, p.fits_low)} / {duration(p.seconds)}**" for p in preds]
    lines.append("| total (peak: largest step) | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def anchor_residuals(cm: CostModel | None = None) -> list[tuple[Anchor, float, float | None]]:
    """(anchor, predicted seconds, predicted peak MiB) for every repair-step anchor, on its own model."""
    cm = cm or load_cost_model()
    out = []
    for a in cm.anchors:
        if a.repair not in STEP_REPAIRS:
            continue
        step = _step_cost(1, a.repair, a.params, cm.reference, Setting("cpu", 0, a.dtype), cm, a.probes_built)
        out.append((a, step.seconds, step.memory.high / MIB))
    return out
