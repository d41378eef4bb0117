"""The pipeline on a Slurm cluster through the user profile (slurm/) and the CI overlay: every
training cell runs as a Slurm job of its own, and a cell whose job is cancelled mid-run is
submitted again by Snakemake and resumes from its checkpoint.

Needs a running cluster with a default partition `gpu` and fake GPUs: `sudo .ci/slurm/up.sh`
(CI runs it before pytest; .ci/slurm/down.sh stops it). Skipped when there is none."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

# The pipeline's layout and how it is run; everything below reads only these.
REPO = Path(__file__).resolve().parents[1]
PROFILES = ["slurm", ".ci/slurm-ci-profile"]  # relative to REPO, where snakemake runs
TARGET = "results/default/aggregate.parquet"
CELLS_DIR = "results/cells"  # one directory per cell, named by its id
SUMMARY = "summary.parquet"
CHECKPOINT = "checkpoint.pt"  # present while a cell is unfinished
TRAIN_LOG = "logs/train/{cell}.log"
PACK_LOGS = "logs/train/pack-*.log"  # a training job's log: its pack's name, its cells' ids
JOB_ID_COLUMN = "slurm_job_id"
RESUMED = re.compile(r"resumed from step (\d+)")
RUN_TIMEOUT_S = 900
CANCEL_WITHIN_S = 300


def cell_config(seeds: list[int], steps: int, eval_every: int) -> dict:
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "trainable": "fpt", "lr": 1.0e-3,
                     "batch_size": 16, "steps": steps, "eval_every": eval_every,
                     "eval_size": 100},
        "axes": {"task": ["bit-xor"], "seed": seeds},
        "ablations": {"slurm": {"title": "cells as Slurm jobs", "rows": {"fpt": {}}}},
        # gpus: 1, a GPU per job on the CI cluster's fake GPUs, scheduled like real ones while
        # training stays on the CPU
        "train": {"threads": 1, "mem_mb": 1000, "runtime": 10, "device": "cpu", "gpus": 1,
                  "group": None, "data_dir": "data", "checkpoint_every": 20},
    }


def cluster_problem() -> str | None:
    """Why no test can run here, or None when a Slurm node takes jobs."""
    if shutil.which("sinfo") is None:
        return "no Slurm on PATH: start a cluster with `sudo .ci/slurm/up.sh`"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (`sudo .ci/slurm/up.sh`)"
    states = out.stdout.split()
    if out.returncode != 0 or not {"idle", "mixed", "allocated", "completing"} & set(states):
        return (f"no Slurm node takes jobs (sinfo: {out.stdout.strip() or out.stderr.strip()}); "
                "start the loopback cluster with `sudo .ci/slurm/up.sh`")
    return None


@pytest.fixture(autouse=True, scope="module")
def slurm_cluster():
    # A fixture, not a skipif: sinfo can wait seconds for a stopped controller, and
    # deselected tests (-m "not slow") should not pay for it.
    # Outside CI a laptop without Slurm skips these tests with the reason and the command that
    # starts a cluster; CI brings one up first, so there a missing cluster is a failure.
    problem = cluster_problem()
    if problem is not None and os.environ.get("CI"):
        pytest.fail(f"CI brings Slurm up before the tests (.ci/run), yet {problem}")
    if problem is not None:
        pytest.skip(problem)


def start_pipeline(workdir: Path, config: dict) -> tuple[subprocess.Popen, Path]:
    """`snakemake --cores 8 --profile slurm ...` from the repository root, into `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", TARGET, "--cores", "8"]
    for profile in PROFILES:
        command += ["--profile", profile]
    command += ["--directory", str(workdir), "--configfile", str(config_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           # jobs run `fpt` from the submitting environment (sbatch --export=ALL)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = workdir / "snakemake.out"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, log


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"snakemake still running after {RUN_TIMEOUT_S}s:\n{tail(log)}")
    assert code == 0, f"snakemake exited with {code}:\n{tail(log)}"


def stop(process: subprocess.Popen) -> None:
    """Interrupt Snakemake the way Ctrl-C does, which cancels its Slurm jobs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def summaries(workdir: Path) -> dict[str, pd.Series]:
    return {p.parent.name: pd.read_parquet(p).iloc[0]
            for p in sorted((workdir / CELLS_DIR).glob(f"*/{SUMMARY}"))}


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge)."""
    out = subprocess.run(["scontrol", "--oneliner", "show", "job", str(job_id)],
                         capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def running_job_of(workdir: Path, cell_id: str) -> str | None:
    """The RUNNING Slurm job whose batch script trains `cell_id`: the job of the pack whose log
    names the cell (a job's rule is train_<pack>)."""
    packs = [log.name.removeprefix("pack-").removesuffix(".log")
             for log in workdir.glob(PACK_LOGS) if cell_id in log.read_text(errors="replace")]
    jobs = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i"],
                          capture_output=True, text=True).stdout.split()
    for job_id in jobs:
        script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"],
                                capture_output=True, text=True).stdout
        if any(f"train_{pack}" in script for pack in packs):
            return job_id
    return None


def test_every_cell_runs_as_its_own_slurm_job(tmp_path):
    process, log = start_pipeline(tmp_path, cell_config(seeds=[0, 1, 2], steps=200, eval_every=50))
    finish(process, log)

    cells = summaries(tmp_path)
    assert len(cells) == 3
    job_ids = {cell: row[JOB_ID_COLUMN] for cell, row in cells.items()}
    assert all(job_ids.values()), f"a cell trained outside Slurm: {job_ids}"
    assert len(set(job_ids.values())) == 3, f"cells shared a Slurm job: {job_ids}"
    for cell, job_id in job_ids.items():
        job = slurm_job(job_id)
        assert job["JobState"] == "COMPLETED", (cell, job)
        assert job.get("TresPerJob", "").endswith("gpu:1"), (cell, job)
        assert cells[cell]["status"] == "finished"
        assert cells[cell]["steps_done"] == 200
    table = pd.read_parquet(tmp_path / TARGET)
    assert sorted(table["cell_id"]) == sorted(cells)


def test_a_pack_of_cells_is_one_slurm_job_with_one_gpu(tmp_path):
    config = cell_config(seeds=[0, 1, 2, 3], steps=100, eval_every=50)
    config["train"]["pack_cells"] = 2
    process, log = start_pipeline(tmp_path, config)
    finish(process, log)

    cells = summaries(tmp_path)
    assert len(cells) == 4 and {row["status"] for row in cells.values()} == {"finished"}
    jobs: dict[str, list[str]] = {}
    for cell, row in cells.items():
        jobs.setdefault(row[JOB_ID_COLUMN], []).append(cell)
    assert sorted(map(len, jobs.values())) == [2, 2], f"cells per Slurm job: {jobs}"
    for job_id, members in jobs.items():
        job = slurm_job(job_id)
        assert job["JobState"] == "COMPLETED" and job.get("TresPerJob", "").endswith("gpu:1"), job
        # the Slurm comment names the pack (backbone, init, cell count)
        assert "gpt2-tiny-random-2-" in job.get("Comment", ""), job
        for cell in members:
            assert "step 100/100" in (tmp_path / TRAIN_LOG.format(cell=cell)).read_text()


def test_cancelled_job_is_resubmitted_and_resumes_from_its_checkpoint(tmp_path):
    process, log = start_pipeline(tmp_path, cell_config(seeds=[0], steps=1500, eval_every=500))
    cancelled = cell = None
    try:
        deadline = time.monotonic() + CANCEL_WITHIN_S
        while cancelled is None and time.monotonic() < deadline:
            assert process.poll() is None, f"snakemake ended before a cancel:\n{tail(log)}"
            for checkpoint in (tmp_path / CELLS_DIR).glob(f"*/{CHECKPOINT}"):
                cell = checkpoint.parent.name
                cancelled = running_job_of(tmp_path, cell)
                break
            time.sleep(0.5)
        assert cancelled is not None, f"no running job with a checkpoint:\n{tail(log)}"
        subprocess.run(["scancel", cancelled], check=True)
        finish(process, log)
    finally:
        stop(process)

    assert slurm_job(cancelled)["JobState"] == "CANCELLED"
    summary = summaries(tmp_path)[cell]
    assert summary["status"] == "finished"
    assert summary["steps_done"] == 1500
    assert int(summary[JOB_ID_COLUMN]) > int(cancelled), "the retry is a new Slurm job"
    resumed = RESUMED.findall((tmp_path / TRAIN_LOG.format(cell=cell)).read_text())
    assert resumed and int(resumed[-1]) > 0, f"the retry did not resume:\n{tail(log)}"
    assert not (tmp_path / CELLS_DIR / cell / CHECKPOINT).exists()
