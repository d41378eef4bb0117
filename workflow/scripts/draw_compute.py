"""The study's compute table and figure, from every cell's summary in the aggregate, and what
stopping at convergence would change, from every cell's curve."""
import sys

from fpt_core.compute import draw_compute
from fpt_core.convergence import write_stopping

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
compute = draw_compute(snakemake.input.table, snakemake.output.png, snakemake.output.md,
                       study=snakemake.params.study, tex=snakemake.output.tex)
print(compute.to_string(index=False))
stopping = write_stopping(snakemake.input.table, snakemake.input.curves, snakemake.output.stopping,
                          snakemake.params.study)
print(stopping.to_string(index=False))
