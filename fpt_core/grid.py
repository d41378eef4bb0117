"""The grid: ablations of the config expanded into cells, deduplicated, with their row labels.

An ablation is a small grid over shared defaults:

    defaults       every cell field not set elsewhere
    per_task       overrides for one task (steps, batch size, lengths ...)
    axes           lists of values; the ablation runs their Cartesian product (task and seed
                   usually come from the config's top-level axes)
    rows           named settings, one row label each ("fpt", "full-transformer", ...), also an
                   axis of the product; a `label` template ("{init}-{depth}-layers") names rows
                   built from axes instead
    exclude        points to drop from the product, each a set of conditions on the label and
                   cell fields (e.g. the LSTM rows on the long-sequence tasks)

A value is resolved from these layers, later ones winning: defaults, per_task[task], the
ablation's `set`, the ablation's per_task[task], the row, the axes. Two ablations that resolve to
the same cell share it: the union of cells is keyed by cell id, and every (cell, ablation, label)
is remembered as a membership so figures can group by the ablation's rows.

Expansion is pure Python (`expand`); resolution into validated cells is separate (`build`), so
that expansion can be tested on its own.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fpt_core.backbones.registry import looks_like_path
from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError

# The pipeline's own pretrained backbones: the config names one backbones/<name>; cells load it
# from backbones/<name>-<id of the pretraining cell>, so a changed pretraining changes the id of
# every cell that uses it, and nothing stale is ever reused.
PRETRAINED_DIR = "backbones"


@dataclass(frozen=True)
class Point:
    """One expanded grid point: the resolved cell values and where each value came from."""

    ablation: str
    label: str
    values: dict[str, Any]
    source: dict[str, str]  # field -> config key path that set it


@dataclass(frozen=True)
class Member:
    """One cell's membership in one ablation, under one row label."""

    cell_id: str
    ablation: str
    experiment: str
    label: str
    label_order: int
    task: str  # also in the cell's summary; here so a missing cell still has its place
    seed: int


@dataclass
class Grid:
    cells: dict[str, Any] = field(default_factory=dict)  # cell id -> Cell, in first-seen order
    members: list[Member] = field(default_factory=list)
    pretrain: dict[str, Any] = field(default_factory=dict)  # name -> Cell trained then exported
    ablations: dict[str, dict] = field(default_factory=dict)  # name -> its config block

    def membership(self) -> list[dict[str, Any]]:
        return [m.__dict__.copy() for m in self.members]

    def pretrained_dir(self, name: str) -> str:
        return f"{PRETRAINED_DIR}/{name}-{self.pretrain[name].id}"

    def pretrained_backbone(self, cell) -> str | None:
        """The name of the pipeline-pretrained backbone a cell loads, or None."""
        for name in self.pretrain:
            if Path(cell.backbone) == Path(self.pretrained_dir(name)):
                return name
        return None

    def pretrain_by_id(self, cell_id: str) -> tuple[str, Any]:
        return next((n, c) for n, c in self.pretrain.items() if c.id == cell_id)


def _layer(into: dict, source: dict, values: dict | None, path: str) -> None:
    for key, value in (values or {}).items():
        into[key] = value
        source[key] = f"{path}.{key}"


def task_of(config: dict, layers: list[tuple[str, dict | None]]) -> str | None:
    """The task a stack of layers resolves to (the last layer that sets it wins)."""
    task = (config.get("defaults") or {}).get("task")
    for _, layer in layers:
        task = (layer or {}).get("task", task)
    return task


def resolve(config: dict, layers: list[tuple[str, dict | None]]) -> tuple[dict, dict]:
    """Merge the config's defaults, its per-task overrides for the resolved task, and `layers`."""
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    _layer(values, source, config.get("defaults"), "defaults")
    task = task_of(config, layers)
    per_task = (config.get("per_task") or {}).get(task)
    _layer(values, source, per_task, f"per_task.{task}")
    for path, layer in layers:
        _layer(values, source, layer, path)
    return values, source


def default_label(axes: dict[str, list], combo: dict[str, Any], ablation: str) -> str:
    """Rows built from axes are named by the values of every axis but task and seed."""
    parts = [str(combo[k]) for k in axes if k not in ("task", "seed")]
    return "-".join(parts) if parts else ablation


def expand(config: dict) -> list[Point]:
    """Every grid point of every ablation, in config order (rows outer, then axes in order)."""
    shared_axes = config.get("axes") or {}
    points = []
    for name, spec in (config.get("ablations") or {}).items():
        spec = spec or {}
        own_axes = spec.get("axes") or {}
        axes = {**shared_axes, **own_axes}
        rows = spec.get("rows") or {None: {}}
        keys = list(axes)
        for row, row_values in rows.items():
            for combo_values in itertools.product(*(axes[k] for k in keys)):
                combo = dict(zip(keys, combo_values))
                outer = [
                    (f"ablations.{name}.set", spec.get("set")),
                    (f"ablations.{name}.rows.{row}", row_values),
                    ("axes", {k: v for k, v in combo.items() if k not in own_axes}),
                    (f"ablations.{name}.axes", {k: v for k, v in combo.items() if k in own_axes}),
                ]
                task = task_of(config, outer)
                per_task_here = (f"ablations.{name}.per_task.{task}",
                                 (spec.get("per_task") or {}).get(task))
                layers = [outer[0], per_task_here, *outer[1:]]
                values, source = resolve(config, layers)
                label = _label(name, spec, row, axes, combo, values)
                if not _excluded(spec.get("exclude"), label, values):
                    points.append(Point(name, label, values, source))
    return points


def _excluded(rules: list[dict] | None, label: str, values: dict) -> bool:
    """Whether a point matches every condition of one `exclude` entry (a value or a list)."""
    here = {**values, "label": label}
    for rule in rules or []:
        if all(here.get(k) in (v if isinstance(v, list) else [v]) for k, v in rule.items()):
            return True
    return False


def _label(name: str, spec: dict, row: str | None, axes: dict, combo: dict, values: dict) -> str:
    template = spec.get("label")
    if template is None and row is None:
        return default_label(axes, combo, name)
    if template is None:
        # a row swept over an axis is one row per value, never an average over the values,
        # except over the axis the ablation selects on: its figure picks one value per row
        selected = selected_field(spec)
        swept = [str(combo[k]) for k in axes
                 if k not in ("task", "seed", selected) and len(axes[k]) > 1]
        return "-".join([row, *swept])
    try:
        return template.format(row=row, **{k: v for k, v in values.items() if k != "row"})
    except (KeyError, IndexError) as e:
        raise ConfigError(
            f"ablations.{name}.label: {template!r} names {e}, which is not a cell field or row"
        ) from None


def _cell_or_error(values: dict, source: dict, where: str,
                   adjust: Callable[[dict], dict] | None = None):
    try:
        return make_cell(adjust(values) if adjust else values)
    except ConfigError as e:
        key, _, rest = str(e).partition(": ")
        path = source.get(key)
        if path is None:
            raise ConfigError(f"{where}: {e}") from None
        raise ConfigError(f"{path}: {rest}") from None


def build(config: dict, adjust: Callable[[dict], dict] | None = None) -> Grid:
    """Resolve every grid point into a validated cell and deduplicate by cell id.

    `adjust` rewrites each point's resolved values before they become a cell (a smoke run's
    smoke.smoke_cell_values: tiny backbones, a few steps).
    """
    grid = Grid(ablations=dict(config.get("ablations") or {}))
    for name, values in (config.get("pretrain") or {}).items():
        merged, source = resolve(config, [(f"pretrain.{name}", values)])
        grid.pretrain[name] = _cell_or_error(merged, source, f"pretrain.{name}", adjust)
    orders: dict[tuple[str, str], int] = {}
    seen: set[tuple[str, str, str]] = set()
    for point in expand(config):
        where = f"ablations.{point.ablation} (row {point.label})"
        values = {**point.values, "backbone": _backbone(point, grid)}
        cell = _cell_or_error(values, point.source, where, adjust)
        grid.cells.setdefault(cell.id, cell)
        order = orders.setdefault((point.ablation, point.label), len(
            [k for k in orders if k[0] == point.ablation]))
        key = (cell.id, point.ablation, point.label)
        if key in seen:
            continue
        seen.add(key)
        spec = grid.ablations[point.ablation] or {}
        grid.members.append(Member(
            cell_id=cell.id, ablation=point.ablation,
            experiment=spec.get("experiment", point.ablation), label=point.label,
            label_order=order, task=cell.task, seed=cell.seed,
        ))
    check_rows_differ_only_in_seed(grid)
    return grid


def selected_field(spec: dict | None) -> str | None:
    """The field an ablation sweeps and selects on per row (`select: {over: lr}`), or None."""
    return ((spec or {}).get("select") or {}).get("over")


def check_rows_differ_only_in_seed(grid: Grid) -> None:
    """A row of a figure averages its cells as seeds (or, where the ablation selects over a
    field, picks one of its values): refuse a row whose cells differ otherwise."""
    first: dict[tuple[str, str, str], dict] = {}
    for m in grid.members:
        ignored = {"seed", selected_field(grid.ablations[m.ablation])}
        values = {k: v for k, v in grid.cells[m.cell_id].to_dict().items() if k not in ignored}
        seen = first.setdefault((m.ablation, m.label, m.task), values)
        differ = [k for k in values if values[k] != seen[k]]
        if differ:
            key = differ[0]
            raise ConfigError(
                f"ablations.{m.ablation}: row {m.label!r} on {m.task} would average cells that differ "
                f"in {key} ({seen[key]!r} vs {values[key]!r}), not only in seed; name the rows by it, "
                f"e.g. label: '{{row}}-{{{key}}}'"
            )


def _backbone(point: Point, grid: Grid) -> Any:
    """backbones/<name> becomes the directory of that pretraining; any other name stays.

    A backbone under backbones/ must be one the pipeline pretrains, or nothing would make it.
    """
    backbone = point.values.get("backbone")
    parts = Path(str(backbone)).parts if backbone is not None else ()
    if len(parts) != 2 or parts[0] != PRETRAINED_DIR:
        if backbone is not None and looks_like_path(str(backbone)) and not Path(backbone).expanduser().is_dir():
            path = point.source.get("backbone", f"ablations.{point.ablation}")
            raise ConfigError(f"{path}: backbone directory {backbone} does not exist; allowed: a "
                              f"registered name (fpt backbones), org/name, an existing directory, "
                              f"or {PRETRAINED_DIR}/<name> of a pretrain: entry")
        return backbone
    if parts[1] not in grid.pretrain:
        path = point.source.get("backbone", f"ablations.{point.ablation}")
        known = ", ".join(f"{PRETRAINED_DIR}/{n}" for n in grid.pretrain) or "none configured"
        raise ConfigError(
            f"{path}: {backbone!r} is not a pipeline-pretrained backbone; "
            f"allowed: {known} (add it under pretrain:)"
        )
    return grid.pretrained_dir(parts[1])
