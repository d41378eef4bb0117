"""Attention maps of one trained cell on held-out examples, as a Parquet table."""
import sys

from fpt_core import results
from fpt_core.attention import attention_table

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
table = attention_table(snakemake.input.model, snakemake.params.examples)
results.write_parquet(table, snakemake.output[0])
