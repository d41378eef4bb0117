"""Prepare one task's data (generate ListOps offline; fetch datasets where there is internet)."""
import sys

from fpt_core.tasks import prepare_data

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
prepare_data(snakemake.wildcards.task, snakemake.params.data_dir, **snakemake.params.options)
