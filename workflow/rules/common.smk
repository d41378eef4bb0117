# Config validation and the grid, computed once when the workflow is parsed. Only functions
# live here; the rules are in the other files.

import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from fpt_core import grid as fpt_grid
from fpt_core.cell import ConfigError
from fpt_core.configfile import load_strict

SCHEMA = Path(workflow.current_basedir) / ".." / "schemas" / "config.schema.yaml"

try:
    # YAML keeps the last of two equal keys (two ablations of one name would become one), so
    # the files are read again strictly. Then the schema, once, by our own pass (jsonschema's
    # best match, in one line that names the key and the allowed values, where
    # snakemake.utils.validate prints the whole schema). Then the cells themselves.
    for path in workflow.configfiles:
        if os.path.isfile(path):
            load_strict(path)
    fpt_grid.check_config(config, SCHEMA)
    GRID = fpt_grid.build(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

STUDY = config.get("study", "default")
RESULTS = f"results/{STUDY}"  # this study's tables; cells are shared under results/cells
FIGURES_DIR = f"figures/{STUDY}"
TRAIN = config.get("train") or {}
DATA_DIR = fpt_grid.run_settings(config)["data_dir"]
RUN_ARGS = fpt_grid.run_args(config)
FIGURES = config.get("figures") or {}
ATTENTION = config.get("attention") or {}
CELLS_DIR = "results/cells"
DATA_TASKS = fpt_grid.data_tasks(GRID, config)
# --config partial=true arrives as a string
PARTIAL = str(config.get("partial", False)).lower() == "true"


def cell_dir(cell_id):
    return f"{CELLS_DIR}/{cell_id}"


def is_finished(cell_id):
    return os.path.exists(f"{cell_dir(cell_id)}/summary.parquet")


def setup_inputs(cell):
    """What a cell needs before it can train: prepared data and backbone weights."""
    needs = {}
    if cell.task in DATA_TASKS:
        needs["data"] = f"{DATA_DIR}/.prepared/{cell.task}.done"
    name = GRID.pretrained_backbone(cell)
    if name is not None:
        needs["backbone"] = GRID.pretrained_dir(name)
    elif needs_weights(cell):
        needs["backbone"] = f"backbones/.prepared/{cell.backbone}.done"
    return needs


def train_inputs(wildcards):
    # A finished cell needs nothing: its results are keyed by the hash of its config, so they
    # stay valid however old they are. Without this, a fresh clone (no data/, no backbones/)
    # would prepare data and pretrain backbones, and every cell downstream of them would rerun.
    # To retrain a finished cell, delete its directory.
    if is_finished(wildcards.cell):
        return {}
    return setup_inputs(GRID.cells[wildcards.cell])


def pretrain_inputs(wildcards):
    if os.path.exists(f"results/pretrain/{wildcards.pretrain}/model.pt"):
        return {}
    return setup_inputs(GRID.pretrain_by_id(wildcards.pretrain)[1])


def pretrain_ids():
    return [cell.id for cell in GRID.pretrain.values()]


def needs_weights(cell):
    """Registered backbones whose pretrained weights a cell loads (random init needs none)."""
    return (cell.init != "random" and GRID.pretrained_backbone(cell) is None
            and "/" not in cell.backbone and not os.path.isdir(cell.backbone))


def prepared_backbones():
    cells = [*GRID.cells.values(), *GRID.pretrain.values()]
    return sorted({cell.backbone for cell in cells if needs_weights(cell)})


def aggregate_cells():
    """Cells the aggregate waits for: all of them, or with `partial: true` the finished ones."""
    if PARTIAL:
        return [c for c in GRID.cells if is_finished(c)]
    return list(GRID.cells)


def figure_targets():
    targets = []
    for name in GRID.ablations:
        targets += [f"{FIGURES_DIR}/{name}.png", f"{FIGURES_DIR}/{name}.md"]
    targets += [f"{FIGURES_DIR}/attention-{task}.png" for task in attention_tasks()]
    return targets


def ablation_setting(name, key, default=None):
    return (GRID.ablations[name] or {}).get(key, default)


def attention_tasks():
    """Tasks with an attention figure: those asked for whose chosen cell is in the grid (and,
    for a partial table, has finished or already has its maps)."""
    tasks = [t for t in ATTENTION.get("tasks", []) if attention_cell(t) is not None]
    if PARTIAL:
        tasks = [t for t in tasks if is_finished(attention_cell(t))
                 or os.path.exists(f"{RESULTS}/attention/{t}.parquet")]
    return tasks


def attention_cell(task):
    ablation, label = ATTENTION.get("ablation"), ATTENTION.get("label")
    seed = ATTENTION.get("seed", 0)
    for member in GRID.members:
        cell = GRID.cells[member.cell_id]
        if (member.ablation, member.label, cell.task, cell.seed) == (ablation, label, task, seed):
            return member.cell_id
    return None


def reported_path():
    """The paper's numbers; figures say so when the file is absent."""
    path = FIGURES.get("reported", "paper/reported.csv")
    return path if os.path.isfile(path) else None


def regex_of(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"
