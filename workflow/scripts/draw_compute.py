"""The study's compute table and figure, from every cell's summary in the aggregate, and what
stopping at convergence would change, from every cell's curve."""
import sys

import pandas as pd

from fpt_core.atomic import atomic_path
from fpt_core.compute import draw_compute
from fpt_core.convergence import stopping_markdown, stopping_table

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
compute = draw_compute(snakemake.input.table, snakemake.output.png, snakemake.output.md,
                       study=snakemake.params.study, tex=snakemake.output.tex)
print(compute.to_string(index=False))
summary, losers = stopping_table(pd.read_parquet(snakemake.input.table), pd.read_parquet(snakemake.input.curves))
with atomic_path(snakemake.output.stopping) as tmp:
    tmp.write_text(stopping_markdown(summary, losers, f"stopping at convergence in the {snakemake.params.study} "
                                     "study"), encoding="utf-8")
print(summary.to_string(index=False))
