"""Standard task evaluations (EleutherAI's lm-evaluation-harness) as a realign task metric.

`--task-metric lm-eval:ITEM[,ITEM…]` runs lm-eval on the model in memory — base, finetune and
repaired alike — and puts every number it reports into the task metrics as
`lm-eval:<task>/<metric>` (and `…/<metric>_stderr` where lm-eval gives one). An ITEM is

- the name of a task lm-eval ships (`hellaswag`, `mmlu`, …; these load their data from the
  Hugging Face hub, so they need the network or a filled datasets cache),
- the path of a task YAML file ending in .yaml/.yml: a local task, e.g. a `json` dataset with
  `dataset_kwargs: {data_files: …}`; relative data_files resolve against the working directory,
  exactly as `lm_eval --include_path` reads the same file,
- a setting KEY=VALUE: limit (documents per task; below 1 a fraction), num_fewshot, batch_size,
  apply_chat_template (true: documents are rendered as chat turns with the model's template).

The task conversations realign passes to every task metric are not used: lm-eval brings its data.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import random
from pathlib import Path

import yaml

from ..errors import RealignError

PREFIX = "lm-eval:"
INSTALL = "lm-eval is not installed: pip install 'realign[lm-eval]' (or pip install 'lm-eval>=0.4.13')"


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _flag(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


SETTINGS = {"limit": _number, "num_fewshot": int, "batch_size": int, "apply_chat_template": _flag}


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads an lm-eval task YAML without running it: `!function` tags are left unresolved."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_yaml(path: Path) -> dict:
    try:
        cfg = yaml.load(path.read_text(), Loader=_TagTolerantLoader)
    except yaml.YAMLError as e:
        raise RealignError(f"--task-metric: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not (cfg.get("task") or cfg.get("group")):
        raise RealignError(f"--task-metric: {path} is not an lm-eval task YAML (it names no `task:` or `group:`)")
    return cfg


def _data_files(cfg: dict) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        files = list(files.values())
    if isinstance(files, str):
        files = [files]
    out = []
    for f in files or []:
        out += f if isinstance(f, list) else [f]
    return [str(f) for f in out]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LmEvalMetric:
    """A parsed `lm-eval:` spec, callable as a realign task metric: fn(model, tokenizer, conversations)."""

    def __init__(self, spec: str):
        if importlib.util.find_spec("lm_eval") is None:
            raise RealignError(INSTALL)
        self.spec = spec
        self.tasks: list[str] = []
        self.settings: dict = {}
        files: dict[str, str] = {}        # what the eval cache keys on: the task files' contents
        for item in (x.strip() for x in spec[len(PREFIX):].split(",")):
            if not item:
                continue
            if "=" in item:
                key, value = (s.strip() for s in item.split("=", 1))
                if key not in SETTINGS:
                    raise RealignError(f"--task-metric {spec}: unknown lm-eval setting {key!r} "
                                       f"(known: {', '.join(SETTINGS)})")
                try:
                    self.settings[key] = SETTINGS[key](value)
                except ValueError:
                    raise RealignError(f"--task-metric {spec}: {key}={value} is not a valid value") from None
            elif item.endswith((".yaml", ".yml")):
                path = Path(item).expanduser()
                if not path.is_file():
                    raise RealignError(f"--task-metric {spec}: task file {path} does not exist")
                cfg = _task_yaml(path)
                files[str(path.resolve())] = _sha256(path)
                for f in _data_files(cfg):
                    if Path(f).is_file():
                        files[str(Path(f).resolve())] = _sha256(Path(f))
                self.tasks.append(str(path.resolve()))
            else:
                self.tasks.append(item)
        if not self.tasks:
            raise RealignError(f"--task-metric {spec}: name at least one lm-eval task or task YAML file")
        self.fingerprint = {"lm-eval": self.tasks, "settings": self.settings, "files": files}
        self._manager = None
        names = [t for t in self.tasks if not t.endswith((".yaml", ".yml"))]
        if names:
            known = set(self.task_manager().all_tasks)
            unknown = [n for n in names if n not in known]
            if unknown:
                raise RealignError(f"--task-metric {spec}: lm-eval has no task {unknown[0]!r} "
                                   f"(a local task: give the path of its YAML file)")

    def task_manager(self):
        """lm-eval's task index; its shipped tasks (~15k entries, seconds to scan) only when named."""
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            shipped = any(not t.endswith((".yaml", ".yml")) for t in self.tasks)
            self._manager = TaskManager(include_defaults=shipped)
        return self._manager

    def __call__(self, model, tokenizer, conversations=None) -> dict[str, float]:
        results = self.evaluate(model, tokenizer)
        metrics: dict[str, float] = {}
        for task, values in sorted(results.items()):
            for key, value in values.items():
                if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue       # alias, name, sample counts; "N/A" where lm-eval computed no stderr
                metric, filt = key.split(",", 1)
                metrics[f"{PREFIX}{task}/{metric}" + ("" if filt == "none" else f",{filt}")] = float(value)
        return metrics

    def evaluate(self, model, tokenizer) -> dict:
        """lm-eval's per-task results for the in-memory model."""
        import lm_eval
        import numpy as np
        import torch
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        # lm-eval seeds the global generators for its own reproducibility, and may give the
        # tokenizer a pad token: neither may leak into the rest of the run
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer),
                          batch_size=self.settings.get("batch_size", 8))
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=list(self.tasks), task_manager=self.task_manager(), log_samples=False,
                    limit=self.settings.get("limit"), num_fewshot=self.settings.get("num_fewshot"),
                    apply_chat_template=self.settings.get("apply_chat_template", False))
        except RealignError:
            raise
        except Exception as e:     # a harness we do not control: its failure becomes one line
            if os.environ.get("REALIGN_DEBUG"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            raise RealignError(f"lm-eval ({', '.join(self.tasks)}) failed: {type(e).__name__}: {first} "
                               f"— rerun with REALIGN_DEBUG=1 for the traceback") from None
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            model.train(was_training)
        if out is None:            # lm-eval returns nothing on the non-zero ranks of a launched run
            return {}
        return out["results"]


def is_lm_eval(spec: str) -> bool:
    return spec.startswith(PREFIX)


def write_choice_task(directory: Path, name: str, docs: list[dict]) -> Path:
    """Write a local multiple-choice lm-eval task — `name`.jsonl with one {question, choices,
    label} per line, and `name`.yaml reading it through the hub-free `json` builder — and return
    the YAML's path, ready for `--task-metric lm-eval:PATH`. Accuracy is lm-eval's `acc`."""
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = (directory / f"{name}.jsonl").resolve()
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
           "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
           "doc_to_choice": "{{choices}}", "doc_to_target": "label",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
