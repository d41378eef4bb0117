"""fpt status: the state of every grid member from its cell's directory, and the report."""
import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

from fpt_core import results, status
from fpt_core.commands import status_main
from fpt_core.study import Study
from fpt_core.train import train_cell

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def config(seeds=range(6)):
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "trainable": "fpt", "batch_size": 2,
                     "steps": 10, "eval_every": 5, "eval_size": 8},
        "axes": {"task": ["bit-xor"], "seed": list(seeds)},
        "ablations": {
            "headline": {"rows": {"fpt": {}, "full": {"trainable": "all"}}},
            "again": {"rows": {"fpt": {}}},  # shares headline's fpt cells
        },
    }


def states(df) -> dict:
    return dict(zip(df["cell_id"], df["state"]))


def gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def progress(cell, state, *, step=3, pid=None, host=None, job=None, error=None, minutes_ago=2):
    stamp = (NOW - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")
    return {"cell_id": cell.id, "state": state, "step": step, "steps": cell.steps, "train_loss": 0.6931,
            "test_acc": 0.5, "started_at": stamp, "updated_at": stamp,
            "host": host or socket.gethostname(), "pid": pid or os.getpid(), "slurm_job_id": job,
            "error": error}


def write_progress(cells_dir, cell, **kwargs):
    (cells_dir / cell.id).mkdir(parents=True, exist_ok=True)
    results.write_json(progress(cell, **kwargs), cells_dir / cell.id / results.PROGRESS)


def write_summary(cells_dir, cell, status_name="finished"):
    out = cells_dir / cell.id
    out.mkdir(parents=True, exist_ok=True)
    row = {c: 0 for c in results.SUMMARY_COLUMNS}
    row.update(cell_id=cell.id, status=status_name, final_test_acc=0.75, steps_done=cell.steps,
               device="cpu", torch_version="x", transformers_version="x", fpt_version="x",
               finished_at=NOW.isoformat())
    results.write_parquet(pd.DataFrame([row]), out / results.SUMMARY)
    curve = pd.DataFrame([{c: 0 for c in results.CURVE_COLUMNS} | {"cell_id": cell.id}])
    results.write_parquet(curve, out / results.CURVE)


@pytest.fixture
def grid_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = Study.from_config(config())
    fpt = {m.seed: grid.grid.cells[m.cell_id] for m in grid.grid.members if m.label == "fpt"}
    full = {m.seed: grid.grid.cells[m.cell_id] for m in grid.grid.members if m.label == "full"}
    cells = tmp_path / "results" / "cells"
    write_summary(cells, fpt[0])
    write_summary(cells, fpt[1], "diverged")
    write_progress(cells, fpt[2], state="running", job="4242")  # this very process
    write_progress(cells, fpt[3], state="running", pid=gone_pid())  # stale: its process is gone
    write_progress(cells, fpt[4], state="failed", step=1, error="DataError: bit-xor: bad bits")
    write_progress(cells, full[0], state="interrupted", step=5)
    (cells / full[1].id).mkdir(parents=True)
    (cells / full[1].id / results.CHECKPOINT).write_bytes(b"")  # an older run, no progress file
    return grid, cells, fpt, full


def test_every_member_gets_its_cells_state(grid_dir):
    grid, cells, fpt, full = grid_dir
    df = status.collect(grid)
    assert len(df) == len(grid.grid.members) == 18
    state = states(df)
    assert [state[fpt[s].id] for s in range(6)] == [
        "done", "diverged", "running", "interrupted", "failed", "pending"]
    assert [state[full[s].id] for s in range(6)] == ["interrupted", "interrupted"] + ["pending"] * 4
    running = df[df["cell_id"] == fpt[2].id].iloc[0]
    assert (running["step"], running["steps"], running["slurm_job_id"]) == (3, 10, "4242")
    assert df[df["cell_id"] == fpt[0].id]["test_acc"].iloc[0] == 0.75
    counts = df.groupby(["ablation", "label"])["state"].value_counts().unstack(fill_value=0)
    assert counts.loc[("again", "fpt")].to_dict() == counts.loc[("headline", "fpt")].to_dict()
    assert counts.loc[("headline", "full"), "pending"] == 4


def test_the_report_counts_rows_and_lists_running_and_failed_cells(grid_dir):
    grid, cells, fpt, _ = grid_dir
    text = status.render(status.collect(grid), now=NOW)
    assert text.splitlines()[0] == (
        "12 cells: 1 done, 1 diverged, 1 running, 3 interrupted, 1 failed, 5 pending")
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines()
            if line.startswith(("headline", "again"))}
    assert rows[("headline", "fpt")] == ["1", "1", "1", "1", "1", "1", "6"]
    assert rows[("again", "fpt")] == ["1", "1", "1", "1", "1", "1", "6"]
    running = next(line for line in text.splitlines() if line.startswith(f"{fpt[2].id} "))
    assert running.split() == [fpt[2].id, "headline/fpt", "bit-xor", "2", "3/10", "0.6931",
                               "0.500", "4242", "2m", "ago"]
    assert f"  {fpt[4].id}  headline/fpt bit-xor seed 4: DataError: bit-xor: bad bits" in text
    assert f"  {fpt[3].id}  headline/fpt bit-xor seed 3: process gone" in text


def test_liveness_is_injectable_and_asks_slurm_for_other_hosts(grid_dir, monkeypatch):
    grid, cells, fpt, _ = grid_dir
    write_progress(cells, fpt[5], state="running", host="node7", pid=1, job="77")
    got = states(status.collect(grid, alive=lambda p: p.get("slurm_job_id") == "77"))
    assert got[fpt[5].id] == "running" and got[fpt[2].id] == "interrupted"
    asked = []
    monkeypatch.setattr(status, "squeue_jobs", lambda: asked.append(1) or {"76"})
    assert states(status.collect(grid))[fpt[5].id] == "interrupted" and asked == [1]
    monkeypatch.setattr(status, "squeue_jobs", lambda: None)  # no Slurm here: cannot tell
    assert states(status.collect(grid))[fpt[5].id] == "running"


def test_a_summary_of_another_cell_is_a_failure(grid_dir):
    grid, cells, fpt, _ = grid_dir
    (cells / fpt[5].id).mkdir()
    for name in (results.SUMMARY, results.CURVE):
        shutil.copy(cells / fpt[0].id / name, cells / fpt[5].id / name)
    row = status.collect(grid).set_index("cell_id").loc[fpt[5].id].iloc[0]
    assert row["state"] == "failed" and "holds cell" in row["error"]


def test_a_cell_trained_for_real_reads_as_done(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = config(seeds=[0])
    small["defaults"].update(steps=2, eval_every=2)
    small["ablations"].pop("headline")
    study = Study.from_config(small)
    (cell,) = study.grid.cells.values()
    train_cell(cell, study.cell_dir(cell.id))
    df = status.collect(study)
    assert list(df["state"]) == ["done"] and list(df["step"]) == [2]
    progress = json.loads((tmp_path / study.cell_dir(cell.id) / results.PROGRESS).read_text())
    assert progress["state"] == "finished"


def test_age_reads_iso_times():
    assert status.age((NOW - timedelta(seconds=42)).isoformat(), NOW) == "42s"
    assert status.age((NOW - timedelta(hours=3, minutes=5)).isoformat(), NOW) == "3h"
    assert status.age(None, NOW) == "-"


def test_main_prints_the_report_and_refuses_a_bad_config(grid_dir, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config()))
    assert status_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("12 cells: 1 done") and "failed (1):" in out
    assert "stages: 0 of 4 done" in out and "aggregate: pending" in out
    path.write_text(yaml.safe_dump({**config(), "defaults": {"backbone": "nope"}}))
    assert status_main(["--configfile", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        status_main(["--help"])
    assert e.value.code == 0 and "--watch" in capsys.readouterr().out


def test_a_failed_stage_shows_the_last_line_of_its_log(grid_dir, tmp_path):
    study = grid_dir[0]
    log = tmp_path / study.logs_dir / "aggregate.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\n  ...\nResultError: 3 cell(s) not usable\n")
    stages = dict((name, (state, detail)) for name, state, detail in status.stages(study))
    assert stages["aggregate"][0] == "failed"
    assert stages["aggregate"][1].startswith("ResultError: 3 cell(s) not usable (log ")
    text = status.render(status.collect(study), status.stages(study), now=NOW)
    assert "  aggregate: failed: ResultError: 3 cell(s) not usable" in text
