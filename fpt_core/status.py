"""`fpt status`: what a running grid is doing, read from its cells' directories.

Every grid member (ablation, row label, task, seed) gets one state from its cell's directory:
- done: summary.parquet is whole (diverged: whole, and the run diverged);
- running: progress.json says running and its process is alive;
- interrupted: progress.json says interrupted (a signal stopped it after a checkpoint), or says
  running but its process is gone, or there is a checkpoint and no progress file;
- failed: progress.json says failed, with the exception's message in one line;
- pending: nothing yet.
Pretraining cells (results/pretrain/<id>) appear as ablation "pretrain", row = their name.
After the cells, the stages drawn from them (attention maps, CKA tables, the aggregate and the
figures): done, pending, or failed with the last line of their log.

A process is alive when it runs on this host with that pid, or when Slurm lists its job (squeue,
asked once per call); on another host without a job id nothing can tell, and it counts as
running, its age saying how long it has been silent.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from fpt_core import results
from fpt_core.errors import ResultError

STATES = ("done", "diverged", "running", "interrupted", "failed", "pending")
COLUMNS = ("ablation", "label", "label_order", "task", "seed", "cell_id", "state", "step", "steps",
           "train_loss", "test_acc", "updated_at", "slurm_job_id", "host", "error")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive all the same
        return True
    return True


def squeue_jobs() -> set[str] | None:
    """Ids of the jobs Slurm knows (pending or running), or None where squeue is not there."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip().split("_")[0] for line in out.stdout.splitlines()} if out.returncode == 0 else None


def default_alive() -> Callable[[dict], bool | None]:
    """alive(progress) -> True, False, or None when nothing here can tell."""
    host = socket.gethostname()
    jobs: list = []  # squeue, asked once and only if needed

    def alive(progress: dict) -> bool | None:
        if progress.get("host") == host and progress.get("pid") is not None:
            return pid_alive(int(progress["pid"]))
        job = progress.get("slurm_job_id")
        if job:
            if not jobs:
                jobs.append(squeue_jobs())
            return None if jobs[0] is None else str(job).split("_")[0] in jobs[0]
        return None

    return alive


def read_progress(cell_dir: Path) -> dict | None:
    try:
        return json.loads((cell_dir / results.PROGRESS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # written atomically, so only a foreign file lands here
        return {"state": "failed", "error": f"{results.PROGRESS} unreadable: {type(e).__name__}"}


def cell_state(cell, cell_dir: Path, alive: Callable[[dict], bool | None]) -> dict:
    """The state of one cell and what its files say about its progress."""
    row = {"state": "pending", "step": None, "steps": cell.steps, "train_loss": None,
           "test_acc": None, "updated_at": None, "slurm_job_id": None, "host": None, "error": None}
    progress = read_progress(cell_dir)
    if progress is not None:
        row.update({k: progress.get(k) for k in row if k not in ("state", "steps")})
        said = progress.get("state")
        if said == "running":
            row["state"] = "interrupted" if alive(progress) is False else "running"
            row["error"] = "process gone" if row["state"] == "interrupted" else None
        elif said in ("failed", "interrupted"):
            row["state"] = said
        else:  # finished or diverged, but the summary is not whole (yet, or any more)
            row["state"] = "interrupted"
    elif (cell_dir / results.CHECKPOINT).exists():
        row["state"] = "interrupted"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = results.finished_summary(cell_dir, cell.id)
    except ResultError as e:
        return {**row, "state": "failed", "error": str(e)}
    if summary is not None:
        s = summary.iloc[0]
        row.update(state="done" if s["status"] == "finished" else "diverged",
                   step=int(s["steps_done"]), test_acc=float(s["final_test_acc"]), error=None)
    return row


def collect(study, alive=None) -> pd.DataFrame:
    """One row per member of the study: ablation, label, label_order, task, seed, cell_id, state,
    step, steps, train_loss, test_acc, updated_at, slurm_job_id, host, error. `alive(progress)`
    says whether a running cell's process lives (True, False, None: cannot tell)."""
    alive = alive or default_alive()
    grid, cells = study.grid, study.cells()
    states: dict[str, dict] = {}
    rows = []
    members = [("pretrain", name, i, c.task, c.seed, c.id)
               for i, (name, c) in enumerate(grid.pretrain.items())]
    members += [(m.ablation, m.label, m.label_order, m.task, m.seed, m.cell_id) for m in grid.members]
    for ablation, label, order, task, seed, cid in members:
        if cid not in states:
            states[cid] = cell_state(cells[cid], Path(study.cell_dir(cid)), alive)
        rows.append({"ablation": ablation, "label": label, "label_order": order, "task": task,
                     "seed": seed, "cell_id": cid, **states[cid]})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def age(updated_at: str | None, now: datetime | None = None) -> str:
    """How long ago an ISO-8601 time was: 42s, 7m, 3h, 2d."""
    if not updated_at:
        return "-"
    try:
        then = datetime.fromisoformat(str(updated_at))
    except ValueError:
        return "?"
    then = then if then.tzinfo else then.replace(tzinfo=timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _number(value, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def stages(study) -> list[tuple[str, str, str]]:
    """(stage, state, detail) of what the study draws from its cells: each attention table and
    CKA table, the aggregate, the figures. A stage is failed where its log holds a traceback
    and its output is missing."""
    found = [(f"attention {task}", study.attention_table(cell),
              study.attention_log(study.cell_dir(cell), study.attention_examples()))
             for task, cell in study.attention_cells().items()]
    found += [(f"cka {task}", study.cka_table(task), study.cka_log(task)) for task in study.cka_models()]
    found.append(("aggregate", study.description_file, f"{study.logs_dir}/aggregate.log"))
    found += [(f"figure {Path(f).name}", f, f"{study.logs_dir}/figures.log")
              for f in study.figure_files() if f.endswith(".png")]
    return [(name, *_stage_state(Path(output), Path(log))) for name, output, log in found]


def _stage_state(output: Path, log: Path) -> tuple[str, str]:
    if output.exists():
        return "done", ""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if "Traceback" in text or "Error" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return "failed", f"{last.strip()} (log {log})"
    return "pending", ""


def render(df, stage_rows=(), now: datetime | None = None) -> str:
    """Counts per ablation and row, then the running cells, then the failed ones, then the
    stages drawn from the cells: plain text."""
    if df.empty:
        return "no cells in this grid"
    rows = df.drop_duplicates(["ablation", "label"]).set_index(["ablation", "label"]).index
    counts = pd.crosstab([df["ablation"], df["label"]], df["state"])
    counts = counts.reindex(index=rows, columns=list(STATES), fill_value=0)  # config order
    counts["total"] = counts.sum(axis=1)
    counts.columns.name = None
    cells = df.drop_duplicates("cell_id")
    totals = cells["state"].value_counts()
    parts = [f"{len(cells)} cells: " + ", ".join(f"{totals.get(s, 0)} {s}" for s in STATES),
             "", counts.to_string()]
    running = cells[cells["state"] == "running"]
    if len(running):
        table = pd.DataFrame({
            "cell": running["cell_id"], "ablation/row": running["ablation"] + "/" + running["label"],
            "task": running["task"], "seed": running["seed"],
            "step": [f"{_number(s, '.0f')}/{n}" for s, n in zip(running["step"], running["steps"])],
            "loss": [_number(v, ".4f") for v in running["train_loss"]],
            "test acc": [_number(v, ".3f") for v in running["test_acc"]],
            "slurm job": running["slurm_job_id"].fillna("-"),
            "updated": [age(t, now) + " ago" for t in running["updated_at"]]})
        parts += ["", f"running ({len(running)}):", table.to_string(index=False)]
    for state in ("failed", "interrupted"):
        stopped = cells[cells["state"] == state]
        if len(stopped):
            parts += ["", f"{state} ({len(stopped)}):"]
            parts += [f"  {r.cell_id}  {r.ablation}/{r.label} {r.task} seed {r.seed}: "
                      f"{r.error or 'stopped after a checkpoint; rerun to resume'}"
                      for r in stopped.itertuples()]
    if stage_rows:
        done = sum(state == "done" for _, state, _ in stage_rows)
        parts += ["", f"stages: {done} of {len(stage_rows)} done"]
        parts += [f"  {name}: {state}{': ' + detail if detail else ''}"
                  for name, state, detail in stage_rows if state != "done"]
    return "\n".join(parts)
