"""Recipes: "freeze+dpo" on the command line, or YAML files (recipes/*.yaml), with overrides.

A recipe is data: an ordered list of steps, each a repair name and its parameters.

    # recipes/freeze+dpo.yaml
    description: lock the layers that carry the misalignment, then a short realignment DPO
    steps:
      - freeze: {k: auto}
      - dpo: {steps: 60}

`realign fix … --recipe freeze+dpo --set dpo.steps=100` overrides a parameter of the step of
that name (`--set 2.alpha=0.3` addresses the second step by position).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RealignError

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass
class Step:
    name: str
    params: object  # the repair's Params dataclass instance


@dataclass
class Recipe:
    name: str
    steps: list[Step]
    description: str = ""
    source: str | None = None
    overrides: list[str] = field(default_factory=list)

    def resolved(self) -> list[dict]:
        return [{"step": s.name, "params": dataclasses.asdict(s.params)} for s in self.steps]


def available_recipes() -> dict[str, str]:
    """name -> one-line description of every bundled recipe."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        try:
            out[path.stem] = str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        except yaml.YAMLError:
            out[path.stem] = "(malformed)"
    return out


def _coerce(value, field_and_type: tuple, where: str):
    """Cast a CLI/YAML value to the field's declared type (float, int, bool, str, or unions)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    fld, hint = field_and_type
    default = fld.default if fld.default is not dataclasses.MISSING else None
    kinds = {type(default)} if default is not None else set()
    if hint is not None:
        kinds |= {a for a in typing.get_args(hint)} or {hint}
    if value is None or type(value) in kinds or not kinds:
        return value
    for kind in (bool, int, float):
        if kind in kinds:
            try:
                if kind is bool:
                    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
                        return value.lower() in ("true", "yes", "on")
                    continue
                if kind is int and isinstance(value, float) and not value.is_integer():
                    continue
                return kind(value)
            except (TypeError, ValueError):
                continue
    if str in kinds:
        return str(value)
    raise RealignError(f"{where}: {value!r} is not a valid value ({fld.type})")


def _fields(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    """name -> (field, its resolved type): annotations are strings under `from __future__`."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name)) for f in dataclasses.fields(cls)}


def _make_step(name: str, params: dict, where: str) -> Step:
    from .repairs import load_all

    repairs = load_all()
    if name not in repairs:
        raise RealignError(f"{where}: unknown step {name!r}; valid steps: {', '.join(sorted(repairs))}")
    cls = repairs[name].Params
    fields = _fields(cls)
    kw = {}
    for key, value in (params or {}).items():
        if key not in fields:
            raise RealignError(f"{where}: unknown parameter {name}.{key}; valid: "
                               f"{', '.join(sorted(fields)) or '(none)'}")
        kw[key] = _coerce(value, fields[key], f"{where}: {name}.{key}")
    step = Step(name, cls(**kw))
    _validate(step, where)
    return step


def _validate(step: Step, where: str) -> None:
    if hasattr(step.params, "validate"):
        try:
            step.params.validate()
        except ValueError as e:
            raise RealignError(f"{where}: {e}") from None


def _parse_yaml(path: Path) -> Recipe:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise RealignError(f"recipe {path} is not valid YAML{at}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise RealignError(f"recipe {path} needs a non-empty 'steps:' list")
    steps = []
    for i, entry in enumerate(data["steps"], 1):
        where = f"recipe {path.name} step {i}"
        if isinstance(entry, str):
            steps.append(_make_step(entry, {}, where))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, params), = entry.items()
            if params is not None and not isinstance(params, dict):
                raise RealignError(f"{where}: parameters of {name!r} must be a mapping")
            steps.append(_make_step(name, params or {}, where))
        else:
            raise RealignError(f"{where}: each step is a repair name or {{name: {{param: value}}}}")
    return Recipe(path.stem, steps, str(data.get("description", "")), str(path))


def load_recipe(spec: str, overrides: list[str] | None = None) -> Recipe:
    """A YAML path, a bundled recipe name, or steps joined with '+', then `step.param=value` overrides."""
    if not spec or not spec.strip():
        raise RealignError("empty recipe; give e.g. --recipe freeze+dpo")
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        if not path.exists():
            raise RealignError(f"recipe file {spec} does not exist")
        recipe = _parse_yaml(path)
    elif (RECIPE_DIR / f"{spec}.yaml").exists():
        recipe = _parse_yaml(RECIPE_DIR / f"{spec}.yaml")
    else:
        recipe = Recipe(spec, [_make_step(n.strip(), {}, f"recipe {spec!r}") for n in spec.split("+")])
    touched = {}
    for item in overrides or []:
        step = _override(recipe, item)
        touched[id(step)] = step
    # validated once, after every override: a combination (merge.method=safe_lora with
    # merge.pretrained=P) may be valid where each override alone would not be
    for step in touched.values():
        _validate(step, f"overrides {' '.join(overrides or [])!r}")
    recipe.overrides = list(overrides or [])
    return recipe


def _override(recipe: Recipe, item: str) -> Step:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise RealignError(f"override {item!r} must look like step.param=value")
    key, value = item.split("=", 1)
    target, param = key.split(".", 1)
    if target.isdigit():
        idx = int(target) - 1
        if not 0 <= idx < len(recipe.steps):
            raise RealignError(f"override {item!r}: the recipe has {len(recipe.steps)} steps")
        step = recipe.steps[idx]
    else:
        matches = [s for s in recipe.steps if s.name == target]
        if not matches:
            raise RealignError(f"override {item!r}: no step {target!r} in recipe "
                               f"({'+'.join(s.name for s in recipe.steps)})")
        step = matches[0]
    fields = _fields(type(step.params))
    if param not in fields:
        raise RealignError(f"override {item!r}: unknown parameter {step.name}.{param}; valid: "
                           f"{', '.join(sorted(fields))}")
    setattr(step.params, param, _coerce(value, fields[param], f"override {item!r}"))
    return step
