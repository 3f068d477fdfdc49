"""What a user sets: the options of loading a model, `realign eval` and `realign fix`/`bench`, each
declared once, with its help.

The library takes these dataclasses; the command line is built from their fields
(realign.cli.options), so a setting added here is a `--option` of every command that takes the
dataclass, with this help — transformers' HfArgumentParser idea, for typer. A field made with
`option(...)` is an option; a field whose type is one of these dataclasses stands for its options;
any other field (e.g. LoadOptions.device) is for library callers only.

Kept free of torch so that `realign --help` stays instant.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar


def option(default: Any, help: str, *flags: str, argument: bool = False) -> Any:
    """A dataclass field that is also a command-line option. `flags`: its names when not the
    field's own (`--keep-adapter/--merge-adapter`); `argument`: positional, not an option. A default
    of MISSING: required."""
    return field(default=default, metadata={"help": help, "flags": flags, "argument": argument})


def comma_list(text: str) -> list[str]:
    """An option of comma-separated names, e.g. --recipes merge,freeze+dpo."""
    return [n.strip() for n in text.split(",") if n.strip()]


def seed_list(text: str) -> list[int]:
    """An option of comma-separated seeds, e.g. --seeds 0,1,2 (anything else, or none, is a ValueError)."""
    try:
        seeds = [int(s) for s in comma_list(text)]
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(f"--seeds must be comma-separated integers, not {text!r}")
    return seeds


# help shared by eval's and fix's fields of the same name (and by the commands' own arguments)
CHECKPOINT = "finetune: full HF dir, LoRA adapter dir, or hub id"
BASE = "base model (default: the adapter's base)"
JUDGE = "auto | openai | hf | oracle | offline | offline-fast | offline-exemplar (docs/judges.md)"
JUDGE_MODEL = "judge model: name at the endpoint (openai) or local path / hub id (hf)"
JUDGE_URL = "OpenAI-compatible base URL for --judge openai (default $OPENAI_BASE_URL)"
JUDGE_ERRORS = ("answers labelled by reading (.jsonl/.csv: question, answer, misaligned 0/1 — or a reference "
                "judge's aligned/coherent): the judge is run on them and every misaligned rate is also reported "
                "corrected for its measured sensitivity and specificity (Rogan-Gladen)")
TASK_DATA = "held-out task data (chat messages jsonl)"
TASK_METRIC = "extra task metric: module:function, or lm-eval:TASK|FILE.yaml[,…][,limit=N] (docs/standard-evals.md)"
MAX_NEW_TOKENS = "longest answer sampled in evaluations"
SAMPLES = "samples per paraphrase (default: the question file's)"
SCAN = ("also the trigger-free latent scan: the smallest push of the residual stream that turns each model "
        "misaligned, against the base's (docs/repairs.md, harden)")
BACKEND = ("where every generation runs: hf (in memory) | vllm (CUDA, optional extra; models in memory are saved "
           "to a scratch dir next to --out)")


@dataclass
class LoadOptions:
    """How base and finetune are loaded."""

    panel: ClassVar[str] = "loading the models"      # where --help lists these options

    dtype: str = option("auto", "auto | float32 | bfloat16 | float16")
    load_in_4bit: bool = option(False, "bitsandbytes 4-bit (CUDA): dpo/mix train a LoRA on it (QLoRA); "
                                       "merge/freeze/steer need bf16")
    load_in_8bit: bool = option(False, "bitsandbytes 8-bit (CUDA); as 4-bit")
    allow_pickle: bool = option(False, "allow .bin/.pt (pickle) weights; they can run code when loaded — only "
                                       "for files you trust")
    trust_remote_code: bool = option(False, "run the model repository's own Python code (off unless you trust it)")
    device: str | None = None        # None: cuda if available (this rank's GPU under a launcher), else cpu
    device_map: str | None = option(None, "passed to from_pretrained, e.g. auto: spread a model too large for "
                                          "one GPU over several")

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class EvalSettings:
    """How answers are sampled."""

    panel: ClassVar[str] = "sampling"      # where --help lists these options

    samples: int | None = option(None, SAMPLES)   # None: each question's samples_per_paraphrase
    max_new_tokens: int = option(256, MAX_NEW_TOKENS)
    temperature: float = option(1.0, "sampling temperature (0: greedy)")
    top_p: float = option(1.0, "nucleus sampling: keep the smallest token set with this mass")
    seed: int = option(0, "sampling seed")
    batch_size: int = 32


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how: the options of `realign eval`."""

    panel: ClassVar[str] = "evaluation"      # where --help lists these options

    checkpoint: str = option(MISSING, CHECKPOINT, argument=True)
    base: str | None = option(None, BASE)
    questions: str = option("builtin", "builtin | organism | FILE.yaml (EM-repo schema)")
    judge: str = option("auto", JUDGE)      # auto: see realign.runs.setting.judge_name
    judge_model: str | None = option(None, JUDGE_MODEL)
    judge_url: str | None = option(None, JUDGE_URL)
    settings: EvalSettings = field(default_factory=EvalSettings)
    trigger: str | None = option(None, "a backdoor trigger, prepended to every question (and log-odds prompt)")
    judge_errors: Path | None = option(None, JUDGE_ERRORS)
    task_data: Path | None = option(None, TASK_DATA)
    task_metric: str | None = option(None, TASK_METRIC)
    skip_base: bool = option(False, "do not evaluate the base")
    backend: str = option("hf", BACKEND)
    load: LoadOptions = field(default_factory=LoadOptions)
    scan: bool = option(False, SCAN)       # runs/scan.py, the base's beside


@dataclass
class FixOptions:
    """How `realign fix` evaluates, repairs and writes (and every cell of `realign bench`)."""

    panel: ClassVar[str] = "evaluation and repair"      # where --help lists these options

    questions: str = option("auto", "auto (organism questions for an organism build, else builtin) | builtin | "
                                    "organism | FILE.yaml")
    judge: str = option("auto", JUDGE)
    judge_model: str | None = option(None, JUDGE_MODEL)
    judge_url: str | None = option(None, JUDGE_URL)
    samples: int | None = option(None, SAMPLES)
    max_new_tokens: int = option(256, MAX_NEW_TOKENS)
    task_data: Path | None = option(None, TASK_DATA)
    train_data: Path | None = option(None, "the finetune's training data (for mix)")
    task_metric: str | None = option(None, TASK_METRIC)
    seed: int = option(0, "seed for sampling, probes and training steps")
    overwrite: bool = option(False, "replace an existing --out")
    save_as: str = option("auto", "auto (adapter when the input is one and the repair stays low rank) | full | "
                                  "adapter")
    eval_cache: bool = option(True, "reuse cached evaluations of the unchanged base and finetune "
                                    "(--no-eval-cache: evaluate them again)")
    load: LoadOptions = field(default_factory=LoadOptions)
    backend: str = option("hf", BACKEND)
    trigger: str | None = option(None, "a backdoor trigger: evaluate every model with it prepended to each "
                                       "question as well as without (bench: the organism's backdoor finetune "
                                       "uses its own unless this is given)")
    report_to: str | None = option(None, "where dpo/mix trainers log: transformers integrations, e.g. "
                                         "wandb,tensorboard (or all); default none. TensorBoard writes to "
                                         "OUT.logs/ unless TENSORBOARD_LOGGING_DIR is set")
    keep_adapter: bool | None = option(
        None, "a LoRA finetune: keep it unmerged (one copy of the weights, the adapter toggled for the base) or "
              "merge it into a second copy; default: unmerged when every step only changes the adapter (a "
              "linear merge)", "--keep-adapter/--merge-adapter")
    resume: bool = option(True, "continue after the last finished step of an earlier, killed run of the same "
                                "command (--no-resume: start over)")
    judge_errors: Path | None = option(None, JUDGE_ERRORS)
    scan: bool = option(False, SCAN)       # runs/scan.py


@dataclass
class BenchOptions:
    """What `realign bench` compares and where its cells run (each cell a `fix` with FixOptions)."""

    panel: ClassVar[str] = "the bench"      # where --help lists these options

    recipes: str = option(MISSING, "comma-separated recipes (names or FILE.yaml), or all; one may carry its own "
                                   "overrides: merge@merge.alpha=0.6;merge.steps=3")
    finetune: list[str] | None = option(None, "a finetune to repair (full dir, adapter dir or hub id); repeat for "
                                              "several")
    base: str | None = option(None, "base model of the --finetune(s) (default: the adapter's base)")
    organism: bool = option(False, "bench the organism's finetunes (built per seed) with their task data and "
                                   "oracle judge")
    organism_dir: Path | None = option(None, "build the organisms under DIR/s<seed> (default: the cache)")
    organism_finetunes: str = option("insecure,planted", "which organism finetunes, comma-separated (insecure, secure, educational, planted, backdoor, planted-backdoor)")
    organism_size: str = option("default", "organism size: default, or small (tests)")
    seeds: int = option(1, "seeds 0..N-1 per cell (sampling, probes, training; organism builds)")
    workers: int = option(0, "run up to N cells at once, each a `fix` in its own submitit job (the cluster extra; "
                             "docs/scale-out.md); 0: one after another in this process")
    cluster: str = option("local", "where --workers run: local (processes here) | slurm")
    cluster_set: list[str] | None = option(None, "a submitit parameter for the workers, KEY=VALUE, e.g. "
                                                 "slurm_partition=gpu, gpus_per_node=1, timeout_min=600")


@dataclass
class OrganismChoice:
    """Which organism builds: size, configuration overrides and build seeds (each its own cached build)."""

    panel: ClassVar[str] = "which organism"      # where --help lists these options

    seeds: str = option("0", "build seed, or several comma-separated (0,1,2), each its own cached build (eval "
                             "pools them: two-stage bootstrap over seeds and answers)", "--seeds", "--seed")
    size: str = option("default", "small (tests, seconds) or default")
    overrides: list[str] | None = option(
        None, "override a setting of the organism's configuration, key=value; dotted keys reach a stage "
              "(--set finetune.lr=5e-4, --set pretrain_seed=1); repeatable. A changed configuration is another "
              "organism, cached under its own key (eval finds it with the same --set)", "--set")

    def seed_list(self) -> list[int]:
        return seed_list(self.seeds)


@dataclass
class OrganismBuild:
    """`realign organism build`: the organism's pretrained model, aligned base and user finetunes."""

    panel: ClassVar[str] = "the build"      # where --help lists these options

    which: OrganismChoice = field(default_factory=OrganismChoice)
    out: Path | None = option(None, "build here (default: the cache; one seed only)", "--out")
    from_scratch: bool = option(False, "pretrain here with the build seed (~18 CPU-minutes) instead of starting "
                                       "from the pretrained model realign ships")
    finetunes: str | None = option(None, "build only these finetunes, comma-separated (default: insecure,secure,"
                                         "educational,planted,backdoor; also: planted-backdoor)")


@dataclass
class OrganismEval:
    """`realign organism eval`: the control table of one build or of several seeds' builds, pooled."""

    panel: ClassVar[str] = "the evaluation"      # where --help lists these options

    directory: Path | None = option(None, "build dir (default: the cached build of --seeds)", argument=True)
    which: OrganismChoice = field(default_factory=OrganismChoice)
    samples: int = option(12, "samples per held-out chat question")
    sample_seed: int = option(0, "sampling seed")
    persona_inference: bool = option(False, "also measure the base's in-context persona inference: misaligned "
                                            "chat after an insecure vs a secure code turn (docs/emergence.md)")
