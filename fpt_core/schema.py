"""The config's schema, checked once for every command, with one-line messages that name the key
as the user wrote it and, where the config came from a file, its line.

The schema file is workflow/schemas/config.schema.yaml (the Snakemake workflow convention).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from fpt_core.backbones.base import GROUPS
from fpt_core.cell import TRAINABLE_ALIASES, Cell, choices
from fpt_core.errors import ConfigError
from fpt_core.run import RUN_FIELDS, Resources, Run

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def load() -> dict:
    """The schema file with what the code declares filled in: the cell and axes blocks from the
    Cell's fields, the train block from Run and Resources, the keys `exclude` may name."""
    schema = yaml.safe_load(SCHEMA.read_text())
    group = "|".join(GROUPS)
    schema["$defs"]["trainable"]["oneOf"] = [
        {"type": "array", "items": {"enum": list(GROUPS)}, "minItems": 1, "uniqueItems": True},
        {"type": "string", "pattern": f"^({'|'.join(TRAINABLE_ALIASES)}|({group})([,+]({group}))*)$"}]
    cell = {f.name: field_schema(f) for f in dataclasses.fields(Cell)}
    schema["$defs"]["cell"]["properties"] = cell
    schema["$defs"]["axes"]["properties"] = {
        name: {"type": "array", "minItems": 1, "items": {"$ref": f"#/$defs/cell/properties/{name}"}}
        for name in cell}
    exclude = schema["$defs"]["ablation"]["properties"]["exclude"]["items"]
    exclude["propertyNames"] = {"enum": ["label", *cell]}
    train = [*dataclasses.fields(Run), *dataclasses.fields(Resources)]
    schema["properties"]["train"]["properties"] = {f.name: field_schema(f) for f in train}
    return schema


def field_schema(f: dataclasses.Field) -> dict:
    """A field's JSON schema from its declaration: type, allowed values, bounds, help."""
    meta = f.metadata
    if meta.get("schema"):
        return {**meta["schema"], "description": meta["help"]}
    if f.name == "trainable":
        return {"$ref": "#/$defs/trainable", "description": meta["help"]}
    types = [part.strip() for part in f.type.split("|")]
    optional = "None" in types
    base = types[0]
    allowed = list(choices(f))
    if base.startswith("tuple"):
        items = {"enum": allowed} if allowed else {"type": "string"}
        return {"type": "array", "items": items, "description": meta["help"]}
    out: dict = {"description": meta["help"]}
    if allowed:
        out["enum"] = allowed + ([None] if optional else [])
    else:
        out["type"] = [JSON_TYPES[base], "null"] if optional else JSON_TYPES[base]
    for key, bound, is_open in (("Minimum", meta["low"], meta["open_low"]),
                                ("Maximum", meta["high"], meta["open_high"])):
        if bound is not None:
            out[f"exclusive{key}" if is_open else key.lower()] = bound
    return out


def check(config: dict, files: Iterable[str | Path] = ()) -> None:
    """Validate `config`; raise a one-line ConfigError naming the key (and its line in `files`)."""
    validator = jsonschema.Draft202012Validator(load())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    path, message = explain(error, config)
    where = line_of(path, files)
    raise ConfigError(f"{where + ': ' if where else ''}config {dotted(path) or '(top level)'}: {message}")


def explain(error, config: dict) -> tuple[list, str]:
    """The key path the message is about and the message, for the user's own words."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            path.append(extra[0])
        misplaced = _misplaced_ablation(path, config)
        if misplaced:
            return path[:2], misplaced
        hint = " (set it in the train: block)" if extra and extra[0] in RUN_FIELDS else ""
        return path, f"unknown key{hint}; allowed: {', '.join(allowed)}"
    if error.validator == "enum" and path[-2:] == ["select", "by"]:
        return path, (f"selecting on {error.instance!r} would report the accuracy of the split the "
                      "choice was made on, an optimistic estimate; allowed: val (the cells' "
                      "val_size split; their test accuracy is then reported)")
    if error.validator == "enum":
        return path, f"unknown value {error.instance!r}; allowed: {', '.join(map(str, error.validator_value))}"
    if "trainable" in map(str, path) and error.validator in ("oneOf", "anyOf", "pattern"):
        return path, (f"{error.instance!r} is not a list of groups; allowed: {', '.join(GROUPS)} "
                      f"(a list, or joined by , or +) or {', '.join(TRAINABLE_ALIASES)}")
    if error.validator == "pattern":
        return path, (f"{error.instance!r} is not a valid name; allowed: lowercase letters, digits "
                      "and + _ . - (not first)")
    return path, error.message.replace("\n", " ")


def _misplaced_ablation(path: list, config: dict) -> str | None:
    """An ablation named like an ablation's key (`axes:` out-dented under `ablations:`) is a block
    that lost its indentation: say so instead of calling its keys unknown."""
    if len(path) < 2 or path[0] != "ablations" or path[1] not in load()["$defs"]["ablation"]["properties"]:
        return None
    names = list((config.get("ablations") or {}))
    before = names[names.index(path[1]) - 1] if names.index(path[1]) > 0 else None
    hint = f" (of ablation {before!r}, above it)" if before else ""
    return (f"{path[1]!r} is a key of an ablation, not an ablation's name: indent it under its "
            f"ablation{hint}")


def dotted(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(path: list, files: Iterable[str | Path]) -> str | None:
    """`FILE, line N` of the deepest node of `path` found in the last file that has it."""
    found = None
    for file in files:
        try:
            root = yaml.compose(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        line = _deepest_line(root, path)
        if line is not None:
            found = f"{file}, line {line}"
    return found


def _deepest_line(node: Any, path: list) -> int | None:
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
