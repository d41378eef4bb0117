"""The study's compute table and figure, from every cell's summary in the aggregate."""
import sys

from fpt_core.compute import draw_compute

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
compute = draw_compute(snakemake.input.table, snakemake.output.png, snakemake.output.md,
                       study=snakemake.params.study, tex=snakemake.output.tex)
print(compute.to_string(index=False))
