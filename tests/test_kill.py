"""SIGKILL at random moments of a run (mid-step, mid-checkpoint, mid-result-write): a rerun
always ends with the numbers of a run that was never killed."""
import multiprocessing
import os
import random
import signal
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import fpt_core.train as train_mod
from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.run import Run

CELL = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "steps": 60, "eval_every": 20,
        "eval_size": 128, "seed": 3}
RUN = Run(progress=False, checkpoint_every=10)
VOLATILE = ["wall_time_s", "finished_at", "hostname"]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kind: str, n: int) -> None:
    """Make this process SIGKILL itself at the n-th occurrence of `kind`."""
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == n

    if kind == "step":
        real = train_mod.make_task

        def make_task(cell, **kw):
            task = real(cell, **kw)
            batch = task.train_batch
            task.train_batch = lambda step, bs: die() if hit() else batch(step, bs)
            return task

        train_mod.make_task = make_task
    elif kind == "rename":  # the temp file is whole, the rename never happens
        real_replace = os.replace
        os.replace = lambda a, b: die() if hit() else real_replace(a, b)
    elif kind == "checkpoint-bytes":  # half a checkpoint reaches the disk
        real_write = Path.write_bytes

        def write_bytes(self, data):
            if hit():
                real_write(self, data[: len(data) // 2])
                die()
            return real_write(self, data)

        Path.write_bytes = write_bytes
    elif kind == "parquet":  # half a result file reaches the disk
        real_table = pq.write_table

        def write_table(table, where, **kw):
            if hit():
                Path(where).write_bytes(b"PAR1" + b"\0" * 100)
                die()
            return real_table(table, where, **kw)

        pq.write_table = write_table
    elif kind == "cleanup":  # results written, checkpoints not yet removed
        results.remove_checkpoints = lambda out_dir: die()


def run_killed(out_dir: Path, kind: str, n: int) -> int:
    def child():
        arm(kind, n)
        train_mod.train_cell(make_cell(CELL), out_dir, RUN)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(120)
    return proc.exitcode


def comparable(out_dir):
    return (results.read_summary(out_dir).drop(columns=VOLATILE),
            results.read_curve(out_dir).drop(columns=["wall_time_s"]))


@pytest.mark.slow
def test_ten_random_kills_each_resume_to_identical_results(tmp_path):
    reference = tmp_path / "reference"
    train_mod.train_cell(make_cell(CELL), reference, RUN)
    expected = comparable(reference)
    rng = random.Random(20211)
    kinds = {"step": 60, "rename": 12, "checkpoint-bytes": 6, "parquet": 2, "cleanup": 1}
    moments = [(kind, rng.randint(1, top)) for kind, top in kinds.items()]
    moments += [(kind, rng.randint(1, kinds[kind])) for kind in rng.choices(list(kinds), k=5)]
    for i, (kind, n) in enumerate(moments):
        out = tmp_path / f"kill{i}"
        code = run_killed(out, kind, n)
        assert code == -signal.SIGKILL, (kind, n, code)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warnings about half-written files are expected
            train_mod.train_cell(make_cell(CELL), out, RUN)
        for got, want in zip(comparable(out), expected):
            pd.testing.assert_frame_equal(got, want, obj=f"kill {i}: {kind} #{n}")
        assert not (out / results.CHECKPOINT).exists()

