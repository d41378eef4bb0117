"""The representation figure and its table, from the cka stage's table."""
import sys

import pandas as pd

from fpt_core.cka import draw_cka_study

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
draw_cka_study(pd.read_parquet(snakemake.input[0]), snakemake.output.png, snakemake.output.md,
               snakemake.params.title)
