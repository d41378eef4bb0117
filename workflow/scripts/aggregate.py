"""Every cell's summary and curve into the study's aggregate.parquet and curves.parquet, and the
study's description beside them."""
import sys

from fpt_core.aggregate import aggregate
from fpt_core.results import write_json

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
description = snakemake.params.description
problems = aggregate(snakemake.params.cell_dirs, description["members"], snakemake.output.table,
                     snakemake.output.curves, partial=description["partial"])
for problem in problems:
    print(f"partial table: {problem}")
write_json(description, snakemake.output.description)
