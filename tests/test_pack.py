"""Packs: cells grouped by what they load, and trained in one process with exactly the results of
one process per cell."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _runs import FPT

from fpt_core import results
from fpt_core.backbones.registry import write_tiny_backbones
from fpt_core.cell import make_cell
from fpt_core.pack import make_packs, train_pack

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TINY = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "steps": 6, "eval_every": 3, "eval_size": 20,
        "batch_size": 4}
RUN = {"device": "cpu", "checkpoint_every": 4, "progress": False}
# Differ by run: wall clock, host, process.
VOLATILE = ("wall_time_s", "finished_at", "hostname", "slurm_job_id")


def cells(*changes):
    return [make_cell({**TINY, **c}) for c in changes]


def test_packs_group_by_backbone_and_init_and_hold_every_cell_once():
    grid = cells(*({"seed": s, "backbone": b} for s in range(5) for b in ("gpt2", "gpt2-tiny")),
                 {"seed": 0, "precision": "bf16"})
    packs = make_packs(grid, size=2)
    assert sorted(c.id for p in packs.values() for c in p) == sorted(c.id for c in grid)
    for members in packs.values():
        assert len(members) <= 2
        assert len({(c.backbone, c.init, c.precision) for c in members}) == 1
    # 5 + 5 + 1 cells in packs of at most 2: 3 + 3 + 1
    assert len(packs) == 7
    assert all(name.startswith(("gpt2-random-", "gpt2-tiny-random-")) for name in packs)


def test_packs_are_balanced_named_by_their_cells_and_split_by_minutes():
    grid = cells(*({"seed": s} for s in range(7)))
    sizes = sorted(len(p) for p in make_packs(grid, size=3).values())
    assert sizes == [2, 2, 3]
    assert make_packs(grid, size=3).keys() == make_packs(list(grid), size=3).keys()
    assert make_packs(grid[:6], size=3).keys().isdisjoint(make_packs(grid, size=3).keys())
    by_time = make_packs(grid, size=7, minutes=100, cost=lambda cell: 40)  # 280 min of work
    assert sorted(len(p) for p in by_time.values()) == [1, 2, 2, 2]
    minutes = {c.id: m for c, m in zip(grid, [500, 10, 20, 30, 40, 50, 60])}
    mixed = make_packs(grid, size=3, minutes=100, cost=lambda cell: minutes[cell.id])
    loads = sorted((len(p), sum(minutes[c.id] for c in p)) for p in mixed.values())
    # longest first: 500 alone; 60+40; 50+30+20; 10 left over (no room by minutes or count)
    assert loads == [(1, 10), (1, 500), (2, 100), (3, 100)], loads
    with pytest.raises(ValueError, match="at least 1"):
        make_packs(grid, size=0)


def _jobs(grid, root: Path):
    return [{"values": c.to_dict(), "out": str(root / c.id), "log": str(root / "logs" / f"{c.id}.log"),
             "name": f"test {c.seed}"} for c in grid]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    drop = [c for c in VOLATILE if c in a]
    pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), check_exact=True)


def test_a_packed_run_gives_bitwise_the_results_of_one_process_per_cell(tmp_path):
    # a directory backbone with real (tiny) pretrained weights: loaded once per pack, copied
    backbone = str(write_tiny_backbones(tmp_path / "backbones", ["gpt2"])["gpt2"])
    every_group = ["input", "positions", "layernorm", "attention", "feedforward", "output"]
    grid = cells({"seed": 0}, {"seed": 1, "trainable": every_group},
                 {"seed": 2, "trainable": ["output"]}, {"seed": 3, "dropout": 0.0, "trainable": ["output"]},
                 *({"seed": s, "backbone": backbone, "init": init}
                   for s, init in ((0, "pretrained"), (1, "pretrained"), (0, "statistics"))))
    code = ("import json, sys; from fpt_core.pack import train_pack; "
            f"sys.exit(len(train_pack(json.load(open(sys.argv[1])), {RUN!r})))")
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps(_jobs(grid, tmp_path / "packed")))
    subprocess.run([sys.executable, "-c", code, str(jobs)], check=True, env=ENV)
    for cell in grid:  # each in its own process, from a cell file, as `fpt train` runs a cell
        cell_file = tmp_path / f"{cell.id}.yaml"
        cell_file.write_text(json.dumps(cell.to_dict()))
        args = [str(cell_file), "device=cpu", "checkpoint_every=4", "progress=false"]
        subprocess.run([*FPT, "train", *args,
                        f"out={tmp_path / 'alone' / cell.id}"], check=True, env=ENV,
                       stdout=subprocess.DEVNULL)
    for cell in grid:
        packed, alone = tmp_path / "packed" / cell.id, tmp_path / "alone" / cell.id
        _same(pd.read_parquet(packed / results.SUMMARY), pd.read_parquet(alone / results.SUMMARY))
        _same(pd.read_parquet(packed / results.CURVE), pd.read_parquet(alone / results.CURVE))
        assert "step 6/6" in (tmp_path / "packed" / "logs" / f"{cell.id}.log").read_text()


def test_a_failing_cell_leaves_the_rest_of_its_pack_to_train(tmp_path, capsys):
    grid = cells({"seed": 0}, {"task": "cifar10"}, {"seed": 1})
    run = {**RUN, "data_dir": str(tmp_path / "nodata")}
    failed = train_pack(_jobs(grid, tmp_path), run)
    assert failed == [grid[1].id]
    for cell in (grid[0], grid[2]):
        assert results.finished_summary(tmp_path / cell.id, cell.id) is not None
    out = capsys.readouterr().out
    assert f"[2/3] {grid[1].id} (test 0): failed: DataError" in out
    assert "[3/3]" in out and "finished, test acc" in out
    log = (tmp_path / "logs" / f"{grid[1].id}.log").read_text()
    assert "error: cifar10: data not found" in log and "Traceback" not in log  # a user's slip: one line
    # run again: the finished cells are not trained twice
    assert train_pack(_jobs([grid[0]], tmp_path), run) == []
    assert "already finished" in (tmp_path / "logs" / f"{grid[0].id}.log").read_text()
