"""A grid meets a killed Snakemake and cells with broken data: finished cells are never trained
again, a broken cell stops with a clear message, and the rest of the grid finishes."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_pipeline import snakemake, tiny, workdir

from fpt_core import results


def summaries(where):
    return {p.parent.name: p.stat().st_mtime_ns for p in (where / "results" / "cells").glob("*/summary.parquet")}


@pytest.mark.slow
@pytest.mark.parametrize("pack_cells", [1, 3])  # a job per cell, or packs of cells per process
def test_killed_snakemake_resumes_with_rerun_incomplete_and_retrains_nothing_finished(tmp_path, pack_cells):
    cfg = tiny(headline={"rows": {"fpt": {}, "full-transformer": {"trainable": "all"}}})
    cfg["train"]["pack_cells"] = pack_cells
    cfg["axes"]["seed"] = [0, 1, 2]
    cfg["defaults"]["steps"] = 400
    cfg["train"]["checkpoint_every"] = 20
    where = workdir(tmp_path, cfg)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=where, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (summaries(where) and list(where.glob("results/cells/*/checkpoint.pt"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its running jobs, as a dead login shell would
    proc.wait()
    finished = {cell: results.read_summary(where / "results" / "cells" / cell) for cell in summaries(where)}
    assert 0 < len(finished) < 6

    snakemake(where, "--unlock")  # a killed Snakemake leaves its lock behind
    snakemake(where, "--cores", "2", "--rerun-incomplete")
    assert len(summaries(where)) == 6
    logs = {p.stem: p.read_text() for p in (where / "logs" / "train").glob("*.log")}
    assert "resumed from step" in "".join(logs.values())
    for cell, before in finished.items():
        assert "resumed from step" not in logs[cell]  # not one step trained again
        after = results.read_summary(where / "results" / "cells" / cell)
        pd.testing.assert_frame_equal(after.drop(columns=["finished_at", "hostname"]),
                                      before.drop(columns=["finished_at", "hostname"]))
    table = pd.read_parquet(where / "results" / "default" / "aggregate.parquet")
    assert set(table["steps_done"]) == {400} and table["cell_id"].nunique() == 6


@pytest.mark.slow
def test_a_cell_with_missing_data_fails_alone_and_keep_going_finishes_the_rest(tmp_path):
    cfg = tiny(headline={"rows": {"fpt": {}}})
    cfg["axes"] = {"task": ["bit-xor", "cifar10"], "seed": [0]}
    where = workdir(tmp_path, cfg)
    done = snakemake(where, "--cores", "2", "--keep-going", check=False)
    assert done.returncode != 0
    logs = {p.name: p.read_text() for p in (where / "logs" / "train").glob("*.log")}
    failed = [text for text in logs.values() if "Traceback" not in text and "cifar10" in text.lower()
              and "error:" in text]
    assert len(failed) == 1, logs  # one line that says which files to put where
    assert len(summaries(where)) == 1  # bit-xor finished
