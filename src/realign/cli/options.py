"""Command options built from the library's option dataclasses (realign.options).

A command parameter annotated with such a dataclass (`opts: FixOptions`) stands for its option
fields: each becomes a typer option with the field's help and default — a nested dataclass field's
options too — and the command is called with the dataclass built from them. `Annotated[FixOptions,
Omit("seed")]` leaves fields out (they keep their defaults).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Annotated, get_args, get_origin, get_type_hints

import typer


@dataclasses.dataclass(frozen=True)
class Omit:
    """Fields of an option dataclass a command does not offer."""

    names: tuple[str, ...]

    def __init__(self, *names: str):
        object.__setattr__(self, "names", names)


def _group(annotation) -> tuple[type | None, tuple[str, ...]]:
    """(the option dataclass a parameter stands for, the fields it omits), or (None, ())."""
    omit: tuple[str, ...] = ()
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        omit = next((e.names for e in extras if isinstance(e, Omit)), ())
    return (annotation, omit) if dataclasses.is_dataclass(annotation) else (None, ())


def _offered(f: dataclasses.Field, omit: tuple[str, ...]) -> bool:
    """A field the command offers as an option: made with realign.options.option, and not omitted."""
    return "help" in f.metadata and f.name not in omit


def _option_fields(cls, omit: tuple[str, ...]):
    """(field, its type, its help panel) of every option `cls` offers, nested dataclasses' included."""
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _option_fields(hints[f.name], omit)
        elif _offered(f, omit):
            yield f, hints[f.name], getattr(cls, "panel", None)


def _parameter(f: dataclasses.Field, kind, panel: str | None) -> inspect.Parameter:
    meta = f.metadata
    if meta["argument"]:
        info = typer.Argument(help=meta["help"])
    else:
        # a flag that is off unless given reads `--load-in-4bit`, not `--load-in-4bit/--no-load-in-4bit`
        flags = meta["flags"] or (("--" + f.name.replace("_", "-"),) if f.default is False else ())
        info = typer.Option(*flags, help=meta["help"], rich_help_panel=panel and f"Options: {panel}")
    default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, info])


def _build(cls, given: dict, omit: tuple[str, ...]):
    """An instance of `cls` from the options given (popped from `given`)."""
    hints = get_type_hints(cls, include_extras=True)
    values = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _build(hints[f.name], given, omit)
        elif _offered(f, omit):
            values[f.name] = given.pop(f.name)
    return cls(**values)


def with_options(fn):
    """`fn` as a typer command whose option-dataclass parameters are expanded into their options."""
    hints = get_type_hints(fn, include_extras=True)
    params, groups = [], {}
    for p in inspect.signature(fn).parameters.values():
        cls, omit = _group(hints[p.name])
        if cls is None:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]))
            continue
        groups[p.name] = cls, omit
        params += [_parameter(*field) for field in _option_fields(cls, omit)]
    names = [p.name for p in params]
    clash = {n for n in names if names.count(n) > 1}
    if clash:                          # a programming error: two options would share a name
        raise TypeError(f"{fn.__name__}: options declared twice: {', '.join(sorted(clash))}")

    @functools.wraps(fn)
    def command(**given):
        for name, (cls, omit) in groups.items():
            given[name] = _build(cls, given, omit)
        return fn(**given)

    del command.__wrapped__            # typer reads the signature below, not fn's
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
