"""The representation figure and its table, from the CKA stage's tables."""
import sys

import pandas as pd

from fpt_core.cka import draw_cka_study

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
table = pd.concat([pd.read_parquet(path) for path in snakemake.input.tables], ignore_index=True)
draw_cka_study(table, snakemake.output.png, snakemake.output.md, snakemake.params.title)
