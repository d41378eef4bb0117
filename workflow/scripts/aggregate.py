"""Every cell's summary and curve into the study's aggregate.parquet and curves.parquet."""
import sys

from fpt_core.aggregate import aggregate

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
problems = aggregate(
    snakemake.params.cells_dir, snakemake.params.members,
    snakemake.output.table, snakemake.output.curves,
    partial=snakemake.params.partial,
)
for problem in problems:
    print(f"partial table: {problem}")
