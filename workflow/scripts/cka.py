"""Linear CKA of the study's backbones on each task's held-out examples, as a Parquet table."""
import sys

import pandas as pd

from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.cka_stage import task_table

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
parts = []
for task, spec in snakemake.params.tasks.items():
    cells = {name: make_cell(values) for name, values in spec["models"].items()}
    parts.append(task_table(cells, snakemake.params.examples, snakemake.params.pool,
                            spec["trained"]))
    print(f"{task}: {', '.join(cells)}" + (f"; before/after {spec['trained']}" if spec["trained"] else ""))
results.write_parquet(pd.concat(parts, ignore_index=True), snakemake.output[0])
