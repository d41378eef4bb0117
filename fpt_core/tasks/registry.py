"""The registry of tasks and the options each declares.

A Task subclass decorated with `@register` is a task everywhere: a value of a cell's `task`, a
line of `fpt tasks`, a plan's split sizes, a smoke run's fixture. Its `options` are its own
settings, each a flat cell field of the same name; a cell passes a task only those it declares.
"""
from __future__ import annotations

from dataclasses import dataclass

from fpt_core.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """A setting of one task, written in a cell as a flat field of the same name."""

    allowed: tuple[str, ...]
    default: str
    help: str

    def resolve(self, name: str, value: str | None) -> str:
        """The value a task runs with: the default for None, else an allowed value."""
        if value is None:
            return self.default
        if value not in self.allowed:
            raise ConfigError(f"{name}: unknown value {value!r}; allowed: {', '.join(self.allowed)}")
        return value


TASKS: dict[str, type] = {}  # name -> Task subclass (base.py imports Option from here)


def register(cls: type) -> type:
    """Class decorator: make a Task subclass a task of cells, listings, plans and smoke runs."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered already, by {TASKS[cls.name].__qualname__}")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ConfigError(f"task: unknown value {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]


def task_options(name: str) -> dict[str, Option]:
    """The options task `name` declares, by cell field."""
    return dict(task_class(name).options)


def all_options() -> dict[str, tuple[str, ...]]:
    """Every task option by cell field, with the values some task allows for it."""
    out: dict[str, tuple[str, ...]] = {}
    for cls in TASKS.values():
        for name, option in cls.options.items():
            out[name] = tuple(dict.fromkeys(out.get(name, ()) + option.allowed))
    return out
