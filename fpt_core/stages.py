"""The stages a study draws from its cells, and what names them: the attention maps of a cell,
the CKA tables of its `cka:` block, the study's description (its members and figure settings,
named by their hash) and its figures; and the checks of what the config names outside its
ablations. A mixin of Study (fpt_core/study.py), which holds the config, the grid and the paths.

Every derived table is addressed by what it is made from, so studies that ask for the same one
share it, and a changed config is a missing file that Snakemake makes.
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from fpt_core import grid as grids
from fpt_core import schema, smoke
from fpt_core.cell import FIELDS
from fpt_core.cka_stage import DEFAULT_EXAMPLES, DEFAULT_TITLE, cka_models
from fpt_core.errors import ConfigError
from fpt_core.tasks import TASKS, data_options

ATTENTION_EXAMPLES = 1


class Stages:
    def check_references(self, files=()) -> None:
        """Tasks, rows and data options the config names outside its ablations: each refused in
        one line naming the key as the user wrote it, before any job."""
        def refuse(path: list, message: str) -> None:
            where = schema.line_of(path, files)
            raise ConfigError(f"{where + ': ' if where else ''}config {schema.dotted(path)}: {message}")

        for block in ("attention", "cka"):
            for i, task in enumerate((self.config.get(block) or {}).get("tasks", [])):
                if task not in TASKS:
                    refuse([block, "tasks", i], f"unknown value {task!r}; allowed: {', '.join(TASKS)}")
        attention = self.config.get("attention") or {}
        found = self.attention_cells()
        for task in attention.get("tasks", []):
            if task not in found:
                refuse(["attention"], _no_member(attention, task))
        trained = (self.config.get("cka") or {}).get("trained")
        for task in (self.config.get("cka") or {}).get("tasks", []) if trained else ():
            if self.cka_trained(task) is None:
                refuse(["cka", "trained"], _no_member(trained, task))
        for name, spec in self.grid.ablations.items():
            over = grids.selected_field(spec)
            if over is None:
                continue
            if (spec or {}).get("figure", "bars") != "bars":
                refuse(["ablations", name, "select"], "picks one value per row, which only the bars "
                       "figure draws; allowed: figure: bars (the default) with select")
            sweepable = [f for f in FIELDS if f not in ("task", "seed")]
            if over not in sweepable:
                refuse(["ablations", name, "select", "over"],
                       f"unknown value {over!r}; allowed: {', '.join(sweepable)}")
            for m in self.grid.members:
                if m.ablation == name and self.grid.cells[m.cell_id].val_size is None:
                    refuse(["ablations", name, "select"], f"selects on the validation split, but "
                           f"row {m.label!r} on {m.task} has none; set val_size for its cells")
        for task, options in (self.config.get("data") or {}).items():
            if task not in TASKS:
                refuse(["data", task], f"unknown task; allowed: {', '.join(TASKS)}")
            allowed = data_options(task)
            for key in options or {}:
                if allowed is not None and key not in allowed:
                    refuse(["data", task, key], f"unknown option of {task} data; allowed: "
                                                f"{', '.join(allowed) or 'none'}")

    # ------------------------------------------------------------ derived tables

    def attention_cells(self) -> dict[str, str]:
        """Task -> the cell whose attention maps the study draws (config `attention:`)."""
        spec = self.config.get("attention") or {}
        want = (spec.get("ablation"), spec.get("label"), spec.get("seed", 0))
        found = {}
        for task in spec.get("tasks", []):
            for m in self.grid.members:
                if (m.ablation, m.label, m.seed) == want and m.task == task:
                    found[task] = m.cell_id
                    break
        return found

    def attention_examples(self) -> int:
        return int((self.config.get("attention") or {}).get("examples", ATTENTION_EXAMPLES))

    def attention_table(self, cell_id: str) -> str:
        return f"{self.cell_dir(cell_id)}/attention-{self.attention_examples()}.parquet"

    @staticmethod
    def attention_inputs(cell_dir: str, examples: str) -> dict[str, str]:
        """The trained weights, until the maps are drawn: then nothing (a fresh clone has the
        committed maps and no model.pt, which would otherwise retrain the cell)."""
        done = Path(f"{cell_dir}/attention-{examples}.parquet").exists()
        return {} if done else {"model": f"{cell_dir}/model.pt"}

    @staticmethod
    def attention_log(cell_dir: str = "{cell_dir}", examples: int | str = "{examples}") -> str:
        """The attention job's log; called without arguments, the rule's pattern."""
        return f"logs/attention/{cell_dir}-{examples}.log"

    @cached_property
    def _cka_models(self) -> dict[str, dict]:
        adjust = smoke.rewriter(self.tiny_dir)
        return {task: cka_models(self.config, self.grid, task, adjust=adjust)
                for task in (self.config.get("cka") or {}).get("tasks", [])}

    def cka_models(self) -> dict[str, dict]:
        """Task -> the untrained models `cka.backbones` names, by name."""
        return self._cka_models

    def cka_trained(self, task: str) -> str | None:
        """The trained cell of the before/after comparison on `task` (config `cka.trained`)."""
        trained = (self.config.get("cka") or {}).get("trained")
        if not trained:
            return None
        want = (trained.get("ablation"), trained.get("label"), task, trained.get("seed", 0))
        return next((m.cell_id for m in self.grid.members
                     if (m.ablation, m.label, m.task, m.seed) == want), None)

    def cka_job(self, task: str) -> dict:
        """What the CKA table of `task` is computed from; its hash names the table."""
        spec = self.config.get("cka") or {}
        return {"task": task,
                "models": {name: cell.to_dict() for name, cell in self.cka_models()[task].items()},
                "trained": self.cka_trained(task),
                "examples": int(spec.get("examples", DEFAULT_EXAMPLES)),
                "pool": spec.get("pool", "mean")}

    def cka_trained_model(self, task: str) -> str | None:
        trained = self.cka_trained(task)
        return None if trained is None else self.model(trained)

    def cka_title(self) -> str:
        return (self.config.get("cka") or {}).get("title", DEFAULT_TITLE)

    def cka_digest(self, task: str) -> str:
        job = self.cka_job(task)
        return _digest({**job, "models": {n: c.id for n, c in self.cka_models()[task].items()}})

    def cka_table(self, task: str = "{task}", digest: str | None = None) -> str:
        """The CKA table of `task`; called without arguments, the rule's pattern."""
        digest = digest or (self.cka_digest(task) if task != "{task}" else "{digest}")
        return f"{self.cka_dir}/{task}-{digest}.parquet"

    def cka_log(self, task: str = "{task}", digest: str | None = None) -> str:
        digest = digest or (self.cka_digest(task) if task != "{task}" else "{digest}")
        return f"{self.logs_dir}/cka-{task}-{digest}.log"

    def cka_inputs(self, task: str) -> list[str]:
        """What a task's CKA table is computed from. Like a finished cell, a computed table needs
        nothing: on a fresh clone (no backbones/, no model.pt) it would otherwise pretrain and
        retrain them. A changed comparison is another table (its name hashes it)."""
        if Path(self.cka_table(task)).exists():
            return []
        needs = []
        for cell in self.cka_models()[task].values():
            needs += self.setup_inputs(cell)
        trained = self.cka_trained_model(task)
        return sorted(set(needs + ([trained] if trained else [])))

    # ------------------------------------------------------------ what the figures show

    def ablation_settings(self) -> dict[str, dict]:
        """Per ablation, what its figure needs beside the aggregate."""
        out = {}
        for name, spec in self.grid.ablations.items():
            spec = spec or {}
            out[name] = {"kind": spec.get("figure", "bars"), "title": spec.get("title", name),
                         "thresholds": spec.get("thresholds", {}),
                         "paper_notes": spec.get("paper_notes", {}),
                         "reference": spec.get("reference"),
                         "select": spec.get("select")}
        return out

    def figures_settings(self) -> dict:
        figures = self.config.get("figures") or {}
        reported = figures.get("reported", "paper/reported.csv")
        return {"metric": figures.get("metric", "final_test_acc"),
                "reported": reported if Path(reported).is_file() else None}

    @property
    def partial(self) -> bool:
        return str(self.config.get("partial", False)).lower() == "true"

    def aggregated_cells(self) -> list[str]:
        """Cells the aggregate reads: all, or with `partial: true` those that have finished."""
        cells = list(self.grid.cells)
        return [c for c in cells if self.is_finished(c)] if self.partial else cells

    def description(self) -> dict:
        """Everything the aggregate and the figures are drawn from beside the cells' results: a
        changed ablation, row, title, threshold or derived table changes it, and so its hash."""
        return {
            "study": self.name, "members": self.grid.membership(), "partial": self.partial,
            "ablations": self.ablation_settings(), **self.figures_settings(),
            "attention": {t: self.attention_table(c) for t, c in self.attention_cells().items()},
            "cka": {t: self.cka_table(t) for t in self.cka_models()},
        }

    @cached_property
    def description_file(self) -> str:
        return f"{self.results_dir}/study-{_digest(self.description())}.json"

    def figure_files(self) -> list[str]:
        """Every figure and table the study draws (`snakemake figures` redraws them)."""
        out = []
        for name in [*self.grid.ablations, "compute"]:
            out += [f"{self.figures_dir}/{name}.{ext}" for ext in ("png", "md", "tex")]
        out.append(f"{self.figures_dir}/stopping.md")
        out += [f"{self.figures_dir}/attention-{task}.png" for task in self.attention_cells()]
        if self.cka_models():
            out += [f"{self.figures_dir}/cka.png", f"{self.figures_dir}/cka.md"]
        return out



def _no_member(spec: dict, task: str) -> str:
    return (f"no cell of ablation {spec.get('ablation')!r}, row {spec.get('label')!r}, seed "
            f"{spec.get('seed', 0)} on {task}; name an ablation, row and seed of the grid that "
            f"train {task}")


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]
