"""A grid meets cells with broken data: the cell stops with a clear message and the rest of
the grid finishes."""
import os

import pytest

from test_pipeline import snakemake, tiny, workdir


def summaries(where):
    return {p.parent.name: p.stat().st_mtime_ns for p in (where / "results" / "cells").glob("*/summary.parquet")}


@pytest.mark.slow
def test_a_cell_with_missing_data_fails_alone_and_keep_going_finishes_the_rest(tmp_path):
    cfg = tiny(headline={"rows": {"fpt": {}}})
    cfg["axes"] = {"task": ["bit-xor", "mnist"], "seed": [0]}
    where = workdir(tmp_path, cfg)
    done = snakemake(where, "--cores", "2", "--keep-going", check=False)
    assert done.returncode != 0
    logs = {p.name: p.read_text() for p in (where / "logs" / "train").glob("*.log")}
    failed = [text for text in logs.values() if "Traceback" not in text and "mnist" in text.lower()
              and "error:" in text]
    assert len(failed) == 1, logs  # one line that says which files to put where
    assert len(summaries(where)) == 1  # bit-xor finished
