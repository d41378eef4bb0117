"""Linear CKA of the study's backbones on one task's held-out examples, as a Parquet table."""
import sys

from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.cka_stage import task_table

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
job = snakemake.params.job
cells = {name: make_cell(values) for name, values in job["models"].items()}
trained = snakemake.params.trained
table = task_table(cells, job["examples"], job["pool"], trained)
print(f"{job['task']}: {', '.join(cells)}" + (f"; before/after {trained}" if trained else ""))
results.write_parquet(table, snakemake.output[0])
