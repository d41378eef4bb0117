# Config validation and the grid, computed once when the workflow is parsed. Only functions
# live here; the rules are in the other files.

import os
import re
from functools import partial
from pathlib import Path

from snakemake.exceptions import WorkflowError

from fpt_core import grid as fpt_grid
from fpt_core import hardware as fpt_hardware
from fpt_core import pack as fpt_pack
from fpt_core import plan as fpt_plan
from fpt_core import smoke as fpt_smoke
from fpt_core.cell import ConfigError
from fpt_core.configfile import load_strict

SCHEMA = Path(workflow.current_basedir) / ".." / "schemas" / "config.schema.yaml"

# --config smoke=true arrives as a string
SMOKE = str(config.get("smoke", False)).lower() == "true"
SMOKE_BACKBONES = None

try:
    # YAML keeps the last of two equal keys (two ablations of one name would become one), so
    # the files are read again strictly. Then the schema, once, by our own pass (jsonschema's
    # best match, in one line that names the key and the allowed values, where
    # snakemake.utils.validate prints the whole schema). Then the cells themselves.
    for path in workflow.configfiles:
        if os.path.isfile(path):
            load_strict(path)
    fpt_grid.check_config(config, SCHEMA)
    if SMOKE:
        # Its own study, everything under results/<study>-smoke/: smoke cells never mix with
        # real ones (their ids differ too: tiny backbones, a few steps).
        smoke_settings, SMOKE_BACKBONES = fpt_smoke.smoke_config(config)
        config.update(smoke_settings)
        smoke_cell = partial(fpt_smoke.smoke_cell_values, backbones_dir=SMOKE_BACKBONES,
                             data_dir=config["train"]["data_dir"])
    # bf16 where the jobs' device computes it natively, else refused before any job (or, with
    # train: precision_fallback, the fp32 cell instead)
    run_device = fpt_hardware.pipeline_device(str(fpt_grid.run_settings(config)["device"]))
    allow_fallback = bool(fpt_grid.run_settings(config)["precision_fallback"])

    def adjust(values):
        values = fpt_hardware.fall_back(values, run_device, allow_fallback)
        return smoke_cell(values) if SMOKE else values

    GRID = fpt_grid.build(config, adjust=adjust)
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
CELLS_DIR = f"{RESULTS}/cells" if SMOKE else "results/cells"
PRETRAIN_DIR = f"{RESULTS}/pretrain" if SMOKE else "results/pretrain"
DATA_TASKS = fpt_smoke.fixture_tasks(GRID) if SMOKE else fpt_grid.data_tasks(GRID, config)
# --config partial=true arrives as a string
PARTIAL = str(config.get("partial", False)).lower() == "true"
GPU = TRAIN.get("gpu", "a100-80gb")
PACKS_DIR = f"{CELLS_DIR}/.packs"


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
    elif SMOKE_BACKBONES and Path(cell.backbone).parent == Path(SMOKE_BACKBONES):
        needs["backbone"] = cell.backbone
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
    if os.path.exists(f"{PRETRAIN_DIR}/{wildcards.pretrain}/model.pt"):
        return {}
    return setup_inputs(GRID.pretrain_by_id(wildcards.pretrain)[1])


def pretrain_ids():
    return [cell.id for cell in GRID.pretrain.values()]


def needs_weights(cell):
    """Registered backbones whose pretrained weights a cell loads (random init needs none)."""
    return (cell.init != "random" and GRID.pretrained_backbone(cell) is None
            and "/" not in cell.backbone and not os.path.isdir(cell.backbone))


def smoke_backbones():
    """Registry backbones that the smoke run replaces by tiny stand-ins."""
    if not SMOKE:
        return []
    cells = [*GRID.cells.values(), *GRID.pretrain.values()]
    return sorted({Path(c.backbone).name for c in cells
                   if Path(c.backbone).parent == Path(SMOKE_BACKBONES)})


def prepared_backbones():
    cells = [*GRID.cells.values(), *GRID.pretrain.values()]
    return sorted({cell.backbone for cell in cells if needs_weights(cell)})


def unfinished_packs():
    """The unfinished cells in packs of `train: pack_cells` (one process each), or none with
    pack_cells 1, where each cell is its own `train` job. Sized by estimated minutes too where
    `pack_minutes` is set."""
    size = int(TRAIN.get("pack_cells", 1))
    if size == 1:
        return {}
    todo = [cell for cell_id, cell in GRID.cells.items() if not is_finished(cell_id)]
    minutes = TRAIN.get("pack_minutes")
    rate = fpt_plan.StatedRate(GPU)
    cost = (lambda cell: rate.seconds(fpt_plan.cell_work(cell, GRID))[0] / 60) if minutes else None
    return fpt_pack.make_packs(todo, size, minutes, cost)


def pack_inputs(wildcards):
    needs = {}
    for i, cell in enumerate(PACKS[wildcards.pack]):
        needs.update({f"{key}_{i}": path for key, path in setup_inputs(cell).items()})
    return needs


def pack_jobs(pack):
    """What the pack's script trains: each cell's values (run settings included), directory,
    log and a readable name."""
    return [{"values": cell.to_dict(), "out": cell_dir(cell.id), "log": f"logs/train/{cell.id}.log",
             "name": cell_name(cell.id)} for cell in PACKS[pack]]


def cell_name(cell_id):
    """ablation/row task seed N, the first place the cell has in the grid."""
    m = next(m for m in GRID.members if m.cell_id == cell_id)
    return f"{m.ablation}/{m.label} {m.task} seed {m.seed}"


def pack_message(pack):
    cells = PACKS[pack]
    names = "; ".join(f"{cell_name(c.id)} [{c.id}]" for c in cells)
    return (f"train {len(cells)} cells ({cells[0].backbone}, {cells[0].init}, "
            f"{train_runtime(cells)} min): {names}")


def train_runtime(cells):
    runtime = TRAIN.get("runtime", 60)
    if runtime == "auto":
        return fpt_plan.runtime_minutes_for(cells, GPU, GRID)
    return int(runtime) * len(cells)


def cell_done(cell_id):
    """The file whose existence means the cell has trained: its summary, or while it is
    unfinished and packed, its pack's flag (the pack writes the cells' summaries itself)."""
    if cell_id in PACK_OF:
        return f"{PACKS_DIR}/{PACK_OF[cell_id]}.done"
    return f"{cell_dir(cell_id)}/summary.parquet"


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
    targets += [f"{FIGURES_DIR}/compute.png", f"{FIGURES_DIR}/compute.md"]
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


PACKS = unfinished_packs()  # name -> cells
PACK_OF = fpt_pack.pack_of(PACKS)  # cell id -> pack name
