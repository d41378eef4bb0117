"""A study: what one config asks for, loaded once and the same way by every command.

The Snakefile, `fpt plan`, `fpt status`, `fpt calibrate`, the CKA stage and the smoke run get
their cells, packs, paths and job resources from `Study.load`, so every command names the same
cell ids for the same config on the same machine. Loading a config:

1. strict YAML: a slip or a duplicate key is one line with its line number (configfile.py);
2. the schema: one line naming the key as the user wrote it, with its line (schema.py);
3. `smoke: true` makes it the study `<name>-smoke`: tiny stand-in backbones, data fixtures in the
   real formats, a few steps per cell, everything under results/<name>-smoke/ (smoke.py);
4. bf16 refused before any job where the jobs' device does not compute it natively, or with
   `train: precision_fallback` the fp32 cell instead (hardware.py);
5. the grid: every ablation's cells, deduplicated by id (grid.py).

What a study writes is addressed by content wherever it can be: a cell's directory by the cell's
id, attention maps by their cell, a CKA table by the hash of what it compares, and the study's
own description (`results/<study>/study-<hash>.json`, its members and figure settings) by its
hash, so that a changed config is a missing file and Snakemake reruns exactly what it changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpt_core import grid as grids
from fpt_core import hardware, pack, schema, smoke
from fpt_core.backbones.registry import BACKBONES
from fpt_core.calibrate import Calibration
from fpt_core.configfile import load_strict
from fpt_core.errors import ConfigError
from fpt_core.flops import cell_work
from fpt_core.plan import StatedRate, at_floor, convergence_steps, estimate, runtime_minutes_for
from fpt_core.results import MODEL, SUMMARY
from fpt_core.run import RUN_FIELDS, Resources, Run
from fpt_core.stages import Stages
from fpt_core.tasks import data_files

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CONFIG = "config/config.yaml"
CELLS = "results/cells"  # shared by every study: a cell is its id
PRETRAIN = "results/pretrain"
CKA = "results/cka"
OWN_BLOCKS = ("ablations", "attention", "cka")  # what a config that extends another names itself


@dataclass
class Study(Stages):
    name: str
    config: dict
    grid: grids.Grid
    resources: Resources
    run: Run  # how every cell of the study runs (config `train:`)
    root: str = "results"  # where the study's cells live: results/, or results/<name> when smoke
    tiny_dir: str | None = None  # a smoke study's stand-in backbones

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path | None = None, *, smoke_run: bool = False,
             device=None) -> "Study":
        """The study of a config file (strict YAML, then as from_config)."""
        path = Path(path or DEFAULT_CONFIG)
        if not path.is_file():
            raise ConfigError(f"configfile: {path} does not exist")
        return cls.from_config(load_strict(path), files=[path], smoke_run=smoke_run, device=device)

    @classmethod
    def from_config(cls, config: dict, *, files=(), smoke_run: bool | None = None,
                    device=None) -> "Study":
        """Check `config` (its schema errors name the key and, from `files`, the line), then
        build its grid. `smoke_run` None reads the config's own `smoke:`; `device` is where the
        jobs run, detected from `train: device` when None."""
        for path in files:  # YAML keeps the last of two equal keys: two ablations would be one
            if Path(path).is_file():
                load_strict(path)
        config = extended(config, files)
        schema.check(config, files)
        if smoke_run is None:
            smoke_run = str(config.get("smoke", False)).lower() == "true"
        tiny_dir = None
        if smoke_run:
            config, tiny_dir = smoke.smoke_config(config)
        train = config.get("train") or {}
        run = Run(**{k: v for k, v in train.items() if k in RUN_FIELDS})
        adjust = smoke.rewriter(tiny_dir)
        resources = Resources.of(train)
        where = hardware.pipeline_device(run.device) if device is None else device

        def resolve(values: dict) -> dict:
            values = hardware.fall_back(values, where, run.precision_fallback, resources.gpu)
            return adjust(values) if adjust else values

        try:
            built = grids.build(config, adjust=resolve)
        except ConfigError as error:  # it names the key as written; add its line where it has one
            key = str(error).split(":")[0].split(" (")[0]
            where = schema.line_of(key.split("."), files)
            raise ConfigError(f"{where}: {error}" if where else str(error)) from None
        built.pretrain = {n: c for n, c in built.pretrain.items() if _uses(config, built, n)}
        name = str(config.get("study", "default"))
        study = cls(name=name, config=config, grid=built, resources=resources, run=run,
                    root=f"results/{name}" if smoke_run else "results", tiny_dir=tiny_dir)
        study.check_references(files)
        return study

    # ------------------------------------------------------------ paths

    @property
    def smoke(self) -> bool:
        return self.root != "results"

    @property
    def results_dir(self) -> str:
        return f"results/{self.name}"

    @property
    def figures_dir(self) -> str:
        return f"figures/{self.name}"

    @property
    def cells_dir(self) -> str:
        return f"{self.root}/cells" if self.smoke else CELLS

    @property
    def pretrain_dir(self) -> str:
        return f"{self.root}/pretrain" if self.smoke else PRETRAIN

    @property
    def cka_dir(self) -> str:
        return f"{self.root}/cka" if self.smoke else CKA

    @property
    def data_dir(self) -> str:
        return self.run.data_dir

    @property
    def logs_dir(self) -> str:
        return f"logs/{self.name}"

    @cached_property
    def pretrain_ids(self) -> dict[str, str]:
        """Cell id -> the pretrain entry's name."""
        return {cell.id: name for name, cell in self.grid.pretrain.items()}

    def cells(self) -> dict[str, Any]:
        """Every cell the study trains, pretraining first: id -> Cell."""
        return {**{c.id: c for c in self.grid.pretrain.values()}, **self.grid.cells}

    def cell_dir(self, cell_id: str) -> str:
        base = self.pretrain_dir if cell_id in self.pretrain_ids else self.cells_dir
        return f"{base}/{cell_id}"

    def summary(self, cell_id: str) -> str:
        return f"{self.cell_dir(cell_id)}/{SUMMARY}"

    def model(self, cell_id: str) -> str:
        return f"{self.cell_dir(cell_id)}/{MODEL}"

    def outputs(self, cell_id: str) -> list[str]:
        """The files a train job writes for a cell; the summary last, and only when whole."""
        return [f"{self.cell_dir(cell_id)}/{name}" for name in ("curve.parquet", MODEL, SUMMARY)]

    def is_finished(self, cell_id: str) -> bool:
        return Path(self.summary(cell_id)).exists()

    def train_log(self, cell_id: str) -> str:
        return f"logs/train/{cell_id}.log"

    # ------------------------------------------------------------ training jobs

    @cached_property
    def packs(self) -> dict[str, list]:
        """The unfinished cells in packs (one process and one job each): pack name -> cells.

        A pretraining is a pack of its own: the cells that load its export wait for it alone.
        Formed from unfinished cells only, so a finished cell is in no job and never trains
        again, and a pack that was stopped half-way is, next time, a smaller pack of the rest.
        """
        todo = [c for cid, c in self.cells().items() if not self.is_finished(cid)]
        pretrain = [c for c in todo if c.id in self.pretrain_ids]
        packs = {pack.pack_name([c]): [c] for c in pretrain}
        others = [c for c in todo if c.id not in self.pretrain_ids]
        size, minutes = self.resources.pack_cells, self.resources.pack_minutes
        cost = (lambda cell: self.estimated_minutes([cell])) if minutes else None
        return {**packs, **pack.make_packs(others, size, minutes, cost,
                                           together=self.resources.together)}

    def estimated_minutes(self, cells: list) -> float:
        rate = StatedRate(self.resources.gpu)
        return sum(rate.seconds(cell_work(c, self.grid), precision=c.precision, steps=c.steps)
                   for c in cells) / 60

    def convergence(self) -> dict:
        """The paper's steps to converge by task and init (its Table 6), for plans."""
        return convergence_steps(self.figures_settings()["reported"])

    def floored(self) -> frozenset[str]:
        """Cells whose paper number sits at the task's floor: a plan prices them at their budget."""
        return at_floor(self.grid, self.figures_settings()["reported"])

    def estimate(self, rate) -> pd.DataFrame:
        """`fpt plan`'s table of the study at `rate` (plan.estimate), with every lever as configured."""
        return estimate(self.grid, rate, converge=self.convergence(), floored=self.floored(),
                        together=self.resources.together, feature_cache=self.run.feature_cache)

    @cached_property
    def calibration(self) -> Calibration | None:
        """results/<study>/calibration.json (`fpt calibrate`), where it was measured on the kind
        of device the jobs run on: it then sizes every train job's runtime and mem_mb."""
        return Calibration.for_study(self)

    def runtime(self, cells: list) -> int:
        """Minutes a job that trains `cells` may run (Slurm --time): from the calibration where
        there is one, else from the config (auto: the stated rate of `gpu`)."""
        if self.calibration is not None:
            return self.calibration.runtime_minutes(
                [(c, cell_work(c, self.grid, self.run.feature_cache)) for c in cells])
        if self.resources.runtime == "auto":
            return runtime_minutes_for(cells, self.resources.gpu, self.grid)
        return int(self.resources.runtime) * len(cells)

    def mem_mb(self, cells: list) -> int:
        """Memory a job that trains `cells` asks for, MB: from the calibration where it has every
        step shape of them, else the config's `mem_mb`."""
        if self.calibration is not None:
            mb = self.calibration.mem_mb([cell_work(c, self.grid, self.run.feature_cache) for c in cells])
            if mb is not None:
                return mb
        return self.resources.mem_mb

    def gpus(self) -> int:
        if self.resources.gpus is not None:
            return self.resources.gpus
        return 1 if self.run.device.startswith("cuda") else 0

    def jobs(self, pack_name: str) -> list[dict]:
        """What a pack's process trains: each cell's values, directory, log and readable name,
        and the most cells that step together (`train: together`)."""
        return [{"values": c.to_dict(), "out": self.cell_dir(c.id), "log": self.train_log(c.id),
                 "name": self.cell_name(c.id), "together": self.resources.together}
                for c in self.packs[pack_name]]

    def cell_name(self, cell_id: str) -> str:
        """ablation/row task seed N (and the swept value, in an ablation that selects over one):
        the first place the cell has in the study."""
        if cell_id in self.pretrain_ids:
            return f"pretrain/{self.pretrain_ids[cell_id]}"
        m = next(m for m in self.grid.members if m.cell_id == cell_id)
        swept = ((self.grid.ablations[m.ablation] or {}).get("select") or {}).get("over")
        value = f" {swept} {getattr(self.grid.cells[cell_id], swept)}" if swept else ""
        return f"{m.ablation}/{m.label}{value} {m.task} seed {m.seed}"

    def pack_message(self, pack_name: str) -> str:
        cells = self.packs[pack_name]
        names = "; ".join(f"{self.cell_name(c.id)} [{c.id}]" for c in cells)
        return (f"train {len(cells)} cells ({cells[0].backbone}, {cells[0].init}, "
                f"{self.runtime(cells)} min): {names}")

    def setup_inputs(self, cell) -> list[str]:
        """What a cell needs before it trains: its prepared data and its backbone's weights."""
        needs = []
        if cell.task in self.data_tasks():
            needs.append(self.data_flag(cell.task))
        name = self.grid.pretrained_backbone(cell)
        if name is not None:
            needs.append(self.grid.pretrained_dir(name))
        elif cell.backbone in self.tiny_backbones().values():
            needs.append(cell.backbone)
        elif self.needs_weights(cell):
            needs.append(f"backbones/.prepared/{cell.backbone}.done")
        return needs

    def needs_weights(self, cell) -> bool:
        """A registry backbone whose pretrained weights the cell loads (random init needs none)."""
        return cell.init != "random" and cell.backbone in BACKBONES

    def data_tasks(self) -> dict[str, dict]:
        """Tasks whose data a job prepares, with its options (a smoke study: a fixture each)."""
        used = {c.task for c in self._all_models()}
        if self.smoke:
            return {t: {"fixture": True} for t in sorted(used) if data_files(t, self.data_dir)}
        return {t: dict(opts or {}) for t, opts in (self.config.get("data") or {}).items() if t in used}

    def data_flag(self, task: str) -> str:
        return f"{self.data_dir}/.prepared/{task}.done"

    def _all_models(self) -> list:
        """Every cell of the study and every untrained model the CKA stage builds."""
        return [*self.cells().values(), *(m for ms in self.cka_models().values() for m in ms.values())]

    def tiny_backbones(self) -> dict[str, str]:
        """A smoke study's stand-ins: registry name -> the directory a job writes it to."""
        if self.tiny_dir is None:
            return {}
        return {Path(c.backbone).name: c.backbone for c in self._all_models()
                if Path(c.backbone).parent == Path(self.tiny_dir)}

    def prepared_backbones(self) -> list[str]:
        """Registry backbones with weights to fetch or convert before their cells train."""
        cells = [c for c in self.cells().values() if not self.is_finished(c.id)]
        cells += [m for models in self.cka_models().values() for m in models.values()]
        return sorted({c.backbone for c in cells if self.needs_weights(c)})

    def restore_inputs(self, cell_dir: str) -> dict[str, str]:
        """A finished cell's committed results and what it needs to train again."""
        cell = self.cells()[Path(cell_dir).name]
        needs = {f"setup_{i}": path for i, path in enumerate(self.setup_inputs(cell))}
        return {"summary": self.summary(cell.id), **needs}

    def restore_job(self, cell_dir: str) -> dict:
        cell = self.cells()[Path(cell_dir).name]
        return {"values": cell.to_dict(), "out": cell_dir, "run": self.run.to_dict()}

    def restorable(self) -> list[str]:
        """Finished cells whose model.pt is missing (not committed): a job that needs one (attention
        maps, a CKA comparison, a pretraining's export) rebuilds it by training the cell again."""
        return sorted(cid for cid in self.cells()
                      if self.is_finished(cid) and not Path(self.model(cid)).exists())


def extended(config: dict, files=()) -> dict:
    """A config that `extends: FILE` (a path relative to the config file's folder) is FILE's
    config with its own keys over it, nested blocks merged key by key, except the ablations and
    the blocks that name them (attention, cka): a study names its own."""
    base_name = config.get("extends")
    if base_name is None:
        return config
    here = Path(list(files)[-1]).parent if files else Path(".")
    base_path = here / base_name
    if not base_path.is_file():
        raise ConfigError(f"config extends: {base_name!r} is not a file (relative to {here})")
    base = extended(load_strict(base_path), [base_path])
    own = {k: v for k, v in config.items() if k != "extends"}
    return _merge({k: v for k, v in base.items() if k not in OWN_BLOCKS}, own)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _uses(config: dict, grid: grids.Grid, name: str) -> bool:
    """Whether a cell of the study or its CKA comparison loads pretraining `name`: one nothing
    loads (a config that extends another inherits them all) does not train."""
    export = grid.pretrained_dir(name)
    if any(cell.backbone == export for cell in grid.cells.values()):
        return True
    entries = ((config.get("cka") or {}).get("backbones") or {}).values()
    named = [e if isinstance(e, str) else (e or {}).get("backbone") for e in entries]
    return f"{grids.PRETRAINED_DIR}/{name}" in named
