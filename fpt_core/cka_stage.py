"""The representation comparison of a study (config `cka:`): which models, on which inputs.

For each task, every entry of `cka.backbones` is built as an untrained FPT of that task (the
config's defaults and per-task settings, then the entry, one seed for all) and given the first
entry's input layer, so every modality's blocks receive the same token embeddings of the same
held-out examples: only the positions, layer norms and blocks differ. A trained cell
(`cka.trained`: an ablation's row and seed) adds a second comparison, the same FPT before and
after its input, positions and layer norms were trained.

The result is one table, a row per (task, comparison, model_a, model_b, block_a, block_b).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from fpt_core.cell import Cell, make_cell
from fpt_core.cka import block_states, cka_table
from fpt_core.errors import ConfigError
from fpt_core.grid import PRETRAINED_DIR, Grid, resolve
from fpt_core.model import build_model
from fpt_core.tasks import make_spec, make_task
from fpt_core.train import load_trained

COLUMNS = ["task", "comparison", "model_a", "model_b", "block_a", "block_b", "cka",
           "examples", "width"]
BEFORE, AFTER = "fpt before training", "fpt after training"
DEFAULT_EXAMPLES = 1000  # well above MiniLM's width 384: independent features then score ~0.2
DEFAULT_TITLE = ("Representations: linear CKA of the frozen blocks across pretraining modalities, "
                 "and before vs after training")


def cka_models(config: dict, grid: Grid, task: str,
               adjust: Callable[[dict], dict] | None = None) -> dict[str, Cell]:
    """The untrained models `cka.backbones` names, resolved for `task`, by name in order."""
    spec = config.get("cka") or {}
    seed = spec.get("seed", 0)
    models = {}
    for name, entry in (spec.get("backbones") or {}).items():
        where = f"cka.backbones.{name}"
        entry = {"backbone": entry} if isinstance(entry, str) else dict(entry or {})
        values, _ = resolve(config, [(where, {**entry, "task": task, "seed": seed})])
        values["backbone"] = _pipeline_backbone(values.get("backbone"), grid, where)
        try:
            models[name] = make_cell(adjust(values) if adjust else values)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return models


def _pipeline_backbone(backbone: Any, grid: Grid, where: str) -> Any:
    """backbones/<name> of a `pretrain:` entry becomes the directory its export writes."""
    parts = Path(str(backbone)).parts if backbone is not None else ()
    if len(parts) != 2 or parts[0] != PRETRAINED_DIR:
        return backbone
    if parts[1] not in grid.pretrain:
        known = ", ".join(f"{PRETRAINED_DIR}/{n}" for n in grid.pretrain) or "none configured"
        raise ConfigError(f"{where}: {backbone!r} is not a pipeline-pretrained backbone; "
                          f"allowed: {known}")
    return grid.pretrained_dir(parts[1])


# ---------------------------------------------------------------- computing the table


def held_out_inputs(cell: Cell, examples: int) -> torch.Tensor:
    """Model inputs of the first `examples` held-out examples of the cell's task."""
    task = make_task(make_cell({**cell.to_dict(), "eval_size": examples}))
    return torch.cat([x for x, _ in task.eval_batches(256)])[:examples]


def built_models(cells: dict[str, Cell]) -> dict[str, torch.nn.Module]:
    """Each cell's untrained FPT, every one with the first one's input layer where shapes allow,
    so that differences between their states come from the backbones alone."""
    models = {name: build_model(cell, make_spec(cell)) for name, cell in cells.items()}
    if not models:
        return models
    shared = next(iter(models.values())).input_layer.state_dict()
    for model in models.values():
        own = model.input_layer.state_dict()
        if all(own[k].shape == v.shape for k, v in shared.items()):
            model.input_layer.load_state_dict(shared)
    return models


def compare(models: dict[str, torch.nn.Module], x: torch.Tensor, task: str, comparison: str,
            pool: str) -> pd.DataFrame:
    """The CKA table of `models` on inputs x, labelled with the task and the comparison."""
    states = {name: block_states(model, x, pool=pool) for name, model in models.items()}
    table = cka_table(states)
    width = {name: s[-1].shape[1] for name, s in states.items()}
    return table.assign(task=task, comparison=comparison, examples=len(x),
                        width=table["model_a"].map(width))[COLUMNS]


def before_and_after(model_path: str | Path) -> tuple[Cell, dict[str, torch.nn.Module]]:
    """A finished cell's FPT as initialised (its seed rebuilds the same init) and as trained."""
    cell, after, _ = load_trained(model_path)
    return cell, {BEFORE: build_model(cell, make_spec(cell)), AFTER: after}


def task_table(cells: dict[str, Cell], examples: int, pool: str = "mean",
               trained_model: str | Path | None = None) -> pd.DataFrame:
    """Both comparisons on one task: the modalities, and before vs after training if given."""
    parts = []
    if cells:
        first = next(iter(cells.values()))
        x = held_out_inputs(first, examples)
        parts.append(compare(built_models(cells), x, first.task, "modality", pool))
    if trained_model is not None:
        cell, pair = before_and_after(trained_model)
        parts.append(compare(pair, held_out_inputs(cell, examples), cell.task, "training", pool))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts, ignore_index=True)
